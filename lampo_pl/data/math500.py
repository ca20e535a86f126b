r"""MATH-500: the 500 MATH test problems OpenAI held out in "Let's Verify Step by Step" (PRM800K).

Source: https://huggingface.co/datasets/HuggingFaceH4/MATH-500, split ``test``, columns
``problem, solution, answer, subject, level, unique_id`` (``level`` is an integer 1-5).
The reference answer is the ``answer`` column, which the dataset's authors took from the last
``\boxed{}`` of the solution; it is used as is (math-verify judges equivalence).

Sample row:
    problem:   "Convert the point $(0,3)$ in rectangular coordinates to polar coordinates.  ..."
    solution:  "... Therefore, the polar coordinates are $\boxed{\left( 3, \frac{\pi}{2} \right)}.$"
    answer:    "\left( 3, \frac{\pi}{2} \right)"
    subject:   "Precalculus", level: 2, unique_id: "test/precalculus/807.json"
"""

from __future__ import annotations

from lampo_pl.data.benchmark import Benchmark, RowInfo
from lampo_pl.data.record import Problem
from lampo_pl.data.sources import Row, optional_text, required_text


def to_problem(row: Row, at: RowInfo) -> Problem:
    """One MATH-500 row as a ``Problem`` (id: ``unique_id``)."""
    return Problem(
        id=required_text(row, "unique_id"),
        prompt=required_text(row, "problem"),
        answer=required_text(row, "answer"),
        solution=optional_text(row, "solution"),
        metadata={
            "source": "math500",
            "subject": optional_text(row, "subject"),
            "level": optional_text(row, "level"),
        },
    )


BENCHMARK = Benchmark(name="math500", source="HuggingFaceH4/MATH-500", split="test", to_problem=to_problem)
