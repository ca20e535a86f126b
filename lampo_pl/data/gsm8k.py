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

from lampo_pl.data.record import Problem
from lampo_pl.data.sources import BadRowError, OnBadRow, Row, convert_rows, read_rows, required_text

HUB_ID = "openai/gsm8k"
CONFIG = "main"
SPLIT = "train"
CALCULATOR = re.compile(r"<<[^>]*>>")


def split_answer(text: str) -> tuple[str, str]:
    """``(solution, final_answer)`` from a GSM8K ``answer`` field; ``BadRowError`` without ``####``."""
    solution, marker, final = text.rpartition("####")
    final = final.strip().replace(",", "")
    if not marker or not final:
        raise BadRowError("malformed field 'answer': no final answer after '####'")
    return CALCULATOR.sub("", solution).strip(), final


def to_problem(row: Row, index: int, split: str = SPLIT) -> Problem:
    """One GSM8K row as a ``Problem`` (id: ``gsm8k-<split>-<row index>``; the set has no ids)."""
    solution, answer = split_answer(required_text(row, "answer"))
    return Problem(
        id=f"gsm8k-{split}-{index}",
        prompt=required_text(row, "question"),
        answer=answer,
        solution=solution,
        metadata={"source": "gsm8k"},
    )


def load(
    source: str | None = None,
    *,
    split: str | None = None,
    limit: int | None = None,
    on_bad_row: OnBadRow = "error",
    seed: int = 0,
) -> list[Problem]:
    """Load GSM8K from the Hub (default: ``train``) or a local file; ``seed`` is unused."""
    source, split = source or HUB_ID, split or SPLIT
    rows = read_rows(source, config=CONFIG, split=split)

    def convert(row: Row, index: int) -> Problem:
        return to_problem(row, index, split)

    return convert_rows(rows, convert, source=source, limit=limit, on_bad_row=on_bad_row)
