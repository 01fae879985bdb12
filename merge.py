"""`grpotrainer.py --merge --adapter RUN/final`: fold a trained LoRA adapter into its base model, written as a plain
model folder (`RUN/final-merged`) that transformers, vLLM and `--eval_only --model_name` load like any other.

Training keeps the base model in 4-bit; merging into those 4-bit weights would round the sum back to 4 bits (peft
warns about it). Here the base loads again from its original 16-bit weights, in the precision the run computed in,
and the adapter is added to those.
"""

import os
import shutil
from pathlib import Path

import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

import adapters
import loading
from options import Layer, RunSettings, Source
from settings import InputError


def merged_dir(adapter: Path) -> Path:
    """Beside the adapter, so a run's folder holds both: RUN/final -> RUN/final-merged. A checkpoint's merge is
    RUN/merged-checkpoint-N: the Trainer takes any RUN/checkpoint-N* folder for a checkpoint, so a resumed run's
    save_total_limit would count "checkpoint-N-merged" among its checkpoints and delete it."""
    if adapter.name.startswith(f"{PREFIX_CHECKPOINT_DIR}-"):
        return adapter.parent / f"merged-{adapter.name}"
    return adapter.parent / f"{adapter.name}-merged"


def check_request(adapter: str | None) -> Path:
    """What --merge needs besides the settings' own checks; returns the adapter folder."""
    if adapter is None:
        raise InputError("--merge needs --adapter: the folder of the LoRA adapter to merge, e.g. RUN/final")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every process would write the same folder
        raise InputError("--merge runs in one process: start it with python, not torchrun or accelerate launch")
    return Path(adapter)


def check_paths(adapter: Path) -> Path:
    """What the files show without loading a model, besides the adapter's own checks (adapters.check); returns the
    folder to write."""
    out = merged_dir(adapter)
    if out.exists():
        raise InputError(f"{out} already exists: a merged model is never overwritten (move or delete it first)")
    return out


def merge_dtype(adapter: Path, dtype: str | None, dtype_source: Source | None) -> tuple[str | None, str]:
    """The precision to merge and save in, and why: --dtype if given, else the one the run computed in (from the
    run's settings.yaml beside the adapter: bf16 for a GPU run, float32 for a CPU run), else this machine's default
    (bf16 from config.yaml on a GPU, float32 without one)."""
    if dtype_source is not None and dtype_source.layer is Layer.COMMAND_LINE:
        return dtype, "as --dtype asks"
    run_settings = adapter.parent / "settings.yaml"
    if run_settings.is_file():
        run_dtype = (yaml.safe_load(run_settings.read_text()).get("model") or {}).get("dtype")
        if run_dtype:
            return run_dtype, f"as the run computed, per {run_settings}"
    return dtype, f"this machine's default ({dtype_source or 'transformers'}): no settings.yaml beside the adapter"


def load_base(model_name: str, dtype: str | None, revision: str | None, trust_remote_code: bool):
    """The base model's original weights, unquantized, in CPU memory: merging is one small matrix product per layer,
    quick on a CPU, so it needs no free GPU memory (an 8B model takes about 16 GB of RAM in bf16)."""
    try:
        return AutoModelForCausalLM.from_pretrained(
            model_name, dtype=dtype, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as error:
        raise loading.model_load_error(model_name, error) from None


def merge_adapter(base, adapter: Path):
    """The base with the adapter's low-rank update added to its weights; the adapter's layers are gone."""
    return adapters.attach(base, str(adapter)).merge_and_unload()


def save_merged(model, tokenizer, out: Path) -> None:
    """Safetensors weights, config, generation config, tokenizer and chat template. Written to a hidden folder and
    renamed at the end, so an interrupted save leaves nothing that a retry would refuse to overwrite."""
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        partial.rename(out)
    except BaseException:  # Ctrl-C included
        shutil.rmtree(partial, ignore_errors=True)
        raise


def load_run_tokenizer(adapter: Path, model_name: str, revision: str | None, trust_remote_code: bool):
    """The tokenizer the run trained with (the trainer saves it beside the adapter), else the base model's."""
    if (adapter / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(adapter, trust_remote_code=trust_remote_code)
    return AutoTokenizer.from_pretrained(model_name, revision=revision, trust_remote_code=trust_remote_code)


def merge_run(run: RunSettings) -> int:
    """--merge: check everything cheap, then load, merge, save and say how to use the result."""
    adapter = check_request(run.script.adapter)
    model_name, revision = run.model.model_name_or_path, run.model.model_revision
    out = check_paths(adapter)
    dtype, why = merge_dtype(adapter, run.model.dtype, run.sources.get("dtype"))
    trust_remote_code = run.training.trust_remote_code
    tokenizer = load_run_tokenizer(adapter, model_name, revision, trust_remote_code)
    merged = merge_adapter(load_base(model_name, dtype, revision, trust_remote_code), adapter)
    save_merged(merged, tokenizer, out)
    print(
        f"merged model in {str(merged.dtype).removeprefix('torch.')}, {why}: {out}\n"
        f'load it like any model: AutoModelForCausalLM.from_pretrained("{out}"), vllm serve {out}, '
        f"or python grpotrainer.py{' --smoke' * run.script.smoke} --eval_only --model_name {out}"
    )
    return 0
