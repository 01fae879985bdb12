"""decoding.py: compiled decoding gives the eager path's tokens, for TRL's training sampling and for the greedy
evaluation, and compiles once: later steps and evaluations reuse the graphs (counted by torch's own counters).

One trainer with compiled decoding is built and trained for the whole module: a CPU compile takes tens of seconds."""

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import GenerationConfig, TrainerCallback
from trl.models import unwrap_model_for_generation

import decoding
import evaluation
import grpotrainer
import smoke


def graphs_compiled() -> int:
    return counters["stats"]["unique_graphs"]


class GraphCounts(TrainerCallback):
    """Graphs compiled so far, after each optimizer step and each evaluation."""

    def __init__(self):
        self.events = []

    def on_step_end(self, args, state, control, **kwargs):
        self.events.append((f"step {state.global_step}", graphs_compiled()))

    def on_evaluate(self, args, state, control, **kwargs):
        self.events.append((f"evaluation {state.global_step}", graphs_compiled()))


@pytest.fixture(scope="module")
def compiled_run(tmp_path_factory):
    """A --smoke trainer (4-bit NF4 + LoRA) with compiled decoding, trained 3 steps with an evaluation after each."""
    smoke.build_assets(grpotrainer.PROMPT)
    out = tmp_path_factory.mktemp("compiled") / "run"
    run = grpotrainer.read_settings([
        "--smoke", "--compile_decoding", "true", "--max_steps", "3", "--eval_steps", "1", "--logging_steps", "1",
        "--eval_before_and_after", "false", "--report_to", "none", "--save_strategy", "no", "--output_dir", str(out),
    ])  # fmt: skip
    counts = GraphCounts()
    trainer = grpotrainer.build_trainer(run, grpotrainer.load_inputs(run), [counts])
    trainer.train()
    return trainer, counts.events


def test_decoding_compiles_once_and_later_steps_and_evaluations_reuse_it(compiled_run):
    trainer, events = compiled_run
    assert trainer.compiled["cache_implementation"] == "static" and trainer.compiled["disable_compile"] is False
    assert [name for name, _ in events] == [f"{kind} {step}" for step in (1, 2, 3) for kind in ("step", "evaluation")]
    assert events[0][1] > 0, "the training completions of step 1 were not compiled"
    after_first_evaluation = {count for _, count in events[1:]}
    assert after_first_evaluation == {events[1][1]}, events  # steps 2-3 and evaluations 2-3 compiled nothing


def train_prompt_ids(trainer, count: int) -> dict:
    tokenizer = trainer.processing_class
    texts = [
        tokenizer.apply_chat_template(list(example["prompt"]), tokenize=False, add_generation_prompt=True)
        for example in trainer.train_dataset.select(range(count))
    ]
    return tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)


def sample_as_trl_does(trainer, inputs, config: GenerationConfig, seed: int) -> torch.Tensor:
    """TRL's sampling: the model in train mode, through trl's own unwrap_model_for_generation, without gradients."""
    torch.manual_seed(seed)
    with (
        unwrap_model_for_generation(
            trainer.model_wrapped,
            trainer.accelerator,
            generation_kwargs=trainer.generation_kwargs,
            gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs,
        ) as model,
        torch.no_grad(),
    ):
        return model.generate(**inputs, generation_config=config)


def test_compiled_sampling_gives_the_eager_tokens_with_a_fixed_seed(compiled_run):
    trainer, _ = compiled_run
    trainer.model.train()
    inputs = train_prompt_ids(trainer, trainer.args.per_device_train_batch_size)  # the training batch shape
    eager = GenerationConfig(**trainer.generation_kwargs, disable_compile=True)  # TRL's own (grpo_trainer.py:1173)
    before = graphs_compiled()
    compiled_tokens = sample_as_trl_does(trainer, inputs, trainer.generation_config, seed=7)
    assert graphs_compiled() == before  # the graph of the training steps
    eager_tokens = sample_as_trl_does(trainer, inputs, eager, seed=7)
    assert torch.equal(compiled_tokens, eager_tokens)
    assert not torch.equal(compiled_tokens, sample_as_trl_does(trainer, inputs, eager, seed=8))  # it does sample


def test_compiled_greedy_evaluation_gives_the_eager_completions(compiled_run):
    trainer, _ = compiled_run
    before = graphs_compiled()
    with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as model:  # as trainer.evaluate does
        compiled_rows, compiled = evaluation.evaluate_gsm8k(
            model, trainer.processing_class, trainer.eval_dataset, trainer.args, compiled=trainer.compiled
        )
        assert graphs_compiled() == before  # a fourth evaluation, and still nothing new to compile
        eager_rows, eager = evaluation.evaluate_gsm8k(
            model, trainer.processing_class, trainer.eval_dataset, trainer.args
        )
    assert compiled_rows == eager_rows and len(compiled_rows) == len(trainer.eval_dataset)
    assert compiled["generation"] == eager["generation"] + ", compiled decoding"


def test_a_run_that_cannot_compile_says_so_in_one_line_and_decodes_eagerly(capsys):
    run = grpotrainer.read_settings(["--smoke", "--use_transformers_continuous_batching", "true"])
    assert decoding.generation_options(None, None, [], run.training) == {}
    assert capsys.readouterr().out == (
        "compiled decoding: off, decoding eagerly instead: vLLM and continuous batching generate on their own paths\n"
    )
