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

from lampo_pl.data.record import Problem
from lampo_pl.data.sources import (
    BadRowError,
    OnBadRow,
    Row,
    convert_rows,
    optional_text,
    read_rows,
    required_text,
)
from lampo_pl.rewards.extraction import last_boxed  # one box rule for references and responses (issue 14)

HUB_ID = "DigitalLearningGmbH/MATH-lighteval"
SPLIT = "train"
CONFIGS: dict[str, tuple[str, ...]] = {
    "EleutherAI/hendrycks_math": (
        "algebra",
        "counting_and_probability",
        "geometry",
        "intermediate_algebra",
        "number_theory",
        "prealgebra",
        "precalculus",
    )
}


def to_problem(row: Row, index: int, split: str = SPLIT) -> Problem:
    """One MATH row as a ``Problem`` (id: ``math-<split>-<row index>``; the set has no ids)."""
    solution = required_text(row, "solution")
    answer = last_boxed(solution)
    if not answer:
        raise BadRowError("malformed field 'solution': no complete \\boxed{} final answer")
    level = optional_text(row, "level")
    return Problem(
        id=f"math-{split}-{index}",
        prompt=required_text(row, "problem"),
        answer=answer,
        solution=solution,
        metadata={
            "source": "math_train",
            "subject": optional_text(row, "type", "subject"),
            "level": level.removeprefix("Level ") if level else None,
        },
    )


def load(
    source: str | None = None,
    *,
    split: str | None = None,
    limit: int | None = None,
    on_bad_row: OnBadRow = "error",
    seed: int = 0,
) -> list[Problem]:
    """Load MATH from the Hub (default: MATH-lighteval ``train``) or a local file; ``seed`` is unused."""
    source, split = source or HUB_ID, split or SPLIT
    rows = read_rows(source, config=CONFIGS.get(source), split=split)

    def convert(row: Row, index: int) -> Problem:
        return to_problem(row, index, split)

    return convert_rows(rows, convert, source=source, limit=limit, on_bad_row=on_bad_row)
