r"""MATH (Hendrycks et al. 2021) training split: 7,500 competition problems with worked solutions.

Source: https://huggingface.co/datasets/DigitalLearningGmbH/MATH-lighteval (default; config
``default``, splits ``train``/``test``) or https://huggingface.co/datasets/EleutherAI/hendrycks_math
(the same rows in seven per-subject configs, read in turn when that id is given). Columns:
``problem, level ("Level 1".."Level 5"), type (subject), solution``. There is no answer column:
the answer is the content of the solution's LAST ``\boxed{...}`` (or ``\fbox{...}``), braces
matched so nested groups survive (``\boxed{\frac{1}{2}}`` -> ``\frac{1}{2}``) — the convention
of the dataset paper's ``last_boxed_only_string`` and of MATH-500's ``answer`` column.
MATH-500 comes from the *test* split, so training on this split does not leak it.

Sample row:
    problem:  "What is the value of $\sqrt{36 \times \sqrt{16}}$?"
    level:    "Level 1",  type: "Prealgebra"
    solution: "Calculating from the inside out, $$\sqrt{36 \times \sqrt{16}} = \sqrt{36 \times 4}
               = \sqrt{144} = \boxed{12}.$$"
    -> answer "12"
"""

from __future__ import annotations

from lampo_pl.data.benchmark import Benchmark, RowInfo
from lampo_pl.data.record import Problem
from lampo_pl.data.sources import BadRowError, Row, optional_text, required_text
from lampo_pl.rewards.extraction import last_boxed  # one box rule for references and responses (issue 14)


def to_problem(row: Row, at: RowInfo) -> Problem:
    """One MATH row as a ``Problem`` (id: ``math-<split>-<row index>``; the set has no ids)."""
    solution = required_text(row, "solution")
    answer = last_boxed(solution)
    if not answer:
        raise BadRowError("malformed field 'solution': no complete \\boxed{} final answer")
    level = optional_text(row, "level")
    return Problem(
        id=f"math-{at.split}-{at.index}",
        prompt=required_text(row, "problem"),
        answer=answer,
        solution=solution,
        metadata={
            "source": "math_train",
            "subject": optional_text(row, "type", "subject"),
            "level": level.removeprefix("Level ") if level else None,
        },
    )


BENCHMARK = Benchmark(
    name="math_train",
    source="DigitalLearningGmbH/MATH-lighteval",
    split="train",
    to_problem=to_problem,
    # The same rows in seven per-subject configs, read in turn as one stream.
    configs={
        "EleutherAI/hendrycks_math": (
            "algebra",
            "counting_and_probability",
            "geometry",
            "intermediate_algebra",
            "number_theory",
            "prealgebra",
            "precalculus",
        )
    },
)
