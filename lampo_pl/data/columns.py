r"""Your own data without a loader: a column mapping says which fields are what.

Any local file (.jsonl/.json/.parquet/.csv) or Hub dataset becomes a problem set when the config
names its columns, e.g. for a file with rows ``{"uid": "q1", "q": "What is 2+3?", "work": "2+3=5
#### 5"}``::

    data:
      train_set: my_sums                 # any name that is not a built-in set's
      train_source: data/my_sums.jsonl
      train_columns: {id: uid, question: q, answer: work, extract: gsm8k, solution: work}

-> ``Problem(id="q1", prompt="What is 2+3?", answer="5", solution="2+3=5", metadata={"source": "my_sums"})``.

The answer extractions are the built-in sets' own, so a file in their format reads as they do:
``gsm8k`` is GSM8K's (``gsm8k.split_answer``: the text after the last ``####``, commas removed;
Cobbe et al. 2021), ``boxed`` is MATH's (``rewards.extraction.last_boxed``: the content of the last
``\boxed{}``, braces matched; Hendrycks et al. 2021), ``as_is`` takes the column's text
(numbers as written, ``42.0`` -> ``"42"``). When ``solution`` names the answer column itself,
``gsm8k`` keeps the text before ``####`` without calculator annotations, as the GSM8K set does.
A bad row names the file, its line (or row) and the column, like the built-in sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from lampo_pl.data.benchmark import Benchmark, RowFunction, RowInfo
from lampo_pl.data.gsm8k import split_answer
from lampo_pl.data.record import Problem, ProblemKind
from lampo_pl.data.sources import BadRowError, Row, optional_text, required_text
from lampo_pl.rewards.extraction import last_boxed
from lampo_pl.rewards.inputs import RESERVED_ARGUMENTS

Extract = Literal["as_is", "gsm8k", "boxed"]
CHOICE_LETTERS = "ABCD"  # what the choice grader accepts (lampo_pl/rewards/choice.py)


@dataclass(frozen=True)
class ColumnMapping:
    r"""Which columns of your own data are the question, the answer, the solution and the id.

    Attributes:
        question: The column with the question, used as the prompt.
        answer: The column the reference answer is read from (see ``extract``).
        extract: How the answer is read from its column: ``as_is`` (the text), ``gsm8k`` (after
            the last ``####``, commas removed) or ``boxed`` (the content of the last ``\boxed{}``).
        solution: The column with a reference step-by-step solution (the density reward needs
            one), or ``None``. The answer column itself is allowed: with ``gsm8k`` it gives the
            text before ``####``.
        id: The column with a unique id per row; ``None`` numbers the rows ``<name>-<row>``
            (0-based, in reading order).
        metadata: Columns copied into the problem's metadata; ``subject`` and ``level`` also break
            evaluation results down.
        kind: ``math`` (graded by math-verify) or ``choice`` (the answer is a letter A-D and the
            question already lists the lettered choices).
        config: The Hub config (Hub datasets only).
        split: The Hub split (Hub datasets only); for the training set ``train_split`` overrides it.
    """

    question: str = "question"
    answer: str = "answer"
    extract: Extract = "as_is"
    solution: str | None = None
    id: str | None = None
    metadata: Sequence[str] = ()
    kind: ProblemKind = "math"
    config: str | None = None
    split: str = "train"

    def __post_init__(self) -> None:
        if self.extract not in ("as_is", "gsm8k", "boxed"):
            raise ValueError(f"columns: extract must be as_is, gsm8k or boxed, got {self.extract!r}")
        if self.kind not in ("math", "choice"):
            raise ValueError(f"columns: kind must be math or choice, got {self.kind!r}")
        if isinstance(self.metadata, str):  # a lone name would be read as its letters
            raise ValueError(f"columns: metadata must be a list of column names, got {self.metadata!r}")
        for column in self.metadata:  # custom rewards get metadata as keyword arguments, beside TRL's own
            if column in RESERVED_ARGUMENTS:
                raise ValueError(f"columns: metadata column {column!r} has the name of an argument reward "
                                 f"functions get from the trainer ({', '.join(RESERVED_ARGUMENTS)}); rename it")

    def benchmark(self, name: str) -> Benchmark:
        """The problem set ``name`` read with this mapping (it has no default source)."""
        to_problem = self.row_function(name)
        return Benchmark(name=name, source=None, split=self.split, config=self.config, to_problem=to_problem)

    def row_function(self, name: str) -> RowFunction:
        """Row -> ``Problem`` by this mapping; ``name`` is the metadata source and the id prefix."""

        def to_problem(row: Row, at: RowInfo) -> Problem:
            answer, solution = self.answer_and_solution(row)
            return Problem(
                id=required_text(row, self.id) if self.id else f"{name}-{at.index}",
                prompt=required_text(row, self.question),
                answer=answer,
                solution=solution,
                kind=self.kind,
                metadata={"source": name, **{column: optional_text(row, column) for column in self.metadata}},
            )

        return to_problem

    def answer_and_solution(self, row: Row) -> tuple[str, str | None]:
        """The extracted answer and the reference solution (``None`` without a solution column)."""
        text = required_text(row, self.answer)
        solution = optional_text(row, self.solution) if self.solution else None
        if self.extract == "gsm8k":
            before, answer = split_answer(text, self.answer)
            solution = before if self.solution == self.answer else solution
        elif self.extract == "boxed":
            answer = last_boxed(text)
            if answer is None:
                raise BadRowError(f"malformed field {self.answer!r}: no complete \\boxed{{}} final answer")
        else:
            answer = text
        if self.kind == "choice" and (len(answer) != 1 or answer.upper() not in CHOICE_LETTERS):
            raise BadRowError(f"malformed field {self.answer!r}: expected a letter of {CHOICE_LETTERS}, got {answer!r}")
        return (answer.upper() if self.kind == "choice" else answer), solution
