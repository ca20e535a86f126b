"""The synthetic arithmetic generator and the packaged CHAMP set."""

from __future__ import annotations

import collections
import re

import pytest

from lampo_pl.data import generate_synthetic, load_problems

EQUATION = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_deterministic_and_seed_dependent() -> None:
    assert generate_synthetic(50, seed=3) == generate_synthetic(50, seed=3)
    assert [p.prompt for p in generate_synthetic(50, seed=3)] != [p.prompt for p in generate_synthetic(50, seed=4)]
    train, test = generate_synthetic(50, split="train"), generate_synthetic(50, split="test")
    assert [p.prompt for p in train] != [p.prompt for p in test]
    assert not {p.id for p in train} & {p.id for p in test}


def test_levels_cycle_and_ids_are_unique() -> None:
    problems = generate_synthetic(400, levels=(1, 2, 3, 4), seed=0)
    assert collections.Counter(p.metadata["level"] for p in problems) == {1: 100, 2: 100, 3: 100, 4: 100}
    assert len({p.id for p in problems}) == 400
    only = generate_synthetic(10, levels=(2,), seed=0)
    assert {p.metadata["level"] for p in only} == {2}
    with pytest.raises(ValueError, match="levels"):
        generate_synthetic(10, levels=(5,))


def test_solutions_are_right_and_end_in_the_boxed_answer() -> None:
    for problem in generate_synthetic(400, seed=1):
        assert problem.solution is not None and problem.kind == "math"
        assert problem.solution.endswith(f"The answer is \\boxed{{{problem.answer}}}.")
        assert problem.answer.isdigit()  # a non-negative integer, as text
        equations = EQUATION.findall(problem.solution)
        assert len(equations) >= {1: 1, 2: 1, 3: 2, 4: 3}[problem.metadata["level"]]
        for a, op, b, result in equations:
            assert eval(f"{a} {op} {b}") == int(result), problem.solution
        assert equations[-1][3] == problem.answer
        if problem.metadata["level"] <= 2:  # the prompt itself is the expression
            a, op, b = re.search(r"(\d+) ([-+]|and) (\d+)", problem.prompt).groups()  # type: ignore[union-attr]
            assert eval(f"{a} {op.replace('and', '+')} {b}") == int(problem.answer)


def test_difficulty_is_as_documented() -> None:
    problems = generate_synthetic(200, seed=2)
    level1 = [p for p in problems if p.metadata["level"] == 1]
    assert all(re.fullmatch(r".*\b[1-9] \+ [1-9]\b.*|What is the sum of [1-9] and [1-9]\?", p.prompt) for p in level1)
    level2 = [p for p in problems if p.metadata["level"] == 2]
    assert all(re.search(r"\b\d\d [-+] \d\d\b", p.prompt) for p in level2)
    assert {"+", "-"} <= {re.search(r" ([-+]) ", p.prompt).group(1) for p in level2}  # type: ignore[union-attr]
    assert all(p.prompt.endswith("?") and "How many" in p.prompt for p in problems if p.metadata["level"] >= 3)


def test_registry_synthetic_uses_limit_and_seed() -> None:
    problems = load_problems("synthetic", limit=12, seed=5)
    assert problems == generate_synthetic(12, seed=5)


def test_champ_loads_the_270_packaged_problems() -> None:
    problems = load_problems("champ")
    assert len(problems) == 270 and len({p.id for p in problems}) == 270
    first = problems[0]
    assert first.id == "P_Combinatorics_1" and first.answer == "239"
    assert first.prompt.startswith("Let a string consist of digit 1, 2, 3.") and "@@" not in first.prompt
    assert first.solution is not None and first.solution.splitlines()[-1].endswith("such strings.")
    assert all(p.answer and p.solution for p in problems)
    categories = collections.Counter(p.metadata["category"] for p in problems)
    assert categories == {
        "Number-Theory": 80,
        "Inequality": 50,
        "Polynomial": 50,
        "Sequence": 50,
        "Combinatorics": 40,
    }
