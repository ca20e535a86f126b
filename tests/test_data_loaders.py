"""Each loader from a local file in its real dataset's schema; bad rows, skip mode, empty sets, registry."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lampo_pl.data import BadRowsWarning, load_problems
from lampo_pl.data.math_train import last_boxed
from lampo_pl.data.registry import NAMES

FIXTURES = Path(__file__).parent / "fixtures" / "data"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def write_jsonl(path: Path, rows: list[object]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_math500_round_trip() -> None:
    problems = load_problems("math500", source=str(FIXTURES / "math500.jsonl"))
    assert [p.id for p in problems][:2] == ["test/prealgebra/1001.json", "test/prealgebra/1002.json"]
    last = problems[3]
    assert last.answer == r"\left( 2, \frac{3 \pi}{2} \right)"
    assert last.prompt.startswith("Convert the point $(0, -2)$") and last.solution is not None
    assert last.kind == "math" and last.metadata == {
        "source": "math500",
        "subject": "Precalculus",
        "level": "2",
    }


def test_aime24_jsonl_and_parquet_agree() -> None:
    from_jsonl = load_problems("aime24", source=str(FIXTURES / "aime24.jsonl"))
    from_parquet = load_problems("aime24", source=str(FIXTURES / "aime24.parquet"))  # id is int64 there
    assert from_jsonl == from_parquet
    assert [p.id for p in from_parquet] == ["aime24-60", "aime24-61", "aime24-62"]
    assert [p.answer for p in from_parquet] == ["400", "016", "99"]  # answers are kept as written
    assert from_parquet[0].metadata["year"] == "2024"


def test_aime_answers_stored_as_numbers_and_question_column(tmp_path: Path) -> None:
    # opencompass/AIME2025 names the column `question`; some copies store answers as numbers.
    rows = [{"question": "Find $x$.", "answer": 70}, {"question": "Find $y$.", "answer": 588.0}]
    problems = load_problems("aime25", source=write_jsonl(tmp_path / "aime25.jsonl", rows))
    assert [(p.id, p.prompt, p.answer) for p in problems] == [
        ("aime25-0", "Find $x$.", "70"),
        ("aime25-1", "Find $y$.", "588"),
    ]
    fixture = load_problems("aime25", source=str(FIXTURES / "aime25.jsonl"))
    assert [(p.id, p.answer, p.solution) for p in fixture] == [
        ("aime25-0", "500", None),
        ("aime25-1", "500", None),
        ("aime25-2", "533", None),
    ]


def test_gpqa_csv_round_trip() -> None:
    problems = load_problems("gpqa_diamond", source=str(FIXTURES / "gpqa_diamond.csv"))
    assert [p.id for p in problems] == ["recFixture0001", "recFixture0002", "recFixture0003"]
    first = problems[0]
    assert first.kind == "choice" and len(first.choices) == 4
    assert first.choices["ABCD".index(first.answer)] == "The photon"
    assert sorted(first.choices) == sorted(["The photon", "The gluon", "The W boson", "The graviton"])
    lines = first.prompt.split("\n")
    assert lines[0].startswith("Which gauge boson") and lines[1] == ""
    assert lines[2:] == [f"{letter}) {choice}" for letter, choice in zip("ABCD", first.choices, strict=True)]
    assert first.solution is not None and "\nGluons mediate" in first.solution  # a quoted multi-line CSV field
    assert first.metadata == {"source": "gpqa_diamond", "subdomain": "Physics (general)", "domain": "Physics"}


def test_math_train_takes_the_last_boxed_answer() -> None:
    problems = load_problems("math_train", source=str(FIXTURES / "math_train.jsonl"))
    assert [p.answer for p in problems] == [r"\frac{3}{4}", "4", r"\{-1, 1\}", "2"]
    assert [p.metadata["level"] for p in problems] == ["1", "2", "3", "?"]
    assert problems[0].id == "math-train-0" and problems[0].metadata["subject"] == "Prealgebra"
    assert problems[1].solution == "Subtracting 3 gives $2x = 8$, and dividing by 2 gives $x = \\boxed{4}$."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"$\boxed{1}$ then $\boxed{\left\{ 2 \right\}}$", r"\left\{ 2 \right\}"),
        (r"answer $\fbox{7}$", "7"),
        (r"answer is $\boxed 5$.", "5"),
        (r"$\boxed{\text{(B)}}$", r"\text{(B)}"),
        (r"no box here", None),
        (r"unbalanced $\boxed{\frac{1}{2}$", None),
    ],
)
def test_last_boxed(text: str, expected: str | None) -> None:
    assert last_boxed(text) == expected


def test_gsm8k_final_answer_and_clean_solution() -> None:
    problems = load_problems("gsm8k", source=str(FIXTURES / "gsm8k.jsonl"))
    assert [p.answer for p in problems] == ["45", "8400", "30"]  # "#### 8,400" loses its comma
    assert problems[0].solution == "Sara has 5 * 12 = 60 crayons.\nAfter giving 15 away she has 60 - 15 = 45 crayons."
    assert problems[0].id == "gsm8k-train-0" and problems[0].prompt.startswith("Sara has 5 boxes")


def test_json_array_file(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (FIXTURES / "math500.jsonl").read_text().splitlines()]
    path = tmp_path / "math500.json"
    path.write_text(json.dumps(rows))
    assert load_problems("math500", source=str(path)) == load_problems(
        "math500", source=str(FIXTURES / "math500.jsonl")
    )


def test_bad_row_error_names_file_row_and_field(tmp_path: Path) -> None:
    rows = [{"unique_id": "a", "problem": "p", "answer": "1"}, {"unique_id": "b", "problem": "p"}]
    path = write_jsonl(tmp_path / "x.jsonl", rows)
    with pytest.raises(ValueError) as info:
        load_problems("math500", source=path)
    assert str(info.value) == f"{path} line 2: missing field 'answer'"


@pytest.mark.parametrize(
    ("name", "row", "message"),
    [
        ("aime25", {"answer": "3"}, "missing field 'problem' (or 'question')"),
        (
            "gsm8k",
            {"question": "q", "answer": "It is 3."},
            "malformed field 'answer': no final answer after '####'",
        ),
        ("math_train", {"problem": "p", "solution": "It is 3."}, "malformed field 'solution': no complete"),
        (
            "math500",
            {"unique_id": "a", "problem": ["p"], "answer": "1"},
            "malformed field 'problem': expected text",
        ),
        ("math500", {"unique_id": "a", "problem": "p", "answer": True}, "malformed field 'answer'"),
        ("math500", ["not", "a", "record"], "not a record but list"),
    ],
)
def test_malformed_fields(tmp_path: Path, name: str, row: object, message: str) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [row])
    with pytest.raises(ValueError) as info:
        load_problems(name, source=path)
    assert str(info.value).startswith(f"{path} line 1: {message}")


def test_invalid_json_line_and_csv_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"unique_id": "a", "problem": "p", "answer": "1"}\n\n{"unique_id": "b", "problem": \n')
    with pytest.raises(ValueError, match=r"x\.jsonl line 3: invalid JSON"):
        load_problems("math500", source=str(path))
    csv_path = tmp_path / "gpqa.csv"
    csv_path.write_text("Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2\nq,a,b,c\n")
    with pytest.raises(ValueError, match=r"gpqa\.csv line 2: missing field 'Incorrect Answer 3'"):
        load_problems("gpqa_diamond", source=str(csv_path))


def test_skip_mode_counts_bad_rows(tmp_path: Path) -> None:
    rows = [
        {"unique_id": "a", "problem": "p", "answer": "1"},
        {"unique_id": "b", "problem": "p"},
        {"unique_id": "c", "problem": "p", "answer": "3"},
        {"unique_id": "a", "problem": "again", "answer": "4"},
    ]
    path = write_jsonl(tmp_path / "x.jsonl", rows)
    with pytest.warns(BadRowsWarning, match=r"skipped 2 bad row\(s\) of 4 read: .*line 2: missing field 'answer'"):
        problems = load_problems("math500", source=path, on_bad_row="skip")
    assert [p.id for p in problems] == ["a", "c"]
    duplicate = write_jsonl(tmp_path / "dup.jsonl", [rows[0], rows[2], rows[3]])
    with pytest.raises(ValueError, match=r"dup\.jsonl line 3: duplicate id 'a'"):
        load_problems("math500", source=duplicate)


def test_empty_and_all_bad_sources_are_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(empty))}: no problems to load: empty dataset"):
        load_problems("math500", source=str(empty))
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "p"}, {"problem": "q"}])
    with pytest.warns(BadRowsWarning), pytest.raises(ValueError, match="all 2 rows are bad"):
        load_problems("math500", source=bad, on_bad_row="skip")


def test_limit_keeps_the_first_problems() -> None:
    problems = load_problems("gsm8k", source=str(FIXTURES / "gsm8k.jsonl"), limit=2)
    assert [p.answer for p in problems] == ["45", "8400"]
    with pytest.raises(ValueError, match="limit"):
        load_problems("gsm8k", source=str(FIXTURES / "gsm8k.jsonl"), limit=0)


def test_registry_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown problem set 'math'; valid names: math500, aime24, .*synthetic"):
        load_problems("math")
    assert list(NAMES) == [
        "math500",
        "aime24",
        "aime25",
        "gpqa_diamond",
        "math_train",
        "gsm8k",
        "champ",
        "synthetic",
    ]
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl: no such file"):
        load_problems("math500", source=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="generated"):
        load_problems("synthetic", source="x.jsonl")


def test_hub_id_offline_fails_with_advice(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets_config = pytest.importorskip("datasets.config")
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(datasets_config, "HF_HUB_OFFLINE", True)  # read at import: set the live flags too
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match=r"'HuggingFaceH4/MATH-500' \(config=None, split='test'\).*local"):
        load_problems("math500")


def test_hub_rows_are_0_based_and_configs_read_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    calls: list[tuple[str, str | None, str]] = []

    def load_dataset(source: str, config: str | None, split: str) -> list[dict[str, str]]:
        calls.append((source, config, split))
        return [{"question": f"{config} q{i}", "answer": "1"} for i in range(2)]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    problems = load_problems("aime25", source="opencompass/AIME2025")
    assert calls == [("opencompass/AIME2025", "AIME2025-I", "test"), ("opencompass/AIME2025", "AIME2025-II", "test")]
    assert [p.id for p in problems] == ["aime25-0", "aime25-1", "aime25-2", "aime25-3"]
    assert problems[2].prompt == "AIME2025-II q0"
    calls.clear()
    with pytest.raises(ValueError, match=r"^openai/gsm8k row 0: malformed field 'answer': no final answer"):
        load_problems("gsm8k", split="test")
    assert calls == [("openai/gsm8k", "main", "test")]
