r"""GPQA-Diamond: 198 graduate-level multiple-choice questions in biology, physics and chemistry.

Source: https://huggingface.co/datasets/Idavidrein/gpqa (gated; accept its terms and log in),
config ``gpqa_diamond``, split ``train`` (its only split); the same table ships as
``gpqa_diamond.csv``. Columns used: ``Question``, ``Correct Answer``, ``Incorrect Answer 1..3``,
``Explanation`` (the reference solution), ``Record ID``, ``Subdomain``, ``High-level domain``.

The four choices are shuffled with a fixed per-question seed, so the correct letter is uniform
over A-D across questions yet identical for a question in every run, process and machine:
the seed is ``sha256("gpqa:<seed>:<Record ID>")`` (the question text when there is no Record ID),
never Python's per-process salted ``hash()``. The prompt lists the lettered choices as in
OpenAI's simple-evals; the answer is the correct letter.

Sample (an invented question in the dataset's shape):
    Question:        "Which particle mediates the electromagnetic interaction?"
    Correct Answer:  "The photon"      Incorrect Answer 1-3: "The gluon", "The W boson", "The graviton"
    -> prompt: "Which particle ...?\n\nA) The W boson\nB) The photon\nC) The graviton\nD) The gluon"
       answer: "B" (the letter depends on the Record ID)
"""

from __future__ import annotations

import hashlib
import random

from lampo_pl.data.benchmark import Benchmark, RowInfo
from lampo_pl.data.record import Problem
from lampo_pl.data.sources import Row, optional_text, required_text

LETTERS = "ABCD"
INCORRECT = ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


def choice_order(key: str, seed: int = 0) -> list[int]:
    """A permutation of ``range(4)``: position ``k`` shows original choice ``order[k]`` (0 = correct)."""
    digest = hashlib.sha256(f"gpqa:{seed}:{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big")).sample(range(4), 4)


def format_choices(question: str, choices: tuple[str, ...]) -> str:
    """The question followed by one ``X) choice`` line per letter."""
    lines = "\n".join(f"{letter}) {choice}" for letter, choice in zip(LETTERS, choices, strict=True))
    return f"{question}\n\n{lines}"


def to_problem(row: Row, at: RowInfo) -> Problem:
    """One GPQA row as a ``choice`` Problem with shuffled choices (id: the Record ID)."""
    question = required_text(row, "Question")
    original = (required_text(row, "Correct Answer"), *(required_text(row, name) for name in INCORRECT))
    record_id = optional_text(row, "Record ID")
    order = choice_order(record_id or question, at.seed)
    choices = tuple(original[k] for k in order)
    return Problem(
        id=record_id or f"gpqa-{at.index}",
        prompt=format_choices(question, choices),
        answer=LETTERS[order.index(0)],
        solution=optional_text(row, "Explanation"),
        kind="choice",
        choices=choices,
        metadata={
            "source": "gpqa_diamond",
            "subdomain": optional_text(row, "Subdomain"),
            "domain": optional_text(row, "High-level domain"),
        },
    )


BENCHMARK = Benchmark(
    name="gpqa_diamond", source="Idavidrein/gpqa", config="gpqa_diamond", split="train", to_problem=to_problem
)
