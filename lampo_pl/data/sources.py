"""Reading problem rows from a local file or the Hugging Face Hub, each with where it stands.

- A *source* is a local file or a Hub dataset id (``"HuggingFaceH4/MATH-500"``, read with
  ``datasets.load_dataset``). It is local when it names an existing file, when its suffix is
  ``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv``, or when it is written as a path (it starts with
  ``/``, ``.`` or ``~``, or has more than one ``/``; a Hub id is ``name`` or ``owner/name``). A
  local source that does not exist is one ``FileNotFoundError`` naming it, before anything is
  read. A local file is one split, so ``split`` and ``config`` apply to Hub ids only; an existing
  folder goes to ``datasets.load_dataset`` as a local dataset.
- Each row comes with its place (``SourceRow``): for line-based files (JSON Lines, CSV) the
  file's 1-based LINE where the record starts (a CSV's header is line 1; blank lines count, as in
  an editor); otherwise (a JSON array, Parquet, a Hub split) the 0-based ROW index. Messages say
  which: ``"data.jsonl line 7: ..."``, ``"data.parquet row 6: ..."``.
- A line that cannot become a record (not UTF-8, not JSON, a CSV record with more or fewer fields
  than its header: ``What is 1,000 + 1?,1001`` unquoted) is a bad row like one with a missing
  field (``BadRowError``): the loader stops at it, or skips and counts it (``on_bad_row="skip"``).
  A file that cannot be read at all (truncated Parquet, an invalid JSON document, text the CSV
  reader rejects) is one ``ValueError`` naming the file (and the line where known).

The field helpers (``required_text``, ``optional_text``) are what every row function uses, so a
missing or malformed field reads the same everywhere: ``"missing field 'answer'"``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

OnBadRow = Literal["error", "skip"]
Row = Mapping[str, Any]
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


class BadRowError(ValueError):
    """A row that cannot become a ``Problem``; the message names the field and what is wrong."""


class BadRowsWarning(UserWarning):
    """Rows were skipped (``on_bad_row="skip"``); the message gives the count and the first reasons."""


@dataclass(frozen=True)
class SourceRow:
    """One record of a source and where it stands in it.

    Attributes:
        value: The record, or a ``BadRowError`` saying why its text could not become one.
        line: The 1-based line where the record starts, for JSON Lines and CSV files; ``None`` for
            the others, whose rows are known by their 0-based index.
    """

    value: Row | BadRowError
    line: int | None = None


def is_local(source: str) -> bool:
    """Whether ``source`` names a local file rather than a Hub id (see the module docstring)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return False
    written_as_path = source.startswith(("/", ".", "~")) or source.count("/") > 1
    return path.is_file() or path.suffix.lower() in LOCAL_SUFFIXES or written_as_path


def check_source(source: str) -> None:
    """``FileNotFoundError`` (one line naming it) when ``source`` is a local file that does not exist."""
    path = Path(source).expanduser()
    if is_local(source) and not path.is_file():
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise FileNotFoundError(f"{source}: no such file{where}")


def read_rows(
    source: str, *, config: str | Sequence[str] | None = None, split: str = "train", field: str | None = None
) -> Iterator[SourceRow]:
    """The rows of ``source`` in order; checks a local file exists before returning.

    Args:
        source: Hub dataset id or local file path (see the module docstring).
        config: Hub config name; a sequence of names reads each in turn as one stream of rows
            (e.g. the seven per-subject configs of ``EleutherAI/hendrycks_math``).
        split: Hub split.
        field: For a JSON document (not JSON Lines), the key of the object that holds the records:
            a list of them, or a mapping whose values are them (CHAMP's ``problems``).
    """
    check_source(source)
    if is_local(source):
        return _read_local(Path(source).expanduser(), field)
    configs = [config] if config is None or isinstance(config, str) else list(config)
    return (row for name in configs for row in _read_hub(source, name, split))


def _read_local(path: Path, field: str | None) -> Iterator[SourceRow]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path)
    if suffix == ".parquet":
        return _read_parquet(path)
    if suffix == ".jsonl" or (suffix == ".json" and field is None and _is_json_lines(path)):
        return _read_json_lines(path)
    if suffix == ".json":
        return (SourceRow(record) for record in _json_records(path, field))
    raise ValueError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(LOCAL_SUFFIXES)}")


def _undecodable(data: bytes, err: UnicodeDecodeError) -> str:
    return f"not UTF-8 text (byte 0x{data[err.start]:02x} at column {err.start + 1})"


def _read_json_lines(path: Path) -> Iterator[SourceRow]:
    """One record per non-blank line; a line that is not UTF-8 or not JSON is a bad row naming its line."""
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as err:
            yield SourceRow(BadRowError(_undecodable(raw, err)), number)
            continue
        if not line.strip():
            continue
        try:
            yield SourceRow(json.loads(line), number)
        except json.JSONDecodeError as err:
            yield SourceRow(BadRowError(f"invalid JSON ({err.msg} at column {err.colno})"), number)


def _is_json_lines(path: Path) -> bool:
    """A ``.json`` file whose first non-blank line is a JSON object by itself (the Hub often has these)."""
    with path.open("rb") as handle:
        for raw in handle:
            if raw.strip():
                try:
                    return isinstance(json.loads(raw.decode("utf-8-sig", errors="replace")), dict)
                except json.JSONDecodeError:
                    return False
    return False


def _json_records(path: Path, field: str | None) -> list[Any]:
    """The records of a JSON document: an array, or ``document[field]`` (a list or a mapping's values)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(f"{path} line {line}: not UTF-8 text (byte 0x{data[err.start]:02x})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} line {err.lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
    if field is not None:
        records = document.get(field) if isinstance(document, dict) else None
        records = list(records.values()) if isinstance(records, dict) else records
        if not isinstance(records, list):
            raise ValueError(f"{path}: expected a JSON object whose {field!r} is a list or mapping of records")
        return records
    if not isinstance(document, list):
        kind = type(document).__name__
        raise ValueError(f"{path}: expected a JSON array of records or JSON Lines, got a JSON {kind}")
    return document


def _read_csv(path: Path) -> Iterator[SourceRow]:
    """Records with the header's column names; a field that is not UTF-8 is a bad row naming it.

    Bytes are decoded with ``surrogateescape`` so that one bad byte spoils only its record, and a
    byte-order mark (spreadsheet exports, GPQA's CSV among them) is dropped.
    """
    lines = (
        raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
        for raw in path.read_bytes().splitlines(keepends=True)
    )
    reader = csv.reader(lines)
    try:
        header = next(reader, None)
        end = reader.line_num
        for record in reader:
            start, end = end + 1, reader.line_num
            if record:  # a blank line is no record
                yield SourceRow(_csv_record(header or [], record), start)
    except csv.Error as err:
        raise ValueError(f"{path} line {reader.line_num}: not valid CSV ({err})") from None


def _csv_record(header: list[str], record: list[str]) -> Row | BadRowError:
    if len(record) != len(header):  # an unquoted comma would shift every later field into the wrong column
        hint = "a comma in an unquoted field? quote it" if len(record) > len(header) else "a field is missing"
        return BadRowError(f"{len(record)} fields where the header has {len(header)} ({hint})")
    row = dict(zip(header, record, strict=True))
    for name, value in row.items():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            byte = ord(value[err.start]) - 0xDC00  # surrogateescape maps byte b to U+DC00 + b
            return BadRowError(f"field {name!r} is not UTF-8 text (byte 0x{byte:02x})")
    return row


def _read_parquet(path: Path) -> Iterator[SourceRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{path}: not a readable Parquet file ({_one_line(err)})") from None
    return (SourceRow(row) for row in table.to_pylist())


def _read_hub(source: str, config: str | None, split: str) -> Iterator[SourceRow]:
    import datasets  # imported here: it is slow to import and local files do not need it

    try:
        dataset = datasets.load_dataset(source, config, split=split)
    except Exception as err:  # network, gating, unknown id or split: all need the same advice
        raise RuntimeError(
            f"could not load {source!r} (config={config!r}, split={split!r}) with datasets.load_dataset: "
            f"{_one_line(err)}. Offline, pass a local .jsonl/.json/.parquet/.csv file with the same columns."
        ) from err
    return (SourceRow(row) for row in dataset)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


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
