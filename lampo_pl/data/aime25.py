r"""AIME 2025: the 30 problems of the 2025 AIME I and II; every answer is an integer 0-999.

Source: https://huggingface.co/datasets/math-ai/aime25, split ``test``, columns
``problem, answer, id`` (no solutions, so the semantic-density reward is off for this set).
The other common copy, https://huggingface.co/datasets/opencompass/AIME2025, names the question
``question`` and keeps AIME I and II in two configs; passing its id reads both configs in order.
Either column name is accepted, and a row without an id gets its row index.

Sample row:
    problem:  "Find the sum of all integer bases $b>9$ for which $17_{b}$ is a divisor of $97_{b}$."
    answer:   "70"
    id:       "0"
"""

from __future__ import annotations

from lampo_pl.data.benchmark import Benchmark, RowInfo
from lampo_pl.data.record import Problem
from lampo_pl.data.sources import Row, optional_text, required_text


def to_problem(row: Row, at: RowInfo) -> Problem:
    """One AIME 2025 row as a ``Problem`` (id: ``aime25-<id>``, or the row index without an id)."""
    return Problem(
        id=f"aime25-{optional_text(row, 'id') or at.index}",
        prompt=required_text(row, "problem", "question"),
        answer=required_text(row, "answer"),
        solution=optional_text(row, "solution"),
        metadata={"source": "aime25"},
    )


BENCHMARK = Benchmark(
    name="aime25",
    source="math-ai/aime25",
    split="test",
    to_problem=to_problem,
    # Hub copies that split the year into one config per exam.
    configs={"opencompass/AIME2025": ("AIME2025-I", "AIME2025-II")},
)
