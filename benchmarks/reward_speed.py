"""Completions per second for each reward function, on GSM8K-sized completions.

    python benchmarks/reward_speed.py [--repeats 7] [--limit 4000]

Completions are built from the real GSM8K reference solutions (../shared/data/gsm8k beside the
repository) in four styles a policy model produces: the reference itself, plain text ending in
"#### N", a conversational message ending in \\boxed{N}, and a <think> block followed by
"The answer is N." Without the data, synthetic solutions of the same shape are used. Prints a
Markdown table: the first pass (cold caches) and the median of the repeats, on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rewards import REWARDS, parse_ground_truth  # noqa: E402

GSM8K = REPO.parent / "shared/data/gsm8k"


def reference_solutions(limit: int) -> tuple[list[str], str]:
    """Up to ``limit`` GSM8K reference solutions, and where they came from."""
    if GSM8K.is_dir():
        with (GSM8K / "train.jsonl").open(encoding="utf-8") as lines:
            return [json.loads(line)["answer"] for _, line in zip(range(limit), lines)], "GSM8K train"
    rng = random.Random(0)
    solutions = []
    for _ in range(limit):
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
        solutions.append(
            f"She buys {a} apples and then {b} more, so {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n"
            f"Each costs ${c}, so she pays {a + b} * {c} = $<<{a + b}*{c}={(a + b) * c}>>{(a + b) * c}.\n"
            f"#### {(a + b) * c}"
        )
    return solutions, "synthetic (GSM8K data not found)"


def model_styles(solution: str) -> list:
    """One reference solution written the ways a policy model writes it."""
    body, _, answer = solution.rpartition("####")
    body, answer = re.sub(r"<<[^>]*>>", "", body).strip(), answer.strip()
    return [
        solution,
        f"{body}\n#### {answer}",
        [{"role": "assistant", "content": f"{body}\nSo the final answer is $\\boxed{{{answer}}}$."}],
        f"<think>\nLet me work it out.\n{body}\n</think>\nThe answer is {answer}.",
    ]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--limit", type=int, default=4000, help="reference solutions to use")
    args = parser.parse_args()

    solutions, source = reference_solutions(args.limit)
    completions, golds = [], []
    for solution in solutions:
        styles = model_styles(solution)
        completions += styles
        golds += [parse_ground_truth(solution)] * len(styles)
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]

    print(f"Machine: {cpu_name()}, {os.cpu_count()} CPUs (one used); Python {platform.python_version()}")
    print(
        f"Completions: {len(completions):,} from {source}, 4 styles, "
        f"mean {statistics.mean(map(len, texts)):.0f} characters\n"
    )
    print("| reward function | completions/s, first pass | completions/s, median | µs per completion |")
    print("|---|---:|---:|---:|")
    for reward_func, _ in REWARDS:
        seconds = []
        for _ in range(args.repeats + 1):
            start = time.perf_counter()
            reward_func(completions, ground_truth=golds)
            seconds.append(time.perf_counter() - start)
        median = statistics.median(seconds[1:])
        print(
            f"| `{reward_func.__name__}` | {len(completions) / seconds[0]:,.0f} | "
            f"{len(completions) / median:,.0f} | {median / len(completions) * 1e6:.1f} |"
        )


if __name__ == "__main__":
    main()
