r"""GSM8K: 8.5k grade-school math word problems (7,473 train, 1,319 test) with worked solutions.

Source: https://huggingface.co/datasets/openai/gsm8k, config ``main``, splits ``train`` and
``test``, columns ``question, answer``. The ``answer`` column is the worked solution, with
calculator annotations ``<<48/2=24>>``, then ``#### <final answer>``. As in the dataset paper
(Cobbe et al. 2021) and nanochat's ``tasks/gsm8k.py``, the final answer is the text after
``####`` (thousands separators removed); the reference solution is the text before it with the
annotations removed.

Sample row:
    question: "Natalia sold clips to 48 of her friends in April, and then she sold half as many
               clips in May. How many clips did Natalia sell altogether in April and May?"
    answer:   "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72
               clips altogether in April and May.\n#### 72"
    -> answer "72", solution "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 ..."
"""

from __future__ import annotations

import re

from lampo_pl.data.benchmark import Benchmark, RowInfo
from lampo_pl.data.record import Problem
from lampo_pl.data.sources import BadRowError, Row, required_text

CALCULATOR = re.compile(r"<<[^>]*>>")


def split_answer(text: str, column: str = "answer") -> tuple[str, str]:
    """``(solution, final_answer)`` from a GSM8K ``answer`` field; ``BadRowError`` without ``####``."""
    solution, marker, final = text.rpartition("####")
    final = final.strip().replace(",", "")
    if not marker or not final:
        raise BadRowError(f"malformed field {column!r}: no final answer after '####'")
    return CALCULATOR.sub("", solution).strip(), final


def to_problem(row: Row, at: RowInfo) -> Problem:
    """One GSM8K row as a ``Problem`` (id: ``gsm8k-<split>-<row index>``; the set has no ids)."""
    solution, answer = split_answer(required_text(row, "answer"))
    return Problem(
        id=f"gsm8k-{at.split}-{at.index}",
        prompt=required_text(row, "question"),
        answer=answer,
        solution=solution,
        metadata={"source": "gsm8k"},
    )


BENCHMARK = Benchmark(name="gsm8k", source="openai/gsm8k", config="main", split="train", to_problem=to_problem)
