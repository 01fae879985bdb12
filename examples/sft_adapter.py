"""The first stage of SFT -> GRPO: a LoRA adapter from TRL's SFTTrainer, for grpotrainer.py to continue.

    python examples/sft_adapter.py outputs/sft-smoke              # a few SFT steps on the --smoke model and data
    python grpotrainer.py --smoke --adapter outputs/sft-smoke     # GRPO continues that adapter

It fine-tunes on the worked solutions of the --smoke dataset, asked with grpotrainer.py's own prompt and answered in
GSM8K's '#### <number>' format, which is what GRPO's rewards then pay for. Any SFTTrainer or DPOTrainer adapter of a
model works the same way; this one is small enough for a CPU in seconds.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # grpotrainer.py's modules, from any folder

import torch  # noqa: E402
from datasets import load_dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

import grpotrainer  # noqa: E402
import smoke  # noqa: E402


def solutions(split_file: Path):
    """GSM8K rows as conversational prompt-completion pairs: SFTTrainer trains on the completion only."""
    return load_dataset("json", data_files=str(split_file), split="train").map(
        lambda row: {
            "prompt": [{"role": "user", "content": grpotrainer.PROMPT.format(question=row["question"])}],
            "completion": [{"role": "assistant", "content": row["answer"]}],
        },
        remove_columns=["question", "answer"],
    )


def train_sft_adapter(out: Path, steps: int) -> None:
    smoke.build_assets(grpotrainer.PROMPT)
    model = str(smoke.SMOKE_DIR / "model")
    config = SFTConfig(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=5e-3,
        lr_scheduler_type="constant",
        logging_steps=max(1, steps // 4),
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        seed=0,
    )
    # r=8 on the attention layers only, unlike grpotrainer.py's r=16 on every linear layer: GRPO keeps this shape
    attention = ["q_proj", "k_proj", "v_proj", "o_proj"]
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=attention, task_type="CAUSAL_LM")
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=solutions(smoke.SMOKE_DIR / "gsm8k" / "train.jsonl"), peft_config=lora
    )
    trainer.train()
    trainer.save_model(str(out))  # adapter_config.json records the base: the smoke model's folder
    print(f"SFT LoRA adapter: {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder to save the adapter in")
    parser.add_argument("--steps", type=int, default=20, help="SFT optimizer steps")
    arguments = parser.parse_args()
    train_sft_adapter(arguments.out, arguments.steps)
