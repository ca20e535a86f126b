r"""CHAMP: 270 competition-level math problems with final answers and step-by-step solutions.

Source: the ``champ-dataset`` package (MIT; Mao et al. 2024, "CHAMP: A Competition-level Dataset
for Fine-Grained Analyses of LLMs' Mathematical Reasoning Capabilities", arXiv 2401.06961),
file ``champ_dataset/dataset_files/v0.json``, read directly (the package's own module needs
``natsort``, which the ``--no-deps`` install lacks). It ships offline, so it is this project's
real competition-math evaluation set when no Hub is reachable. Mapping from ``problems[<id>]``:

    identifier          -> Problem.id                  ("P_Combinatorics_1")
    _text               -> Problem.prompt              (``_raw_text`` without its ``@@`` math marks)
    _answer             -> Problem.answer              ("239", "1/(n+1)", "x=2, y=1", "No")
    solution.steps[]._text, one per line -> Problem.solution
    category            -> metadata["category"]        (Number-Theory 80, Inequality 50,
                                                         Polynomial 50, Sequence 50, Combinatorics 40)

About a quarter of the answers are expressions, tuples or Yes/No rather than numbers; they are
graded by math-verify like any other answer. The hints and model transcripts are not used.

Sample problem:
    "Let a string consist of digit 1, 2, 3. How many such strings of length 6 have adjacent digit
     differing by less than or equal to 1?"   answer "239"
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path

from lampo_pl.data.benchmark import Benchmark, RowInfo
from lampo_pl.data.record import Problem
from lampo_pl.data.sources import BadRowError, Row, optional_text, required_text

PACKAGE_FILE = "dataset_files/v0.json"


def default_path() -> str:
    """``v0.json`` inside the installed ``champ-dataset`` package, found without importing it."""
    spec = importlib.util.find_spec("champ_dataset")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the champ-dataset package is not installed: pip install --no-deps champ-dataset")
    return str(Path(spec.origin).parent / PACKAGE_FILE)


def solution_text(row: Row) -> str:
    """The solution steps' plain texts, one per line."""
    solution = row.get("solution")
    steps = solution.get("steps") if isinstance(solution, Mapping) else None
    if not isinstance(steps, list) or not steps:
        raise BadRowError("malformed field 'solution': expected {'steps': [{'_text': ...}, ...]}")
    return "\n".join(required_text(step, "_text") for step in steps)


def to_problem(row: Row, at: RowInfo) -> Problem:
    """One CHAMP problem as a ``Problem`` (id: its ``identifier``)."""
    return Problem(
        id=required_text(row, "identifier"),
        prompt=required_text(row, "_text"),
        answer=required_text(row, "_answer"),
        solution=solution_text(row),
        metadata={"source": "champ", "category": optional_text(row, "category")},
    )


# A JSON document whose "problems" maps each identifier to its record; there is no split.
BENCHMARK = Benchmark(name="champ", source=default_path, split="-", field="problems", to_problem=to_problem)
