"""Corrupt and missing dataset files: one line naming the file (and line or row); ``skip`` skips bad lines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lampo_pl.data import BadRowsWarning, load_problems
from lampo_pl.data.columns import ColumnMapping

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def math500_line(i: int) -> bytes:
    return json.dumps({"unique_id": f"u{i}", "problem": f"What is {i} + 1?", "answer": str(i + 1)}).encode() + b"\n"


def one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


def test_non_utf8_jsonl_line_is_named_and_skippable(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    bad = b'{"unique_id": "u9", "problem": "caf\xe9 au lait?", "answer": "1"}\n'  # latin-1, not UTF-8
    path.write_bytes(math500_line(0) + b"\n" + bad + math500_line(1))
    with pytest.raises(ValueError) as err:
        load_problems("math500", source=str(path))
    # Line 3 of the file (the blank line 2 counts, as in an editor); the byte and where it stands.
    assert one_line(err) == f"{path} line 3: not UTF-8 text (byte 0xe9 at column 36)"
    with pytest.warns(BadRowsWarning, match=r"skipped 1 bad row\(s\) of 3 read: .*line 3: not UTF-8"):
        problems = load_problems("math500", source=str(path), on_bad_row="skip")
    assert [p.id for p in problems] == ["u0", "u1"]


def test_non_utf8_csv_field_is_named_and_skippable(tmp_path: Path) -> None:
    header = b"Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3,Record ID\n"
    # Record 1 spans lines 2-3 (a quoted newline); record 2, on line 4, has a latin-1 byte.
    rows = b'"Two\nlines?",a,b,c,d,r1\nQ\xe9?,a,b,c,d,r2\nThree?,a,b,c,d,r3\n'
    path = tmp_path / "gpqa.csv"
    path.write_bytes(b"\xef\xbb\xbf" + header + rows)  # with a byte-order mark, as spreadsheets write
    with pytest.raises(ValueError) as err:
        load_problems("gpqa_diamond", source=str(path))
    assert one_line(err) == f"{path} line 4: field 'Question' is not UTF-8 text (byte 0xe9)"
    with pytest.warns(BadRowsWarning, match="skipped 1 bad row"):
        problems = load_problems("gpqa_diamond", source=str(path), on_bad_row="skip")
    assert [p.id for p in problems] == ["r1", "r3"]


def test_csv_lines_count_the_header_and_quoted_newlines(tmp_path: Path) -> None:
    path = tmp_path / "gpqa.csv"
    path.write_text(
        "Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3\n"
        '"One\nand two?",a,b,c,d\n\nNo answers?,a,b,c\n'
    )
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))} line 5: 4 fields where the header has 5 "):
        load_problems("gpqa_diamond", source=str(path))


def test_csv_row_with_more_fields_than_its_header_is_a_named_bad_row(tmp_path: Path) -> None:
    """Issue 21, item 8: an unquoted comma (``What is 1,000 + 1?,1001``) would load as question ``What is 1``,
    answer ``000 + 1?``; it is a bad row naming file and line, honoured by ``on_bad_row``."""
    path, columns = tmp_path / "mine.csv", ColumnMapping(question="problem", answer="answer")
    path.write_text('problem,answer\nWhat is 1 + 1?,2\nWhat is 1,000 + 1?,1001\n"What is 2,000 + 1?",2001\n')
    with pytest.raises(ValueError) as err:
        load_problems("mine", source=str(path), columns=columns)
    assert one_line(err) == f"{path} line 3: 3 fields where the header has 2 (a comma in an unquoted field? quote it)"
    with pytest.warns(BadRowsWarning, match=r"skipped 1 bad row\(s\) of 3 read: .*line 3: 3 fields"):
        problems = load_problems("mine", source=str(path), on_bad_row="skip", columns=columns)
    assert [(p.prompt, p.answer) for p in problems] == [("What is 1 + 1?", "2"), ("What is 2,000 + 1?", "2001")]


def test_parquet_rows_are_0_based_indices_and_a_truncated_file_is_named(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "aime.parquet"
    pq.write_table(pa.table({"problem": ["p0", "p1"], "answer": ["1", None]}), path)
    with pytest.raises(ValueError) as err:
        load_problems("aime25", source=str(path))
    assert one_line(err) == f"{path} row 1: missing field 'answer'"
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes((FIXTURES / "aime24.parquet").read_bytes()[:-100])
    for on_bad_row in ("error", "skip"):
        with pytest.raises(ValueError) as err:
            load_problems("aime24", source=str(truncated), on_bad_row=on_bad_row)  # type: ignore[arg-type]
        assert one_line(err).startswith(f"{truncated}: not a readable Parquet file (")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[{"problem": "p", "answer": "1"},\n {"problem": "q", "ans', " line 2: invalid JSON (Unterminated string"),
        ('{\n  "rows": [\n    {"problem": "p", "answer": "1"}\n  ]\n}\n', ": expected a JSON array of records"),
        ("[\n 1,\n 2 3]\n", " line 3: invalid JSON (Expecting ',' delimiter at column 4)"),
    ],
)
def test_invalid_json_document_is_one_line_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "aime.json"
    path.write_text(text)
    for on_bad_row in ("error", "skip"):  # a broken document is not rows to skip
        with pytest.raises(ValueError) as err:
            load_problems("aime25", source=str(path), on_bad_row=on_bad_row)  # type: ignore[arg-type]
        assert one_line(err).startswith(f"{path}{message}")


def test_non_utf8_json_document_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "aime.json"
    path.write_bytes(b'[\n {"problem": "p", "answer": "1"},\n {"problem": "\xff", "answer": "2"}\n]\n')
    with pytest.raises(ValueError) as err:
        load_problems("aime25", source=str(path))
    assert one_line(err) == f"{path} line 3: not UTF-8 text (byte 0xff)"


@pytest.mark.parametrize("name", ["missing.jsonl", "no_suffix", "sub/dir/file"])
def test_missing_file_is_one_line_naming_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # Without a known suffix a path used to be taken for a Hub id: a long datasets error, or a
    # 50-second retry online. A path (absolute, or with two slashes) is never a Hub id.
    absolute = str(tmp_path / name)
    with pytest.raises(FileNotFoundError) as err:
        load_problems("math500", source=absolute)
    assert one_line(err) == f"{absolute}: no such file"
    monkeypatch.chdir(tmp_path)
    relative = f"./{name}"
    with pytest.raises(FileNotFoundError) as err:
        load_problems("math500", source=relative)
    assert one_line(err) == f"{relative}: no such file (relative to {tmp_path})"
