"""Math correctness reward r_out ∈ {0, 1} (ALGORITHMS.md, "Rewards").

How it differs from calling math-verify on the raw response, and why:
1. The final value is extracted by `lampo_pl.rewards.extraction` (last ``\\boxed{}`` first, then
   anchored statements, then a bare answer) and only that value is parsed: math-verify's loose
   search grades echoes of the question as correct (ENVIRONMENT.md, "Pitfalls seen").
2. Values that restate unevaluated arithmetic ("7 + 7") are graded 0 (the echo rule).
3. Every (value, reference) pair is bounded in time by a killable worker process
   (`lampo_pl.rewards.verifier`); a timeout, a parse failure or any error gives 0 and is counted,
   and nothing raises into the training loop except a caller bug (batches of different lengths).
4. Equivalence is math-verify's ``verify(gold, pred)``: numbers to 6 decimals, ``\\frac``/``3/4``/
   ``0.75`` alike, units and ``\\text{}`` stripped, percentages as fractions (``50\\%`` = 0.5 =
   50), degrees dropped (``30^\\circ`` = 30), comma lists are sets (``2, 3`` = ``3,2``) while
   parenthesised pairs are ordered intervals/tuples (``(2,3)`` ≠ ``(3,2)``).
Identical (value, reference) pairs within one call are verified once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from lampo_pl.rewards.extraction import extract_math_answer, is_echo
from lampo_pl.rewards.inputs import as_text, check_lengths
from lampo_pl.rewards.verifier import MathVerifier, shared_verifier

logger = logging.getLogger(__name__)

GradeStatus = Literal["correct", "wrong", "no_answer", "echo", "parse_failure", "timeout", "error"]
# Longer "final values" are not answers (a whole derivation inside \boxed{}); not worth a parse.
MAX_VALUE_CHARS = 1000


@dataclass(frozen=True)
class MathGrades:
    """Per-response math grades; every list has one entry per response ([N]).

    Attributes:
        scores: 1.0 when the extracted value is equivalent to the reference, else 0.0.
        extracted: The final value each response states, ``None`` when it states none.
        status: Why each score is what it is: ``correct``, ``wrong``, ``no_answer`` (nothing
            extracted), ``echo`` (unevaluated arithmetic, see `extraction.is_echo`),
            ``parse_failure`` (math-verify could not read the value or the reference),
            ``timeout`` (verification ran past ``timeout_s``), ``error`` (anything else).
    """

    scores: list[float]
    extracted: list[str | None]
    status: list[GradeStatus]

    @property
    def n_timeout(self) -> int:
        return self.status.count("timeout")

    @property
    def n_parse_failure(self) -> int:
        return self.status.count("parse_failure")

    @property
    def n_no_answer(self) -> int:
        return self.status.count("no_answer")

    @property
    def n_echo(self) -> int:
        return self.status.count("echo")

    @property
    def n_error(self) -> int:
        return self.status.count("error")

    def diagnostics(self) -> dict[str, float]:
        """Counts for the training logs."""
        return {
            "math_timeouts": float(self.n_timeout),
            "math_parse_failures": float(self.n_parse_failure),
            "math_no_answer": float(self.n_no_answer),
            "math_echoes": float(self.n_echo),
            "math_errors": float(self.n_error),
        }


def grade_math(
    responses: Sequence[str],
    answers: Sequence[str],
    *,
    timeout_s: float = 5.0,
    verifier: MathVerifier | None = None,
) -> MathGrades:
    """Grade each response against its reference answer (module docstring).

    Args:
        responses: Generated responses, possibly with a ``<think>`` block.
        answers: Reference final answers, one per response (``Problem.answer``).
        timeout_s: Time allowed to verify one distinct (value, reference) pair. A call takes at
            most about ``timeout_s`` × distinct pairs, plus ~1.3 s per worker restart.
        verifier: The worker to use; default the process-wide `shared_verifier`.

    Raises:
        ValueError: ``responses`` and ``answers`` differ in length.
    """
    check_lengths(responses, answers, "responses", "answers")
    try:
        return _grade(responses, answers, timeout_s, verifier or shared_verifier())
    except Exception:  # a grader bug must cost a batch of rewards, never a training run
        logger.exception("math grading failed; the whole batch is graded 0")
        n = len(responses)
        return MathGrades([0.0] * n, [None] * n, ["error"] * n)


def _grade(responses: Sequence[str], answers: Sequence[str], timeout_s: float, verifier: MathVerifier) -> MathGrades:
    extracted = [extract_math_answer(as_text(response)).value for response in responses]
    references = [as_text(answer).strip() for answer in answers]
    status: list[GradeStatus] = ["error"] * len(responses)
    pending: dict[tuple[str, str], list[int]] = {}  # (value, reference) -> response indices
    for i, (value, reference) in enumerate(zip(extracted, references, strict=True)):
        if value is None:
            status[i] = "no_answer"
        elif is_echo(value, reference):
            status[i] = "echo"
        elif not reference or max(len(value), len(reference)) > MAX_VALUE_CHARS:
            status[i] = "parse_failure"
        else:
            pending.setdefault((value, reference), []).append(i)
    results = verifier.verify(list(pending), timeout_s)
    for indices, result in zip(pending.values(), results, strict=True):
        for i in indices:
            status[i] = result
    scores = [1.0 if s == "correct" else 0.0 for s in status]
    return MathGrades(scores, extracted, status)


def math_reward(responses: Sequence[str], answers: Sequence[str]) -> list[float]:
    """1.0 per response whose final answer is equivalent to its reference, else 0.0."""
    return grade_math(responses, answers).scores
