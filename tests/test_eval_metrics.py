"""avg@k, pass@k, maj@k and truncation: hand-computed values, a brute-force check, scripted samplers."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from lampo_pl.data.record import Problem
from lampo_pl.data.registry import load_problems
from lampo_pl.evaluation import (
    Graded,
    evaluate,
    format_table,
    majority_vote,
    pass_at_k,
    pass_ks,
    protocol,
    summarise,
)
from lampo_pl.rollout import SamplingParams
from lampo_pl.sampler import Completion

MATH500 = Path(__file__).parent / "fixtures" / "data" / "math500.jsonl"
PARAMS = SamplingParams(temperature=0.6, top_p=0.95, max_new_tokens=64)


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


def scripted(problems: Sequence[Problem], texts: dict[str, list[str]], truncated: dict[str, list[bool]] | None = None):  # type: ignore[no-untyped-def]
    """A ``Sampler`` that answers each problem's prompt with the given texts (and truncation flags)."""
    by_prompt = {q.prompt: q.id for q in problems}

    def sample(prompts: list[str], n: int, params: SamplingParams) -> list[list[Completion]]:
        out = []
        for prompt in prompts:
            pid = by_prompt[prompt]
            cut = (truncated or {}).get(pid, [False] * n)
            out.append([Completion(t, c, 10) for t, c in zip(texts[pid][:n], cut, strict=True)])
        return out

    return sample


def boxed(value: str) -> str:
    return f"So the answer is $\\boxed{{{value}}}$."


def hits_policy(problems: Sequence[Problem], hits: dict[str, int], k: int):  # type: ignore[no-untyped-def]
    """The first ``hits`` of the k samples of each problem are right and the rest wrong."""
    return scripted(problems, {q.id: [boxed(q.answer) if j < hits[q.id] else boxed("999") for j in range(k)]
                               for q in problems})


def run(problems: Sequence[Problem], sampler, k: int, batch_size: int | None = None):  # type: ignore[no-untyped-def]
    return evaluate(sampler, problems, [q.prompt for q in problems], k, PARAMS, name="math500", batch_size=batch_size)


def test_known_correct_and_known_wrong_policies() -> None:
    problems = math500()
    right = run(problems, hits_policy(problems, {q.id: 3 for q in problems}, 3), 3, batch_size=3)
    wrong = run(problems, hits_policy(problems, {q.id: 0 for q in problems}, 3), 3, batch_size=3)
    assert (right.avg_at_k, right.pass_at_k, right.maj_at_k, right.num_problems, right.num_samples) == (1, 1, 1, 4, 12)
    assert (wrong.avg_at_k, wrong.pass_at_k, wrong.maj_at_k) == (0.0, 0.0, 0.0)
    assert all(b.avg_at_k == 1.0 for b in right.breakdown.values())


def test_mixed_policy_hand_computed() -> None:
    problems = math500()
    hits = dict(zip([q.id for q in problems], [4, 2, 1, 0], strict=True))
    r = run(problems, hits_policy(problems, hits, 4), 4, batch_size=2)
    assert r.per_problem == hits
    assert r.avg_at_k == pytest.approx(7 / 16)  # (4+2+1+0) correct of 16 samples
    assert r.pass_at[1] == pytest.approx(7 / 16)  # mean c/n = (1 + .5 + .25 + 0) / 4
    # pass@2 per problem 1 − C(n−c,2)/C(4,2): 1, 1 − 1/6, 1 − 3/6, 0  -> mean (1 + 5/6 + 1/2) / 4 = 7/12
    assert r.pass_at[2] == pytest.approx(7 / 12)
    assert r.pass_at_k == pytest.approx(3 / 4)  # any correct: 3 of 4 problems
    # maj@4: 4/4 right wins; 2 right vs 2 × "999" ties -> the first seen (right) wins; 1 vs 3 and 0 lose.
    assert r.maj_at_k == pytest.approx(2 / 4)
    b = r.breakdown
    assert set(b) == {"subject=Prealgebra", "subject=Algebra", "subject=Precalculus", "level=1", "level=2"}
    assert (b["subject=Prealgebra"].num_problems, b["subject=Prealgebra"].avg_at_k) == (2, pytest.approx(6 / 8))
    assert (b["subject=Precalculus"].avg_at_k, b["subject=Precalculus"].pass_at_k) == (0.0, 0.0)
    assert b["level=2"].avg_at_k == pytest.approx(3 / 12)  # problems 2, 3, 4 have 2 + 1 + 0 of 12
    assert b["level=2"].pass_at_k == pytest.approx(2 / 3)
    table = format_table([r])
    assert "math500" in table and "subject=Precalculus" in table and "0.438" in table and "maj@k" in table


def test_majority_vote_uses_math_verify_equivalence_classes() -> None:
    (q,) = [Problem(id="half", prompt="What is 1/2 as a decimal?", answer="\\frac{1}{2}")]
    # By string, three different answers: the first ("3", wrong) would win. As values, 0.5 = 1/2 outvotes it.
    r = run([q], scripted([q], {"half": [boxed("3"), boxed("0.5"), boxed("\\frac{1}{2}")]}), 3)
    assert r.avg_at_k == pytest.approx(2 / 3) and r.maj_at_k == 1.0
    # Responses without an answer do not vote: one wrong answer beats two silences.
    silent = run([q], scripted([q], {"half": ["I am not sure.", boxed("3"), "Let me think"]}), 3)
    assert silent.maj_at_k == 0.0
    none = run([q], scripted([q], {"half": ["I am not sure.", "no", "Let me think"]}), 3)
    assert none.maj_at_k == 0.0 and none.avg_at_k == 0.0


def test_majority_vote_of_choice_letters() -> None:
    q = Problem(id="g", prompt="Which?", answer="B", kind="choice", choices=("w", "x", "y", "z"))
    right = run([q], scripted([q], {"g": ["\\boxed{A}", "Answer: (B)", "\\boxed{B}"]}), 3)
    assert right.avg_at_k == pytest.approx(2 / 3) and right.maj_at_k == 1.0
    wrong = run([q], scripted([q], {"g": ["\\boxed{C}", "\\boxed{B}", "Answer: C"]}), 3)
    assert wrong.avg_at_k == pytest.approx(1 / 3) and wrong.maj_at_k == 0.0


def test_majority_vote_ties_go_to_the_first_class() -> None:
    same = str.__eq__
    assert majority_vote(["a", "b", "b", "a"], same) == 0
    assert majority_vote([None, "b", "a", "a"], same) == 2
    assert majority_vote([None, None], same) is None
    # The class representative is its first member, whatever `same` says of later ones.
    assert majority_vote(["x", "y", "yy", "yyy"], lambda a, b: a[0] == b[0]) == 1


def test_truncated_fraction_is_reported() -> None:
    problems = math500()[:2]
    texts = {q.id: [boxed(q.answer), "<think> still thinking"] for q in problems}
    cut = {problems[0].id: [False, True], problems[1].id: [True, True]}
    r = run(problems, scripted(problems, texts, cut), 2)
    assert r.truncated == pytest.approx(3 / 4)
    assert r.avg_at_k == pytest.approx(2 / 4)  # a response cut inside <think> has no answer: 0


def test_grader_failures_are_counted_and_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sample the grader could not judge scores 0 (as in training), but the result says how many there were:
    a slow machine's cold worker must not pass silently for a worse policy."""
    import lampo_pl.evaluation as evaluation_mod
    from lampo_pl.rewards.math_grading import MathGrades

    problems = math500()[:2]
    texts = {q.id: [boxed(q.answer), boxed(q.answer)] for q in problems}
    failing = iter([["timeout", "correct"], ["error", "correct"]])

    def grade_math(texts: list[str], answers: list[str], timeout_s: float) -> MathGrades:
        status = next(failing)
        return MathGrades([float(s == "correct") for s in status], ["1"] * len(status), status)

    monkeypatch.setattr(evaluation_mod, "grade_math", grade_math)
    r = run(problems, scripted(problems, texts), 2)
    assert r.grader_failures == 2 and r.avg_at_k == pytest.approx(0.5)
    assert "grader failures (scored 0, not the model's doing): {'math500': 2}" in format_table([r])
    assert "grader failures" not in format_table([replace(r, grader_failures=0)])


def test_summarise_validates_lengths_and_handles_no_problems() -> None:
    with pytest.raises(ValueError):
        summarise("x", [Problem(id="a", prompt="p", answer="1")], Graded([[1.0]], [[False]], [1.0]), k=2)
    empty = summarise("x", [], Graded(), k=2)
    assert empty.num_problems == 0 and math.isnan(empty.avg_at_k) and math.isnan(empty.pass_at_k)
    assert math.isnan(empty.maj_at_k) and math.isnan(empty.truncated)


def test_evaluate_rejects_a_sampler_returning_the_wrong_count() -> None:
    problems = math500()[:2]
    with pytest.raises(ValueError, match="expected k=2"):
        run(problems, lambda prompts, n, params: [[Completion("x", False, 1)] for _ in prompts], 2)
    with pytest.raises(ValueError, match="1 groups for 2 problems"):
        run(problems, lambda prompts, n, params: [[Completion("x", False, 1)]], 1)


def test_published_protocols() -> None:
    for name in ("math500", "aime24", "aime25", "gpqa_diamond"):
        p = protocol(name)
        assert (p.max_new_tokens, p.temperature, p.top_p) == (32768, 0.6, 0.95)
    assert protocol("synthetic").max_new_tokens == 512
    assert protocol("someone_elses_set") == protocol("aime24")
