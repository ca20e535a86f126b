"""avg@k and pass@k: hand-computed values, a brute-force check of the estimator, scripted policies."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from lampo_pl.data.record import Problem
from lampo_pl.data.registry import load_problems
from lampo_pl.evaluation import EvalResult, evaluate, format_table, pass_at_k, pass_ks, summarise

MATH500 = Path(__file__).parent / "fixtures" / "data" / "math500.jsonl"


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """The probability that k samples drawn without replacement from n (c correct) contain a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_equals_brute_force_combinatorics() -> None:
    for n in range(1, 7):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_hand_values_and_errors() -> None:
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 − C(3,2)/C(4,2) = 1 − 3/6
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is c/n
    assert pass_at_k(5, 0, 5) == 0.0 and pass_at_k(5, 1, 5) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)
    assert pass_ks(1) == [1] and pass_ks(4) == [1, 2, 4] and pass_ks(6) == [1, 2, 4, 6]


def math500() -> list[Problem]:
    # 4 problems: Prealgebra L1, Prealgebra L2, Algebra L2, Precalculus L2
    return load_problems("math500", source=str(MATH500))


def scripted(hits_by_id: dict[str, int]):  # type: ignore[no-untyped-def]
    """A policy whose first ``hits`` of the k samples of each problem are right and the rest wrong."""

    def generate(problems: list[Problem], k: int) -> list[str]:
        texts = []
        for q in problems:
            h = hits_by_id[q.id]
            texts += [
                f"So the answer is $\\boxed{{{q.answer}}}$." if j < h else "So the answer is $\\boxed{999}$."
                for j in range(k)
            ]
        return texts

    return generate


def test_known_correct_and_known_wrong_policies() -> None:
    problems = math500()
    right = evaluate("math500", problems, scripted({q.id: 3 for q in problems}), k=3, batch_size=3)
    wrong = evaluate("math500", problems, scripted({q.id: 0 for q in problems}), k=3, batch_size=3)
    assert (right.avg_at_k, right.pass_at_k, right.num_problems, right.num_samples) == (1.0, 1.0, 4, 12)
    assert (wrong.avg_at_k, wrong.pass_at_k) == (0.0, 0.0)
    assert all(b.avg_at_k == 1.0 for b in right.breakdown.values())


def test_mixed_policy_hand_computed() -> None:
    problems = math500()
    hits = dict(zip([q.id for q in problems], [4, 2, 1, 0], strict=True))
    r = evaluate("math500", problems, scripted(hits), k=4, batch_size=2)
    assert r.per_problem == hits
    assert r.avg_at_k == pytest.approx(7 / 16)  # (4+2+1+0) correct of 16 samples
    assert r.pass_at[1] == pytest.approx(7 / 16)  # mean c/n = (1 + .5 + .25 + 0) / 4
    # pass@2 per problem 1 − C(n−c,2)/C(4,2): 1, 1 − 1/6, 1 − 3/6, 0  -> mean (1 + 5/6 + 1/2) / 4 = 7/12
    assert r.pass_at[2] == pytest.approx(7 / 12)
    assert r.pass_at_k == pytest.approx(3 / 4)  # any correct: 3 of 4 problems
    b = r.breakdown
    assert set(b) == {"subject=Prealgebra", "subject=Algebra", "subject=Precalculus", "level=1", "level=2"}
    assert (b["subject=Prealgebra"].num_problems, b["subject=Prealgebra"].avg_at_k) == (2, pytest.approx(6 / 8))
    assert (b["subject=Precalculus"].avg_at_k, b["subject=Precalculus"].pass_at_k) == (0.0, 0.0)
    assert b["level=2"].avg_at_k == pytest.approx(3 / 12)  # problems 2, 3, 4 have 2 + 1 + 0 of 12
    assert b["level=2"].pass_at_k == pytest.approx(2 / 3)
    table = format_table([r])
    assert "math500" in table and "subject=Precalculus" in table and "0.438" in table


def test_summarise_validates_lengths_and_handles_no_problems() -> None:
    with pytest.raises(ValueError):
        summarise("x", [Problem(id="a", prompt="p", answer="1")], [1.0], k=2)
    empty: EvalResult = summarise("x", [], [], k=2)
    assert empty.num_problems == 0 and math.isnan(empty.avg_at_k) and math.isnan(empty.pass_at_k)


def test_evaluate_rejects_a_generator_returning_the_wrong_count() -> None:
    problems = math500()[:2]
    with pytest.raises(ValueError, match="returned 1 texts"):
        evaluate("x", problems, lambda qs, k: ["only one"], k=1)
