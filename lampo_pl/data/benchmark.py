"""A problem set read from rows is a ``Benchmark`` record; ``Benchmark.load`` is the one loader.

Each benchmark file (``math500.py``, ``gsm8k.py``, ...) is a ``Benchmark``: where its rows are (Hub
id, config, split, or a local file) and its row function (row -> ``Problem``). Users' own data is a
``Benchmark`` too, built from a column mapping (``lampo_pl.data.columns``). Loading is always
``read_rows`` (``lampo_pl.data.sources``) then ``convert_rows``:

- Rows are converted in order, stopping after ``limit`` good ones. A row that cannot be
  converted is an error ``"<source> line 7: missing field 'answer'"`` (``row <i>`` where the
  source has no lines, see ``sources``); with ``on_bad_row="skip"`` it is dropped and the count,
  with the first messages, is reported as one ``BadRowsWarning``. A duplicate id is a bad row.
  Nothing is lost silently, and a source that yields no problem at all is an error naming it.
- The row index a row function sees (``RowInfo.index``, for sets without an id column) counts
  rows from 0 in reading order: blank lines are not rows, unreadable lines are.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from lampo_pl.data.record import Problem
from lampo_pl.data.sources import BadRowError, BadRowsWarning, OnBadRow, Row, SourceRow, read_rows


@dataclass(frozen=True)
class RowInfo:
    """What a row function knows besides the row.

    Attributes:
        index: The row's 0-based index in reading order (the id of sets that have none).
        split: The split being read (in ids, so that train and test ids differ).
        seed: The loader's seed (GPQA's choice shuffles).
    """

    index: int
    split: str
    seed: int = 0


RowFunction = Callable[[Row, RowInfo], Problem]


@dataclass(frozen=True)
class Benchmark:
    """A problem set read from rows: where they are and how one becomes a ``Problem``.

    Attributes:
        name: The registry name (``load_problems(name)``).
        source: The default source: a Hub id, a function that finds a local file when called
            (CHAMP's file inside its package), or ``None`` when a source must be given.
        split: The default Hub split.
        to_problem: The row function; raises ``BadRowError`` naming the field for a bad row.
        config: The Hub config.
        configs: Per other Hub id, the configs read in turn as one stream (copies of a set that
            keep it in several configs).
        field: For a JSON document, the key that holds the records (``sources.read_rows``).
    """

    name: str
    source: str | Callable[[], str] | None
    split: str
    to_problem: RowFunction
    config: str | None = None
    configs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    field: str | None = None

    def load(
        self,
        source: str | None = None,
        *,
        split: str | None = None,
        limit: int | None = None,
        on_bad_row: OnBadRow = "error",
        seed: int = 0,
    ) -> list[Problem]:
        """The problems of ``source`` (default: the benchmark's own), converted by the row function.

        Args:
            source: Hub dataset id or local .jsonl/.json/.parquet/.csv file; ``None`` for the default.
            split: Hub split; ``None`` for the default.
            limit: Keep at most the first ``limit`` problems; ``None`` keeps all.
            on_bad_row: ``"error"`` raises at the first bad row; ``"skip"`` drops bad rows and warns.
            seed: Passed to the row function (``RowInfo.seed``).
        """
        source = source or (self.source() if callable(self.source) else self.source)
        if source is None:
            raise ValueError(f"{self.name}: no source given; name a local file or a Hub dataset id")
        split = split or self.split
        rows = read_rows(source, config=self.configs.get(source, self.config), split=split, field=self.field)

        def convert(row: Row, index: int) -> Problem:
            return self.to_problem(row, RowInfo(index, split, seed))

        return convert_rows(rows, convert, source=source, limit=limit, on_bad_row=on_bad_row)


def convert_rows(
    rows: Iterable[SourceRow],
    convert: Callable[[Row, int], Problem],
    *,
    source: str,
    limit: int | None = None,
    on_bad_row: OnBadRow = "error",
) -> list[Problem]:
    """Convert rows to problems in order, stopping after ``limit`` good ones (module docstring).

    Args:
        rows: What ``read_rows`` yields.
        convert: ``(row, row_index) -> Problem``; raises ``BadRowError`` for a bad row.
        source: Names the data in messages (the file path or the Hub id).
        limit: Keep at most this many problems (the first ones); ``None`` keeps all.
        on_bad_row: ``"error"`` raises at the first bad row; ``"skip"`` drops bad rows and warns
            once with their count.

    Raises:
        ValueError: A bad row (``"error"``), a duplicate id, or no problem at all.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of problems or None, got {limit}")
    problems: list[Problem] = []
    ids: set[str] = set()
    bad: list[str] = []
    num_rows = 0
    for index, row in enumerate(rows):
        if limit is not None and len(problems) >= limit:
            break
        num_rows += 1
        try:
            problem = _convert_one(row.value, index, convert, ids)
        except BadRowError as err:
            where = f"row {index}" if row.line is None else f"line {row.line}"
            message = f"{source} {where}: {err}"
            if on_bad_row == "error":
                raise BadRowError(message) from None
            bad.append(message)
            continue
        ids.add(problem.id)
        problems.append(problem)
    _report(source, problems, bad, num_rows)
    return problems


def _convert_one(
    row: Row | BadRowError, index: int, convert: Callable[[Row, int], Problem], ids: set[str]
) -> Problem:
    if isinstance(row, BadRowError):
        raise row
    problem = convert(row, index)
    if problem.id in ids:
        raise BadRowError(f"duplicate id {problem.id!r}")
    return problem


def _report(source: str, problems: list[Problem], bad: list[str], num_rows: int) -> None:
    if bad:
        shown = "; ".join(bad[:3]) + ("; ..." if len(bad) > 3 else "")
        warnings.warn(
            f"{source}: skipped {len(bad)} bad row(s) of {num_rows} read: {shown}",
            BadRowsWarning,
            stacklevel=4,
        )
    if not problems:
        reason = f"all {num_rows} rows are bad" if bad else "empty dataset (no rows)"
        raise ValueError(f"{source}: no problems to load: {reason}")
