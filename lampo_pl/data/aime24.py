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

from lampo_pl.data.benchmark import Benchmark, RowInfo
from lampo_pl.data.record import Problem
from lampo_pl.data.sources import Row, optional_text, required_text


def to_problem(row: Row, at: RowInfo) -> Problem:
    """One AIME 2024 row as a ``Problem`` (id: ``aime24-<id>``, or the row index without an id)."""
    return Problem(
        id=f"aime24-{optional_text(row, 'id') or at.index}",
        prompt=required_text(row, "problem", "question"),
        answer=required_text(row, "answer"),
        solution=optional_text(row, "solution"),
        metadata={"source": "aime24", "year": optional_text(row, "year"), "url": optional_text(row, "url")},
    )


BENCHMARK = Benchmark(name="aime24", source="HuggingFaceH4/aime_2024", split="train", to_problem=to_problem)
