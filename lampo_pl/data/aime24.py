r"""AIME 2024: the 30 problems of the 2024 AIME I and II; every answer is an integer 0-999.

Source: https://huggingface.co/datasets/HuggingFaceH4/aime_2024 (taken from
AI-MO/aimo-validation-aime), split ``train`` (its only split), columns
``id (int64), problem, solution, answer (string), url, year``. An answer stored as a number
(other copies of the set, or a CSV read by pandas) is read as its integer text ("204").

Sample row:
    id: 60, year: "2024"
    problem:  "Every morning Aya goes for a $9$-kilometer-long walk and stops at a coffee shop
               afterwards. ... Find the number of minutes the walk takes her, including the
               $t$ minutes spent in the coffee shop."
    answer:   "204"
    url:      "https://artofproblemsolving.com/wiki/index.php/2024_AIME_I_Problems/Problem_1"
"""

from __future__ import annotations

from lampo_pl.data.record import Problem
from lampo_pl.data.sources import OnBadRow, Row, convert_rows, optional_text, read_rows, required_text

HUB_ID = "HuggingFaceH4/aime_2024"
SPLIT = "train"


def to_problem(row: Row, index: int) -> Problem:
    """One AIME 2024 row as a ``Problem`` (id: ``aime24-<id>``, or the row index without an id)."""
    return Problem(
        id=f"aime24-{optional_text(row, 'id') or index}",
        prompt=required_text(row, "problem", "question"),
        answer=required_text(row, "answer"),
        solution=optional_text(row, "solution"),
        metadata={"source": "aime24", "year": optional_text(row, "year"), "url": optional_text(row, "url")},
    )


def load(
    source: str | None = None,
    *,
    split: str | None = None,
    limit: int | None = None,
    on_bad_row: OnBadRow = "error",
    seed: int = 0,
) -> list[Problem]:
    """Load AIME 2024 from the Hub (default) or a local file; ``seed`` is unused (fixed order)."""
    source = source or HUB_ID
    rows = read_rows(source, split=split or SPLIT)
    return convert_rows(rows, to_problem, source=source, limit=limit, on_bad_row=on_bad_row)
