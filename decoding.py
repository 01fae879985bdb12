"""Compiled decoding (--compile_decoding true): a static KV cache sized once for the longest prompt of the run and the
decoding step compiled by torch.compile (as CUDA graphs on a GPU), for the training completions and the greedy
evaluation. transformers' generate does the work; this module only says how, in GenerationConfig fields.

The prefill (the prompt's forward pass) stays eager, since its shape changes with every batch; only the one-token
decoding steps, whose shapes are fixed by the static cache, run compiled."""

import torch
from accelerate import PartialState
from transformers import CompileConfig


def prompt_lengths(tokenizer, dataset, chat_template_kwargs: dict | None) -> list[int]:
    """Tokens of each chat prompt of a dataset, as TRL tokenizes them (chat template, generation prompt)."""
    conversations = [list(prompt) for prompt in dataset["prompt"]]
    ids = tokenizer.apply_chat_template(
        conversations, tokenize=True, add_generation_prompt=True, **(chat_template_kwargs or {})
    )["input_ids"]
    return list(map(len, ids))


def longest_prompt_tokens(tokenizer, prompt_sets, chat_template_kwargs: dict | None) -> int:
    """Tokens of the longest chat prompt in the datasets, as TRL tokenizes them."""
    sets = [prompt_lengths(tokenizer, dataset, chat_template_kwargs) for dataset in prompt_sets if dataset is not None]
    return max(max(lengths) for lengths in sets)


def compile_config() -> CompileConfig:
    # CUDA graphs ("reduce-overhead") replay a decoding step's ~2,000 kernel launches as one; a CPU has none to save
    config = CompileConfig(fullgraph=False, mode="reduce-overhead" if torch.cuda.is_available() else "default")
    # generate compiles only on an accelerator unless this flag of CompileConfig is set, and it has no public setter
    # (transformers 5.23.0, generation/utils.py:2450, _valid_auto_compile_criteria)
    config._compile_all_devices = True
    return config


def allow_4bit_compile(model) -> None:
    """transformers' bitsandbytes quantizer says it cannot be compiled (quantizers/base.py:286, is_compileable False,
    which the 4-bit quantizer keeps), so generate would skip the compile with a warning. bitsandbytes 0.50 registers
    its 4-bit kernels as torch.library custom ops (torch.ops.bitsandbytes), which torch.compile calls as they are:
    the quantizer alone is told otherwise, on this model only."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and not quantizer.is_compileable:
        kind = type(quantizer)
        quantizer.__class__ = type(f"Compileable{kind.__name__}", (kind,), {"is_compileable": True})


def keep_one_input_grad_hook(model) -> None:
    """transformers 5.23.0's enable_input_require_grads (modeling_utils.py:2137) adds a forward hook to the input
    embeddings at every call and drops its handle on the earlier ones. gradient_checkpointing_enable calls it
    (modeling_utils.py:3189), and TRL re-enables gradient checkpointing after every generation
    (trl/models/utils.py:158), so one more no-op hook piles up per generation; torch.compile guards on a module's
    hooks and so recompiled the decoding step at every training step. Remove the earlier hooks first."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    enable = base.enable_input_require_grads

    def enable_with_one_hook():
        base.disable_input_require_grads()
        enable()

    base.enable_input_require_grads = enable_with_one_hook


def why_not_compileable(model, args) -> str | None:
    """Why this run's decoding cannot be compiled here, or None."""
    if args.use_vllm or args.use_transformers_continuous_batching:
        return "vLLM and continuous batching generate on their own paths"
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and getattr(quantizer.quantization_config, "load_in_4bit", False):
        if not hasattr(torch.ops.bitsandbytes, "dequantize_4bit"):
            return "this bitsandbytes has no torch.compile support for 4-bit (it needs 0.46 or newer)"
    elif quantizer is not None:
        return f"transformers cannot compile a {quantizer.quantization_config.quant_method} quantized model"
    return None


def say(line: str) -> None:
    if PartialState().is_main_process:
        print(line)


def generation_options(model, tokenizer, prompt_sets, args) -> dict:
    """GenerationConfig fields for compiled decoding of this run's prompts, or {} (eager decoding) when the model
    cannot be compiled, said in one line."""
    reason = why_not_compileable(model, args)
    if reason:
        say(f"compiled decoding: off, decoding eagerly instead: {reason}")
        return {}
    allow_4bit_compile(model)
    # sized once for the whole run, so that no later batch needs a larger cache and a recompile (generate keeps the
    # larger of this and the call's own length: generation/utils.py:2299)
    longest_prompt = longest_prompt_tokens(tokenizer, prompt_sets, args.chat_template_kwargs)
    max_cache_len = longest_prompt + args.max_completion_length
    config = compile_config()
    say(
        f"compiled decoding: static KV cache of {max_cache_len} tokens, torch.compile mode '{config.mode}'; "
        "the first generation of each batch shape compiles (tens of seconds on a CPU)"
    )
    return {"cache_implementation": "static", "max_cache_len": max_cache_len, "disable_compile": False,
            "compile_config": config}  # fmt: skip
