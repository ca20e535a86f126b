"""Math correctness: the graded table, echoes, timeouts, parse failures, and never raising."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lampo_pl.rewards import MathGrades, MathVerifier, extract_math_answer, grade_math, math_reward
from lampo_pl.rewards.extraction import is_unevaluated_arithmetic, last_boxed

TABLE_PATH = Path(__file__).parent / "fixtures" / "rewards" / "math_graded.jsonl"
TABLE = [json.loads(line) for line in TABLE_PATH.read_text().splitlines() if line.strip()]
# Never finishes: sympy computes (10^7)! in C, where no signal can interrupt it.
PATHOLOGICAL = "\\boxed{(10^{7})!}"


@pytest.fixture(scope="module")
def table_grades() -> MathGrades:
    # One batched call for the whole table: one worker start, and the batching path is exercised.
    return grade_math([row["response"] for row in TABLE], [row["answer"] for row in TABLE])


@pytest.fixture
def private_verifier() -> Iterator[MathVerifier]:
    verifier = MathVerifier()
    yield verifier
    verifier.close()


def test_table_is_large_and_balanced() -> None:
    assert len(TABLE) >= 60
    assert sum(row["expected"] for row in TABLE) >= 30
    assert sum(1 - row["expected"] for row in TABLE) >= 25


@pytest.mark.parametrize("row", range(len(TABLE)), ids=[row["why"] for row in TABLE])
def test_graded_table(table_grades: MathGrades, row: int) -> None:
    case = TABLE[row]
    assert table_grades.scores[row] == case["expected"], (case, table_grades.extracted[row])
    if "status" in case:
        assert table_grades.status[row] == case["status"]


def test_table_diagnostics_count_statuses(table_grades: MathGrades) -> None:
    expected_echoes = sum(row.get("status") == "echo" for row in TABLE)
    assert table_grades.n_echo == expected_echoes > 0
    assert table_grades.n_timeout == table_grades.n_error == 0
    assert table_grades.diagnostics()["math_echoes"] == expected_echoes


@pytest.mark.parametrize(
    ("response", "value"),
    [
        ("the answer to 21 - 11 is 10", "10"),
        ("\\boxed{\\frac{a}{\\sqrt{b}}} tail", "\\frac{a}{\\sqrt{b}}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\boxed{\\boxed{5}}", "5"),
        ("Final answer: $x = 5$", "x = 5"),
        ("7 + 7", "7 + 7"),
        ("No number here at all", None),
    ],
)
def test_extraction_takes_the_final_stated_value(response: str, value: str | None) -> None:
    assert extract_math_answer(response).value == value


def test_last_boxed_handles_unbalanced_and_escaped_braces() -> None:
    assert last_boxed("\\boxed{\\left\\{ x \\right.}") == "\\left\\{ x \\right."
    assert last_boxed("\\boxed{1} \\boxed{2") is None  # the last box counts; unclosed = truncated
    assert last_boxed("so $\\boxed 5$.") == "5" and last_boxed("\\fbox{7}") == "7"
    assert last_boxed("no box") is None


@pytest.mark.parametrize(
    ("value", "unevaluated"),
    [
        ("7+7", True),
        ("21 - 11", True),
        ("3 \\cdot 4", True),
        ("(2)(3)", False),
        ("-5", False),
        ("3/4", False),
        ("2^{10}", False),
        ("3 \\times 10^{8}", False),
        ("7 + 7 = 14", False),
        ("x + 1", False),
        ("\\sqrt{2} + 1", False),
        ("1/2 + 1/3", True),
    ],
)
def test_unevaluated_arithmetic(value: str, unevaluated: bool) -> None:
    assert is_unevaluated_arithmetic(value) is unevaluated


def test_math_reward_is_the_scores() -> None:
    assert math_reward(["\\boxed{2}", "\\boxed{3}"], ["2", "2"]) == [1.0, 0.0]


def test_length_mismatch_names_both_lengths() -> None:
    with pytest.raises(ValueError, match=r"3 responses and 2 answers"):
        grade_math(["a", "b", "c"], ["1", "2"])


def test_timeout_gives_zero_is_counted_and_is_bounded(private_verifier: MathVerifier) -> None:
    responses = ["\\boxed{5}", PATHOLOGICAL, "\\boxed{6}", PATHOLOGICAL.replace("7", "8")]
    private_verifier.verify([("1", "1")], timeout_s=5.0)  # start the worker outside the clock
    start = time.monotonic()
    grades = grade_math(responses, ["5", "5", "6", "5"], timeout_s=0.5, verifier=private_verifier)
    elapsed = time.monotonic() - start
    assert grades.scores == [1.0, 0.0, 1.0, 0.0]
    assert grades.status == ["correct", "timeout", "correct", "timeout"]
    assert grades.n_timeout == 2 and grades.diagnostics()["math_timeouts"] == 2
    # 2 × 0.5 s of timeouts + 1 worker restart (~1.3 s on this machine), with slack; the worker
    # killed by the last timeout is restarted lazily, by the next call.
    assert elapsed < 15.0
    assert private_verifier.restarts == 1


def test_timeout_from_a_non_main_thread(private_verifier: MathVerifier) -> None:
    # math-verify's own signal.alarm raises ValueError outside the main thread; ours must not.
    results: list[MathGrades] = []
    worker = threading.Thread(
        target=lambda: results.append(
            grade_math([PATHOLOGICAL, "\\boxed{3}"], ["1", "3"], timeout_s=0.5, verifier=private_verifier)
        )
    )
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert results[0].status == ["timeout", "correct"]


def test_worker_killed_from_outside_is_replaced(private_verifier: MathVerifier) -> None:
    assert grade_math(["\\boxed{1}"], ["1"], verifier=private_verifier).scores == [1.0]
    proc = private_verifier._proc
    assert proc is not None
    proc.kill()
    proc.wait()
    # The dead worker costs at most the pair in flight (an error), never the batch.
    grades = grade_math(["\\boxed{1}", "\\boxed{2}"], ["1", "2"], verifier=private_verifier)
    assert grades.n_error <= 1 and grades.scores[1] == 1.0
    assert grade_math(["\\boxed{1}"], ["1"], verifier=private_verifier).scores == [1.0]


def test_a_worker_that_cannot_start_grades_zero_without_raising(
    monkeypatch: pytest.MonkeyPatch, private_verifier: MathVerifier
) -> None:
    monkeypatch.setattr("lampo_pl.rewards.verifier._WORKER_SCRIPT", Path(os.devnull))
    grades = grade_math(["\\boxed{1}", "\\boxed{2}"], ["1", "2"], verifier=private_verifier)
    assert grades.scores == [0.0, 0.0] and grades.n_error == 2


def test_parse_failures_are_counted() -> None:
    responses = ["\\boxed{)(}", "\\boxed{\\frac{}}", "\\boxed{5}", "\\boxed{" + "1" * 2000 + "}", "\\boxed{4}"]
    grades = grade_math(responses, ["1", "1", ")(", "1", ""])
    assert grades.scores == [0.0] * 5
    assert grades.status == ["parse_failure"] * 5
    assert grades.diagnostics()["math_parse_failures"] == 5


def test_nothing_raises_on_garbage() -> None:
    garbage = [
        None,
        123,
        "",
        "   ",
        "\\boxed{",
        "}}}}{{{{",
        "\x00\x01",
        "\ud800 lone surrogate \\boxed{\ud800}",
        "$$$$",
        "\\boxed{" * 20000,
        "a" * 1_000_000,
        "\\boxed{" + "{" * 3000 + "1" + "}" * 3000 + "}",
        "The answer is " + "(" * 500 + "1" + ")" * 500,
        "\\boxed{\\frac{1}{" * 200 + "}" * 400,
    ]
    start = time.monotonic()
    grades = grade_math(garbage, ["1"] * len(garbage), timeout_s=2.0)  # type: ignore[arg-type]
    assert len(grades.scores) == len(garbage)
    assert all(score in (0.0, 1.0) for score in grades.scores)
    assert time.monotonic() - start < 30.0


def test_internal_bug_grades_the_batch_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(response: str) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr("lampo_pl.rewards.math_grading.extract_math_answer", broken)
    grades = grade_math(["\\boxed{1}"], ["1"])
    assert grades.scores == [0.0] and grades.status == ["error"]


def test_identical_pairs_are_verified_once(private_verifier: MathVerifier) -> None:
    calls: list[int] = []
    verify = private_verifier.verify

    def counting(pairs: list[tuple[str, str]], timeout_s: float) -> list[str]:
        calls.append(len(pairs))
        return verify(pairs, timeout_s)

    private_verifier.verify = counting  # type: ignore[method-assign]
    grades = grade_math(["\\boxed{2}"] * 8 + ["The answer is 2."] * 8, ["2"] * 16, verifier=private_verifier)
    assert grades.scores == [1.0] * 16
    assert calls == [1]  # both forms extract "2": one (value, reference) pair


# Issue 25 item 9: unboxed answers. (response, extracted value, rule). The published graders' readings of
# these are in the extraction module's docstring; a last-number rule (Qwen2.5-Math's fallback, lm-eval's
# gsm8k flexible-extract) would read 9, 20, 7 and 3 in the first four rows.
UNBOXED = [
    ("6 + 9 = 15, which is the sum of both 6 and 9.", "15", "equation"),
    ("10 + 20 = 20.", "20", "equation"),  # graded on what it states: its result, not its (wrong) arithmetic
    ("Therefore the result is 7.", "7", "anchor"),
    ("We get x = 12 after dividing by 3.", "12", "equation"),
    ("First 3 * 4 = 12, then 12 + 5 = 17 apples in total.", "17", "equation"),
    ("So $6 + 9 = 15$ and we are done", "15", "equation"),
    ("Hence $x = \\frac{1}{2}$ is the root", "\\frac{1}{2}", "equation"),
    ("She pays 3 * 5 = $15 for them.", "15", "equation"),
    ("The total is 1,000 + 234 = 1,234 marbles", "1234", "equation"),
    ("3 + 4 = 7. The answer is 8.", "8", "anchor"),  # an answer statement beats an equation
    ("3 + 4 = 7, so the answer is \\boxed{7}. Then 1 + 1 = 2", "7", "boxed"),  # a box beats both
    ("The final result of 3 + 4 is 7", "7", "anchor"),
    ("The result of 21 - 11.", None, None),  # no statement of a value
    ("We need x >= 3 and y <= 4 here, no more.", None, None),  # inequalities are not equations
    ("Compare a == b to decide", None, None),
    ("6 + 9 = 6 + 9", "6 + 9", "equation"),  # an echo: graded 0 by the echo rule
    ("7 + 7 = 14", "14", "equation"),
]


@pytest.mark.parametrize(("response", "value", "source"), UNBOXED, ids=[row[0][:40] for row in UNBOXED])
def test_unboxed_answers_prefer_a_statement_or_final_equation(response: str, value: str | None,
                                                              source: str | None) -> None:
    assert extract_math_answer(response) == (value, source)


def test_unboxed_answers_are_graded_as_the_issue_asks() -> None:
    """The demo's own samples (issue 25 item 9), through math-verify."""
    responses = [row[0] for row in UNBOXED[:4]] + ["6 + 9 = 6 + 9"]
    grades = grade_math(responses, ["15", "20", "7", "12", "15"])
    assert grades.scores == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert grades.status[-1] == "echo"
    from lampo_pl.rewards.format import format_reward

    assert format_reward([responses[0], "6 + 9 = \\boxed{15}"], thinking=False) == [0.0, 1.0]  # \boxed{} still pays
