"""Reward composition: weights, components, dispatch on kind, missing solutions."""

from __future__ import annotations

import time

import pytest

from lampo_pl.data.record import Problem
from lampo_pl.rewards import (
    REWARD_NAMES,
    RewardSpec,
    rouge_l,
    score_responses,
)

MATH = Problem(id="m", prompt="What is 1/2?", answer="0.5", solution="one half is zero point five")
MATH_NO_SOLUTION = Problem(id="m2", prompt="What is 2+2?", answer="4")
CORRECTNESS = [RewardSpec("correctness", 1.0)]
CHOICE = Problem(id="c", prompt="Pick", answer="B", kind="choice", choices=("1", "2", "3", "4"))


def test_weights_and_unweighted_components() -> None:
    responses = ["<think>one half is zero point five</think>\\boxed{\\frac{1}{2}}", "\\boxed{3}"]
    specs = [RewardSpec("correctness", 2.0), RewardSpec("density", 0.5), RewardSpec("format", 0.25)]
    batch = score_responses(responses, [MATH, MATH], specs, thinking=True)
    density_1 = rouge_l(["\\boxed{3}"], [MATH.solution or ""])[0]
    assert batch.components == {
        "correctness": [1.0, 0.0],
        "density": [1.0, density_1],
        "format": [1.0, 0.0],  # the second has no reasoning block
    }
    # 2·1 + 0.5·1 + 0.25·1 = 2.75 ; 2·0 + 0.5·density_1 + 0.25·0
    assert batch.total == [2.75, 0.5 * density_1]
    assert batch.correct == [1.0, 0.0]


def test_correct_is_computed_even_without_a_correctness_spec() -> None:
    batch = score_responses(["\\boxed{0.5}", "\\boxed{1}"], [MATH, MATH], [RewardSpec("format", 1.0)])
    assert batch.correct == [1.0, 0.0]
    assert set(batch.components) == {"format"}
    assert batch.total == [1.0, 1.0]


def test_dispatch_on_kind() -> None:
    responses = ["\\boxed{\\frac{1}{2}}", "The answer is (B).", "\\boxed{\\frac{1}{2}}", "The answer is (B)."]
    problems = [MATH, CHOICE, CHOICE, MATH]
    batch = score_responses(responses, problems, CORRECTNESS)
    # math-verify equivalence for math (1/2 = 0.5), letters for choice; crossed pairs fail.
    assert batch.correct == [1.0, 1.0, 0.0, 0.0]
    assert batch.diagnostics["choice_no_answer"] == 1.0  # "\boxed{\frac{1}{2}}" names no letter
    assert batch.diagnostics["math_parse_failures"] + batch.diagnostics["math_no_answer"] == 0.0


def test_density_is_zero_and_counted_without_a_solution() -> None:
    responses = ["one half is zero point five", "one half is zero point five"]
    batch = score_responses(responses, [MATH, MATH_NO_SOLUTION], [*CORRECTNESS, RewardSpec("density", 1.0)])
    assert batch.components["density"][0] == 1.0
    assert batch.components["density"][1] == 0.0
    assert batch.diagnostics["density_missing_solution"] == 1.0


def test_diagnostics_keys() -> None:
    batch = score_responses(["\\boxed{7+7}"], [MATH], [*CORRECTNESS, RewardSpec("density", 0.1)])
    assert batch.diagnostics["math_echoes"] == 1.0
    assert {"math_timeouts", "math_parse_failures", "math_errors", "density_missing_solution"} <= set(batch.diagnostics)


def test_unknown_reward_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="correctness, density, format"):
        RewardSpec("bleu")  # type: ignore[arg-type]
    assert REWARD_NAMES == ("correctness", "density", "format")


def test_duplicate_reward_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="once"):
        score_responses(["x"], [MATH], [RewardSpec("correctness"), RewardSpec("correctness", 0.5)])


def test_unknown_problem_kind_and_length_mismatch() -> None:
    code = Problem(id="k", prompt="p", answer="a", kind="code")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="code"):
        score_responses(["x"], [code], CORRECTNESS)
    with pytest.raises(ValueError, match="2 responses and 1 problems"):
        score_responses(["x", "y"], [MATH], CORRECTNESS)


def test_a_training_batch_is_fast() -> None:
    # B·G = 64 long responses (8 problems × 8), density against ~300-token solutions.
    long_solution = " ".join(f"step {i} uses fact {i % 17}" for i in range(60))
    problems = [Problem(id=str(b), prompt="p", answer=str(b), solution=long_solution) for b in range(8)]
    responses = [
        "<think>" + " ".join(f"step {i} maybe fact {i % 13}" for i in range(400)) + f"</think>\\boxed{{{g}}}"
        for _ in range(8)
        for g in range(8)
    ]
    specs = [*CORRECTNESS, RewardSpec("density", 0.1)]
    score_responses(responses[:1], problems[:1], specs)  # worker start-up
    start = time.monotonic()
    batch = score_responses(responses, [p for p in problems for _ in range(8)], specs)
    assert time.monotonic() - start < 5.0
    assert sum(batch.correct) == 8  # response g of problem b is right when g == b
