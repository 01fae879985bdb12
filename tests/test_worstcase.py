"""The worst-case step (worstcase.py): on the longest prompts with every completion max_completion_length long, TRL's
own step with its backward, and nothing left behind: no weight moves, and a run with it logs what a run without it
logs, step for step."""

import contextlib
import json
import types

import pytest
import torch
from conftest import run_script, scalars
from safetensors.torch import load_file
from transformers import TrainerControl, TrainerState

import decoding
import grpotrainer
import smoke
import worstcase

GIB = 2**30


def test_on_by_default_only_with_a_cuda_gpu():
    assert worstcase.wanted(None) is torch.cuda.is_available()
    assert worstcase.wanted(True) is True and worstcase.wanted(False) is False


def measurement(**changes) -> worstcase.Measurement:
    fields = dict(completions=32, shortest=300, longest=300, prompt_tokens=312, processes=1, peak=int(61.2 * GIB),
                  total=85_520_809_984, seconds=41.2)  # fmt: skip
    return worstcase.Measurement(**fields | changes)


def test_the_line_gives_the_peak_against_the_gpus_memory_then_what_the_step_held():
    assert worstcase.describe(measurement()) == (
        "worst-case step: 61.2 of 79.6 GiB; 32 completions of 300 tokens on the longest prompts (312 tokens), "
        "with backward, 41 s"
    )
    assert worstcase.describe(measurement(peak=None, total=None)).startswith(
        "worst-case step: ran on the CPU, where no GPU memory is measured; 32 completions of 300 tokens"
    )
    # completions that were not all forced to the limit say so; under torchrun the count is each process's
    assert "32 completions per process of 12-300 tokens" in worstcase.describe(measurement(shortest=12, processes=2))


def test_held_sets_a_value_for_the_duration_and_leaves_the_rest_as_it_was():
    options = {"min_new_tokens": 3, "temperature": 1.0}
    with worstcase.held(options, "min_new_tokens", 16), worstcase.held(options, "min_tokens", 16):
        assert options == {"min_new_tokens": 16, "temperature": 1.0, "min_tokens": 16}
    assert options == {"min_new_tokens": 3, "temperature": 1.0}
    with pytest.raises(KeyError), worstcase.held(options, "min_new_tokens", 16):
        raise KeyError("the step failed")
    assert options == {"min_new_tokens": 3, "temperature": 1.0}


def test_under_deepspeed_it_says_it_is_skipped_and_takes_no_step(capsys):
    trainer = types.SimpleNamespace(is_deepspeed_enabled=True)  # no training_step: calling it would fail the test
    worstcase.WorstCaseCheck(trainer).on_train_begin(None, TrainerState(), TrainerControl())
    assert capsys.readouterr().out == worstcase.UNDER_DEEPSPEED + "\n"


# --------------------------------------------------------------------------------------------------------------------
# The step itself, on a trainer of the smoke model


def lora_weights(model) -> dict[str, torch.Tensor]:
    return {name: weight.detach().clone() for name, weight in model.named_parameters() if "lora_" in name}


def test_the_step_forces_every_completion_to_the_limit_on_the_longest_prompts_leaving_no_trace(tmp_path, monkeypatch):
    run = grpotrainer.read_settings(["--smoke", "--report_to", "none", "--output_dir", str(tmp_path / "run")])
    smoke.build_assets(grpotrainer.PROMPT)
    trainer = grpotrainer.build_trainer(run, grpotrainer.load_inputs(run))
    # The end-of-sequence tokens made likely, so that completions left to themselves end at once
    trainer.generation_config.sequence_bias = [[[eos], 20.0] for eos in trainer.eos_token_ids]
    seen = []
    generate_and_score = trainer._generate_and_score_completions

    def spy(inputs):
        output = generate_and_score(inputs)
        seen.append((inputs, output["completion_mask"].sum(dim=1).tolist()))
        return output

    monkeypatch.setattr(trainer, "_generate_and_score_completions", spy)
    with monkeypatch.context() as unforced:
        unforced.setattr(worstcase, "forced_length", lambda trainer: contextlib.nullcontext())
        worstcase.worst_case_step(trainer)
    assert max(seen[0][1]) < run.training.max_completion_length  # the bias ends them early
    weights, random_state = lora_weights(trainer.model), torch.get_rng_state()

    measured = worstcase.worst_case_step(trainer)

    rows, lengths = seen[1]
    limit = run.training.max_completion_length
    assert lengths == [limit] * run.training.per_device_train_batch_size == [limit] * measured.completions
    assert (measured.shortest, measured.longest) == (limit, limit)
    group, template = run.training.num_generations, run.training.chat_template_kwargs
    firsts = rows[::group]
    assert all(row["question"] == firsts[i // group]["question"] for i, row in enumerate(rows))  # groups, in a row
    everyone = decoding.prompt_lengths(trainer.processing_class, trainer.train_dataset, template)
    chosen = decoding.prompt_lengths(trainer.processing_class, {"prompt": [row["prompt"] for row in firsts]}, template)
    assert sorted(chosen) == sorted(everyone)[-len(firsts):] and measured.prompt_tokens == max(everyone)
    after = lora_weights(trainer.model)
    assert after.keys() == weights.keys() and all(torch.equal(after[name], weights[name]) for name in weights)
    assert all(weight.grad is None for weight in trainer.model.parameters())
    assert torch.equal(torch.get_rng_state(), random_state)  # it sampled from a fork
    assert trainer._step == 0 and trainer._buffered_inputs is None and trainer.state.num_input_tokens_seen == 0
    assert not any(trainer._metrics.values()) and not trainer._logs["completion"]  # nothing for the first log
    assert trainer.generation_config.min_new_tokens is None  # training's completions may end when they end
    assert not hasattr(trainer, "current_gradient_accumulation_steps")  # the epoch loop sets it


# --------------------------------------------------------------------------------------------------------------------
# Two short runs, one with the step forced on: the same metrics at every step, the same adapter at the end

SHORT = ["--smoke", "--max_steps", 2, "--logging_steps", 1, "--eval_strategy", "no", "--eval_before_and_after", "false"]
TIMINGS = ("step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second")


@pytest.fixture(scope="module")
def with_and_without(tmp_path_factory):
    folder = tmp_path_factory.mktemp("worstcase")
    results = {}
    for name, extra in (("with", ["--worst_case_check", "true"]), ("without", [])):
        result = run_script(*SHORT, *extra, "--output_dir", folder / name)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        results[name] = folder / name, result.stdout
    return results


def test_forced_on_it_prints_one_line_and_off_by_default_without_a_gpu(with_and_without):
    lines = [line for line in with_and_without["with"][1].splitlines() if "worst-case step: " in line]
    assert len(lines) == 1
    assert lines[0].endswith(" s") and "16 completions of 48 tokens on the longest prompts (" in lines[0]
    assert ("worst-case step: " in with_and_without["without"][1]) is torch.cuda.is_available()
    assert "command line: " in with_and_without["with"][1] and "worst_case_check=True" in with_and_without["with"][1]


def test_a_run_with_it_logs_the_same_metrics_and_trains_the_same_adapter_as_one_without(with_and_without):
    (with_it, _), (without, _) = with_and_without["with"], with_and_without["without"]
    logged, reference = scalars(with_it), scalars(without)
    assert logged.keys() == reference.keys()  # nothing of its own reached TensorBoard
    compared = [tag for tag in reference if not tag.endswith(TIMINGS)]
    assert {"train/loss", "train/objective/kl", "train/rewards/mean", "train/completions/mean_length"} <= set(compared)
    assert {tag: logged[tag] for tag in compared} == {tag: reference[tag] for tag in compared}
    assert len(reference["train/loss"]) == 2  # steps 1 and 2
    adapter, reference_adapter = (load_file(run / "final" / "adapter_model.safetensors") for run in (with_it, without))
    assert adapter.keys() == reference_adapter.keys()
    assert all(torch.equal(adapter[name], reference_adapter[name]) for name in adapter)
    doctor_events = [json.loads((run / "doctor.json").read_text()) for run in (with_it, without)]
    assert doctor_events[0] == doctor_events[1]
