"""Reading benchmark rows from the Hugging Face Hub or a local file, with one policy for bad rows.

Every loader in this package is ``read_rows`` (where the rows come from) followed by
``convert_rows`` (row -> ``Problem``, counting and reporting what could not be converted):

- A *source* is a Hub dataset id (``"HuggingFaceH4/MATH-500"``, read with ``datasets.load_dataset``)
  or a local ``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv`` file with the same column names
  (offline use). A source is local when its suffix is one of those or when it names an existing
  file; a local file is one split, so ``split`` and ``config`` apply to Hub ids only.
- Rows are numbered from 0 in file order (for CSV, the first row after the header is row 0;
  blank JSONL lines are not rows). A row that cannot be converted is an error
  ``"<source> row <i>: missing field 'answer'"``; with ``on_bad_row="skip"`` it is dropped and
  the count, with the first messages, is reported as a ``BadRowsWarning``. Nothing is lost
  silently, and a source that yields no problem at all is an error naming it.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from lampo_pl.data.record import Problem

OnBadRow = Literal["error", "skip"]
Row = Mapping[str, Any]
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


class BadRowError(ValueError):
    """A row that cannot become a ``Problem``; the message names the field and what is wrong."""


class BadRowsWarning(UserWarning):
    """Rows were skipped (``on_bad_row="skip"``); the message gives the count and the first reasons."""


def is_local(source: str) -> bool:
    """Whether ``source`` names a local file (known suffix, or an existing file) rather than a Hub id."""
    path = Path(source)
    return path.suffix.lower() in LOCAL_SUFFIXES or path.is_file()


def read_rows(
    source: str, *, config: str | Sequence[str] | None = None, split: str = "train"
) -> Iterator[Row | BadRowError]:
    """Yield the rows of ``source``; a row that is not even parseable comes as a ``BadRowError``.

    Args:
        source: Hub dataset id or local file path (see the module docstring).
        config: Hub config name; a sequence of names reads each in turn as one stream of rows
            (e.g. the seven per-subject configs of ``EleutherAI/hendrycks_math``).
        split: Hub split.
    """
    if is_local(source):
        yield from _read_local(Path(source))
        return
    configs = [config] if config is None or isinstance(config, str) else list(config)
    for name in configs:
        yield from _read_hub(source, name, split)


def _read_local(path: Path) -> Iterator[Row | BadRowError]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        # utf-8-sig: spreadsheet exports (GPQA's CSV among them) may start with a byte-order mark.
        with path.open(newline="", encoding="utf-8-sig") as handle:
            yield from csv.DictReader(handle)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from pq.read_table(path).to_pylist()
    elif suffix in (".json", ".jsonl"):
        yield from _read_json(path)
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(LOCAL_SUFFIXES)}")


def _read_json(path: Path) -> Iterator[Row | BadRowError]:
    """JSON Lines; a ``.json`` file is a JSON array of objects, or JSON Lines as the Hub often has."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: invalid JSON: {err}") from err
        yield from rows
        return
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as err:
            yield BadRowError(f"invalid JSON ({err.msg} at column {err.colno})")


def _read_hub(source: str, config: str | None, split: str) -> Iterator[Row]:
    import datasets  # imported here: it is slow to import and local files do not need it

    try:
        dataset = datasets.load_dataset(source, config, split=split)
    except Exception as err:  # network, gating, unknown id or split: all need the same advice
        raise RuntimeError(
            f"could not load {source!r} (config={config!r}, split={split!r}) with datasets.load_dataset: "
            f"{err}. Offline, pass a local .jsonl/.json/.parquet/.csv file with the same columns."
        ) from err
    yield from dataset


def field_names(names: Sequence[str]) -> str:
    """``'problem'`` or ``'problem' (or 'question')`` for error messages."""
    alternatives = "".join(f" (or {name!r})" for name in names[1:])
    return f"{names[0]!r}{alternatives}"


def optional_text(row: Row, *names: str) -> str | None:
    """The first of ``names`` with a non-empty value, stripped; integral numbers as integers ("204")."""
    if not isinstance(row, Mapping):
        raise BadRowError(f"not a record but {type(row).__name__}")
    for name in names:
        value = row.get(name)
        text = None if value is None else _as_text(value, name)
        if text:
            return text
    return None


def required_text(row: Row, *names: str) -> str:
    """Like ``optional_text``, but a missing or empty field is a ``BadRowError``."""
    text = optional_text(row, *names)
    if text is None:
        raise BadRowError(f"missing field {field_names(names)}")
    return text


def _as_text(value: object, name: str) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        raise BadRowError(f"malformed field {name!r}: expected text or a number, got {value!r}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):  # pandas' missing value
            return ""
        return str(int(value)) if value.is_integer() else str(value)
    raise BadRowError(f"malformed field {name!r}: expected text or a number, got {type(value).__name__}")


def convert_rows(
    rows: Iterable[Row | BadRowError],
    convert: Callable[[Row, int], Problem],
    *,
    source: str,
    limit: int | None = None,
    on_bad_row: OnBadRow = "error",
) -> list[Problem]:
    """Convert rows to problems in order, stopping after ``limit`` good ones.

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
            problem = _convert_one(row, index, convert, ids)
        except BadRowError as err:
            message = f"{source} row {index}: {err}"
            if on_bad_row == "error":
                raise BadRowError(message) from None
            bad.append(message)
            continue
        ids.add(problem.id)
        problems.append(problem)
    _report(source, problems, bad, num_rows)
    return problems


def _convert_one(row: Row | BadRowError, index: int, convert: Callable[[Row, int], Problem], ids: set[str]) -> Problem:
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
            stacklevel=3,
        )
    if not problems:
        reason = f"all {num_rows} rows are bad" if bad else "empty dataset (no rows)"
        raise ValueError(f"{source}: no problems to load: {reason}")
