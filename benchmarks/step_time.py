"""Where a GRPO step's time goes: N training steps of grpotrainer.py's own pipeline per variant, side by side.

    python benchmarks/step_time.py                                            # default variant, smoke model
    python benchmarks/step_time.py --steps 8 --variants default,no-grad-ckpt,bf16-lora,continuous-batching
    python benchmarks/step_time.py --model-size 8b --variants default,sdpa,flash-attn,bf16-lora,vllm-colocate \\
        --json runs/step_time-8b.json                                         # needs a CUDA GPU
    python benchmarks/step_time.py --model-size 0.6b -- --max_completion_length 128   # after --: grpotrainer.py flags
    python benchmarks/step_time.py --model-size 8b --variants default,compiled,bf16-lora,bf16-compiled

Each variant runs in its own subprocess (a fresh memory peak) through grpotrainer.py's settings, data, model loading
and GSM8KGRPOTrainer, for --steps optimizer steps; the first --warmup steps are left out. `smoke` is grpotrainer.py's
--smoke model and preset; 0.6b, 1.7b and 8b are Qwen3 models of the published shapes with random weights and the smoke
tokenizer (built once under the temp folder), trained with config.yaml's settings on the synthetic GSM8K. Random
weights almost never sample the end-of-sequence token, so every completion runs to max_completion_length.

Columns: median step s = median wall time from on_step_begin to on_step_end (generation, scoring, loss, backward,
optimizer; not data loading or logging). generation % = share of the measured steps' time in GRPOTrainer._generate;
log-prob % = in _get_per_token_logps_and_entropies without gradients (old-policy and reference passes); update % = the
rest (the loss's own forward, backward, optimizer, rewards). gen tok/s = completion tokens that _generate returned (up
to and including the end-of-sequence token, this process) per second of generation time. peak GPU =
torch.cuda.max_memory_allocated; peak host = the process's peak resident set size. ms/decode step = generation time
over the decoding steps the batches took (a batch decodes together; the prefill is included); x bound = that over the
memory-bandwidth bound: the weights a step reads (every parameter as stored, but an untied input embedding) plus the
KV cache so far, at the detected GPU's data-sheet bandwidth (GPU_BANDWIDTH_TBS, named in the header). compiles after
warm-up = graphs torch.compile made in the measured steps (torch._dynamo's counters): 0 when compiled decoding reuses
its graphs. --json adds every step's timings
and each variant's full settings. A variant that cannot run here (no CUDA, a package missing) or fails is a row saying
why.

On a CPU that other work shares, give torch only the cores that are free (OMP_NUM_THREADS=1 on a busy 2-core machine):
oversubscribed torch threads make the same step vary 50-fold.
"""

import argparse
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import trl
from torch._dynamo.utils import counters
import transformers
from transformers import AutoTokenizer, GenerationConfig, Qwen3Config, Qwen3ForCausalLM, TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import grpotrainer  # noqa: E402
import smoke  # noqa: E402

VARIANTS = {  # name -> grpotrainer.py flags
    "default": [],
    "no-grad-ckpt": ["--gradient_checkpointing", "false"],
    "bf16-lora": ["--load_in_4bit", "false"],  # float32 on a machine without CUDA
    "sdpa": ["--attn_implementation", "sdpa"],
    "flash-attn": ["--attn_implementation", "flash_attention_2"],
    "continuous-batching": ["--use_transformers_continuous_batching", "true"],
    "compiled": ["--compile_decoding", "true"],
    "bf16-compiled": ["--load_in_4bit", "false", "--compile_decoding", "true"],
    "vllm-colocate": ["--use_vllm", "true", "--vllm_mode", "colocate", "--load_in_4bit", "false"],
}
NEEDS_PACKAGE = {"flash-attn": "flash_attn", "vllm-colocate": "vllm"}  # these also need CUDA

# Published Qwen3 shapes (the models' config.json); every size has vocab 151936, head_dim 128 and 8 KV heads.
QWEN3_SHAPES = {
    "0.6b": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, intermediate_size=3072, tie_word_embeddings=True),  # fmt: skip
    "1.7b": dict(hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, intermediate_size=6144, tie_word_embeddings=True),  # fmt: skip
    "8b": dict(hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, intermediate_size=12288, tie_word_embeddings=False),  # fmt: skip
}
RANDOM_MODELS = Path(tempfile.gettempdir()) / "grpotrainer-bench"
COLUMNS = ["variant", "median step s", "generation %", "log-prob %", "update %", "gen tok/s", "ms/decode step", "x bound", "compiles after warm-up", "peak GPU GiB", "peak host GiB", "status"]  # fmt: skip
# Peak memory bandwidth, TB/s, from the vendors' data sheets: the bound a decoding step cannot beat
GPU_BANDWIDTH_TBS = {
    "H200": 4.8, "H100 SXM": 3.35, "H100 80GB HBM3": 3.35, "H100 PCIe": 2.0, "H100 NVL": 3.9, "A100-SXM4-80GB": 2.039,
    "A100 80GB PCIe": 1.935, "A100-SXM4-40GB": 1.555, "A100-PCIE-40GB": 1.555, "L40S": 0.864, "L4": 0.3, "A10G": 0.6,
    "A10": 0.6, "RTX 4090": 1.008, "RTX 3090": 0.936,
}  # fmt: skip


def random_model_dir(size: str) -> Path:
    return RANDOM_MODELS / f"qwen3-{size}-random"


def build_random_qwen3(size: str) -> Path:
    """A Qwen3 of the published shape with random bf16 weights and the smoke tokenizer, written once (8b: 16 GB).
    Ids beyond the smoke tokenizer's vocabulary can be sampled; decoding skips them."""
    folder = random_model_dir(size)
    marker = folder / "bench_build.json"
    if marker.is_file() and json.loads(marker.read_text()) == QWEN3_SHAPES[size]:
        return folder
    tokenizer = AutoTokenizer.from_pretrained(smoke.SMOKE_DIR / "model")
    config = Qwen3Config(
        **QWEN3_SHAPES[size],
        vocab_size=151936,
        head_dim=128,
        num_key_value_heads=8,
        max_position_embeddings=40960,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen3ForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    marker.write_text(json.dumps(QWEN3_SHAPES[size]))
    del model
    torch.cuda.empty_cache()
    return folder


def unavailable(variant: str) -> str | None:
    package = NEEDS_PACKAGE.get(variant)
    if package and not torch.cuda.is_available():
        return "skipped: needs a CUDA GPU"
    if package and importlib.util.find_spec(package) is None:
        return f"skipped: {package} is not installed"
    return None


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    return {
        "cpu": cpu or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),  # OMP_NUM_THREADS; a shared machine's other work competes for them
        "load_average_1min": os.getloadavg()[0],
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "trl": trl.__version__,
        "transformers": transformers.__version__,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Worker: one variant in this process


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step and the parts of it spent generating and computing no-grad log-probs."""

    def __init__(self):
        self.steps = []
        self.current = None
        self.started = 0.0

    @staticmethod
    def clock() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self.current = {"generation_s": 0.0, "logprob_s": 0.0, "generated_tokens": 0, "decoding_steps": 0,
                        "cached_token_reads": 0.0}  # fmt: skip
        self.started = self.clock()

    def on_step_end(self, args, state, control, **kwargs):
        self.current["step_s"] = self.clock() - self.started
        self.current["graphs_compiled"] = counters["stats"]["unique_graphs"]  # torch.compile's own count, so far
        self.steps.append(self.current)

    def instrument(self, trainer) -> None:
        generate, logprobs = trainer._generate, trainer._get_per_token_logps_and_entropies

        def timed_generate(*args, **kwargs):
            start = self.clock()
            result = generate(*args, **kwargs)
            self.current["generation_s"] += self.clock() - start
            prompts, completions = result[0], result[1]  # prompt_ids, completion_ids
            self.current["generated_tokens"] += sum(len(ids) for ids in completions)
            self.current["decoding_steps"] += max(map(len, completions), default=0)  # the batch decodes together
            # each decoding step reads the KV cache of every sequence so far: len(prompt) + len(completion)/2 on average
            self.current["cached_token_reads"] += sum(
                len(ids) * (len(prompt) + len(ids) / 2) for prompt, ids in zip(prompts, completions, strict=True)
            )
            return result

        def timed_logprobs(*args, **kwargs):
            if torch.is_grad_enabled():  # the loss's own forward pass: part of the update
                return logprobs(*args, **kwargs)
            start = self.clock()
            result = logprobs(*args, **kwargs)
            self.current["logprob_s"] += self.clock() - start
            return result

        trainer._generate, trainer._get_per_token_logps_and_entropies = timed_generate, timed_logprobs


def weight_bytes_read_per_token(model) -> int:
    """Bytes of weights a decoding step reads: every parameter (4-bit ones as stored) but the input embedding table,
    of which it reads one row, unless the output layer shares it."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    embedding, output = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    return total if embedding is output else total - embedding.numel() * embedding.element_size()


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Keys and values of one token in every layer."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * dtype.itemsize


def gpu_bandwidth() -> tuple[str, float] | None:
    """The detected GPU's data-sheet bandwidth (name matched, TB/s), or None without CUDA or for an unlisted GPU."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    match = next((key for key in sorted(GPU_BANDWIDTH_TBS, key=len, reverse=True) if key in name), None)
    return (f"{name}: {GPU_BANDWIDTH_TBS[match]} TB/s ({match} data sheet)", GPU_BANDWIDTH_TBS[match]) if match else None


def decoding_figures(measured: list[dict], model, dtype: torch.dtype) -> dict:
    """Milliseconds per decoding step (generation time over batched decoding steps, the prefill included) and its
    ratio to the memory-bandwidth bound: the weights plus the KV cache read once per step at the GPU's bandwidth."""
    steps = sum(step["decoding_steps"] for step in measured)
    generation_s = sum(step["generation_s"] for step in measured)
    figures = {"ms_per_decoding_step": 1000 * generation_s / steps if steps else None, "bandwidth": None}
    bandwidth = gpu_bandwidth()
    if steps and bandwidth:
        weights = weight_bytes_read_per_token(model)
        cache = kv_bytes_per_token(model.config, dtype) * sum(step["cached_token_reads"] for step in measured)
        bound_s = (steps * weights + cache) / (bandwidth[1] * 1e12)
        figures |= {"bandwidth": bandwidth[0], "weight_bytes_per_step": weights, "kv_cache_bytes": cache,
                    "bound_ms_per_decoding_step": 1000 * bound_s / steps, "times_bound": generation_s / bound_s}  # fmt: skip
    return figures


def grpotrainer_flags(size: str, steps: int, output_dir: str, variant: str, extra: list[str]) -> list[str]:
    model = ["--smoke"]
    if size != "smoke":
        model = ["--model_name", str(random_model_dir(size)), "--dataset_name", str(smoke.SMOKE_DIR / "gsm8k")]
    quiet = [
        "--eval_strategy", "no", "--eval_before_and_after", "false", "--report_to", "none", "--save_strategy", "no",
    ]  # fmt: skip
    return [*model, "--max_steps", str(steps), *quiet, "--output_dir", output_dir, *VARIANTS[variant], *extra]


def run_worker(options, extra: list[str]) -> None:
    output_dir = tempfile.mkdtemp(prefix="step_time-")
    flags = grpotrainer_flags(options.model_size, options.steps, output_dir, options.worker, extra)
    run = grpotrainer.read_settings(flags)
    timer = StepTimer()
    # the trainer grpotrainer.train() builds, without evaluation
    trainer = grpotrainer.build_trainer(run, grpotrainer.load_inputs(run), [timer])
    timer.instrument(trainer)
    trainer.train()
    shutil.rmtree(output_dir, ignore_errors=True)

    measured = timer.steps[options.warmup :]
    compute_dtype = torch.bfloat16 if run.training.bf16 else torch.float32
    total = sum(step["step_s"] for step in measured)
    generation, logprob = (sum(step[key] for step in measured) for key in ("generation_s", "logprob_s"))
    result = {
        "status": "ok",
        "median_step_s": statistics.median(step["step_s"] for step in measured),
        "generation_pct": 100 * generation / total,
        "logprob_pct": 100 * logprob / total,
        "update_pct": 100 * (total - generation - logprob) / total,
        "generated_tokens_per_s": sum(step["generated_tokens"] for step in measured) / generation,
        **decoding_figures(measured, trainer.model, compute_dtype),
        # graphs torch.compile made during the measured steps: 0 once compiled decoding has warmed up
        "compiles_after_warmup": measured[-1]["graphs_compiled"] - timer.steps[options.warmup - 1]["graphs_compiled"]
        if options.warmup
        else None,
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "peak_host_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # KiB on Linux
        "load_average_1min_at_end": os.getloadavg()[0],  # other work on a shared machine skews the figures
        "steps": timer.steps,
        "grpotrainer_flags": flags,
        "settings": run.as_dict(),
    }
    Path(options.result).write_text(json.dumps(result, indent=2, default=str))


# ---------------------------------------------------------------------------------------------------------------------
# Parent: one subprocess per variant, then the table


def run_variant(options, variant: str, extra: list[str]) -> dict:
    reason = unavailable(variant)
    if reason:
        return {"status": reason}
    with tempfile.TemporaryDirectory() as folder:
        result_path = Path(folder) / "result.json"
        command = [sys.executable, __file__, "--model-size", options.model_size, "--steps", str(options.steps)]
        command += ["--warmup", str(options.warmup), "--worker", variant, "--result", str(result_path), "--", *extra]
        print(f"running {variant} ...", file=sys.stderr, flush=True)
        process = subprocess.run(command, capture_output=True, text=True)
        if process.returncode == 0 and result_path.is_file():
            return json.loads(result_path.read_text())
    lines = [line for line in process.stderr.splitlines() if line.strip()] or ["no output"]
    return {"status": f"failed (exit {process.returncode}): {lines[-1].strip()[:160].replace('|', '/')}"}


def cell(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(header: str, rows: dict[str, dict]) -> str:
    lines = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for variant, row in rows.items():
        values = [
            cell(row.get("median_step_s"), 2),
            cell(row.get("generation_pct"), 1),
            cell(row.get("logprob_pct"), 1),
            cell(row.get("update_pct"), 1),
            cell(row.get("generated_tokens_per_s"), 1),
            cell(row.get("ms_per_decoding_step"), 1),
            cell(row.get("times_bound"), 1),
            cell(row.get("compiles_after_warmup"), 0),
            cell(row.get("peak_gpu_gib"), 2),
            cell(row.get("peak_host_gib"), 2),
            row["status"],
        ]
        lines.append(f"| {variant} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def parse_options(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-size", choices=["smoke", *QWEN3_SHAPES], default="smoke")
    parser.add_argument("--variants", default="default", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per variant, warm-up included")
    parser.add_argument("--warmup", type=int, default=1, help="first steps left out of the figures")
    parser.add_argument("--json", help="also write every figure, per-step timings and full settings here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run this one variant
    parser.add_argument("--result", help=argparse.SUPPRESS)
    options = parser.parse_args(argv[:split])
    unknown = [name for name in options.variants.split(",") if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant '{unknown[0]}' (choose from {', '.join(VARIANTS)})")
    if options.steps <= options.warmup:
        parser.error("--steps must be larger than --warmup")
    return options, argv[split + 1 :]


def main(argv: list[str]) -> int:
    options, extra = parse_options(argv)
    if options.worker:
        run_worker(options, extra)
        return 0
    if options.model_size != "smoke" and not torch.cuda.is_available():
        print(f"step_time.py: error: --model-size {options.model_size} needs a CUDA GPU: on the CPU its steps "
              f"would take hours (use --model-size smoke)", file=sys.stderr)  # fmt: skip
        return 2
    smoke.build_assets(grpotrainer.PROMPT)
    if options.model_size != "smoke":
        build_random_qwen3(options.model_size)
    host = machine()
    rows = {variant: run_variant(options, variant, extra) for variant in options.variants.split(",")}
    gpu = f"GPU {host['gpu']}" if host["gpu"] else "no GPU"
    bandwidth = gpu_bandwidth()
    header = (
        f"Machine: {host['cpu']}, {host['cores']} cores ({host['torch_threads']} torch threads), {gpu}; "
        f"torch {host['torch']}, trl {host['trl']}, transformers {host['transformers']}; "
        f"load average {host['load_average_1min']:.2f} at start. "
        f"Model {options.model_size}, {options.steps} steps per variant, first {options.warmup} left out. "
        f"Bandwidth bound: {bandwidth[0] if bandwidth else 'none (no CUDA GPU, or one not in GPU_BANDWIDTH_TBS)'}."
    )
    print(markdown(header, rows))
    flags = {variant: " ".join(VARIANTS[variant] + extra) or "(none)" for variant in rows}
    print("\nVariant flags: " + "; ".join(f"{variant}: {text}" for variant, text in flags.items()))
    if options.json:
        report = {"machine": host, "model_size": options.model_size, "steps": options.steps,
                  "warmup": options.warmup, "extra_flags": extra, "variants": rows}  # fmt: skip
        Path(options.json).parent.mkdir(parents=True, exist_ok=True)
        Path(options.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
