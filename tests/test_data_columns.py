"""Users' own data by a column mapping: loader level, the DataModule, and a 1-step `lampo fit` with the example."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lampo_pl.data import BadRowsWarning, ColumnMapping, load_problems
from lampo_pl.data.datamodule import ProblemDataModule

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "data"
EXAMPLES = ROOT / "examples" / "data"
SUMS = ColumnMapping(id="uid", question="q", answer="work", extract="gsm8k", solution="work", metadata=["topic"])


def write_jsonl(path: Path, rows: list[object]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_example_file_by_its_mapping() -> None:
    problems = load_problems("my_sums", source=str(EXAMPLES / "sums.jsonl"), columns=SUMS)
    first = problems[0]
    # {"uid": "sums-00", "q": "Mia has 8 shells and ...", "work": "She has 8 + 8 = <<8+8=16>>16 shells.\n#### 16"}
    assert (first.id, first.answer, first.kind) == ("sums-00", "16", "math")
    assert first.prompt == "Mia has 8 shells and finds 8 more. How many shells does she have?"
    assert first.solution == "She has 8 + 8 = 16 shells."  # before '####', calculator note removed
    assert first.metadata == {"source": "my_sums", "topic": "addition"}
    assert len(problems) == 16 and len({p.id for p in problems}) == 16


def test_extractions_are_the_built_in_sets_own() -> None:
    # GSM8K's and MATH's files read by a mapping give their loaders' answers and solutions.
    gsm8k = load_problems("gsm8k", source=str(FIXTURES / "gsm8k.jsonl"))
    mapped = load_problems("g", source=str(FIXTURES / "gsm8k.jsonl"), columns=ColumnMapping(
        extract="gsm8k", solution="answer"))
    assert [(p.prompt, p.answer, p.solution) for p in mapped] == [(p.prompt, p.answer, p.solution) for p in gsm8k]
    assert [p.id for p in mapped] == ["g-0", "g-1", "g-2"]  # no id column: numbered rows
    math = load_problems("math_train", source=str(FIXTURES / "math_train.jsonl"))
    boxed = ColumnMapping(question="problem", answer="solution", extract="boxed", solution="solution")
    mapped = load_problems("m", source=str(FIXTURES / "math_train.jsonl"), columns=boxed)
    assert [(p.answer, p.solution) for p in mapped] == [(p.answer, p.solution) for p in math]
    as_is = load_problems("m5", source=str(FIXTURES / "math500.jsonl"), columns=ColumnMapping(
        question="problem", id="unique_id", solution="solution", metadata=["subject", "level"]))
    assert as_is[3].answer == r"\left( 2, \frac{3 \pi}{2} \right)" and as_is[3].metadata["level"] == "2"


def test_csv_and_choice_kind(tmp_path: Path) -> None:
    problems = load_problems("t", source=str(EXAMPLES / "sums_test.csv"), columns=ColumnMapping(metadata=["level"]))
    assert [(p.id, p.answer) for p in problems][:2] == [("t-0", "38"), ("t-1", "49")]
    assert problems[0].metadata == {"source": "t", "level": "1"}
    rows = [{"q": "Pick one:\nA) 1\nB) 2", "a": "b"}, {"q": "Again?", "a": "E"}]
    path = write_jsonl(tmp_path / "mc.jsonl", rows)
    choice = ColumnMapping(question="q", answer="a", kind="choice")
    with pytest.raises(ValueError, match=rf"^{path} line 2: malformed field 'a': expected a letter of ABCD, got 'E'$"):
        load_problems("mc", source=path, columns=choice)
    with pytest.warns(BadRowsWarning):
        (only,) = load_problems("mc", source=path, columns=choice, on_bad_row="skip")
    assert (only.kind, only.answer) == ("choice", "B")


@pytest.mark.parametrize(
    ("columns", "row", "message"),
    [
        (SUMS, {"uid": "a", "q": "?", "work": "It is 3."}, "malformed field 'work': no final answer after '####'"),
        (SUMS, {"q": "?", "work": "#### 3"}, "missing field 'uid'"),
        (SUMS, {"uid": "a", "work": "#### 3"}, "missing field 'q'"),
        (ColumnMapping(answer="sol", extract="boxed"), {"question": "?", "sol": "3"}, "malformed field 'sol': no comp"),
        (ColumnMapping(), {"question": "?", "answer": ["3"]}, "malformed field 'answer': expected text or a number"),
    ],
)
def test_bad_rows_name_file_line_and_column(tmp_path: Path, columns: ColumnMapping, row: dict, message: str) -> None:
    path = write_jsonl(tmp_path / "own.jsonl", [{"uid": "z", "q": "?", "question": "?", "work": "#### 1",
                                                 "answer": "1", "sol": "\\boxed{1}"}, row])
    with pytest.raises(ValueError) as err:
        load_problems("own", source=path, columns=columns)
    assert str(err.value).startswith(f"{path} line 2: {message}")


def test_mapping_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="extract must be as_is, gsm8k or boxed, got 'last'"):
        ColumnMapping(extract="last")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="metadata must be a list of column names"):
        ColumnMapping(metadata="topic")
    with pytest.raises(ValueError, match="own: no source given"):
        load_problems("own", columns=ColumnMapping())


def test_datamodule_reads_own_train_and_eval_sets() -> None:
    dm = ProblemDataModule(
        train_set="my_sums", train_source=str(EXAMPLES / "sums.jsonl"), train_columns=SUMS, prompts_per_step=4,
        eval_sets=("mine", "math500"),
        eval_sources={"mine": str(EXAMPLES / "sums_test.csv"), "math500": str(FIXTURES / "math500.jsonl")},
        eval_columns={"mine": ColumnMapping(metadata=["level"])},
    )
    dm.setup("fit")
    assert [p.id for p in dm.train_problems][:2] == ["sums-00", "sums-01"]
    sets = dm.eval_sets()
    assert [len(s) for s in sets.values()] == [6, 4] and sets["mine"][0].id == "mine-0"
    assert sets["math500"][0].id == "test/prealgebra/1001.json"  # the built-in loader still reads the others


def test_datamodule_refuses_unresolvable_sources_before_loading(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'mine' is read by a column mapping, so it needs eval_sources\['mine'\]"):
        ProblemDataModule(eval_sets=("mine",), eval_columns={"mine": ColumnMapping()})
    with pytest.raises(ValueError, match=r"eval_columns names sets not in eval_sets \['synthetic'\]: \['x'\]"):
        ProblemDataModule(eval_sets=("synthetic",), eval_columns={"x": ColumnMapping()})
    with pytest.raises(ValueError, match=r"unknown problem set 'my_sums'.*or give columns"):
        ProblemDataModule(train_set="my_sums", train_source=str(EXAMPLES / "sums.jsonl"))
    missing = str(tmp_path / "gone.jsonl")
    with pytest.raises(FileNotFoundError, match=rf"^{missing}: no such file$"):  # at construction, not at setup
        ProblemDataModule(train_set="own", train_source=missing, train_columns=ColumnMapping())


def test_cli_flags_parse_into_mappings(tmp_path: Path) -> None:
    from lampo_pl.cli import build_cli

    cli = build_cli(["-c", str(ROOT / "configs" / "smoke.yaml"), "--trainer.logger", "false",
                     "--trainer.default_root_dir", str(tmp_path), "--data.train_set", "my_sums",
                     "--data.train_source", str(EXAMPLES / "sums.jsonl"),
                     "--data.train_columns", "{id: uid, question: q, answer: work, extract: gsm8k, solution: work}",
                     "--data.eval_sets", "[t]", "--data.eval_sources", f"{{t: {EXAMPLES / 'sums_test.csv'}}}",
                     "--data.eval_columns", "{t: {metadata: [level]}}"], run=False)
    assert cli.datamodule.train_columns == dataclasses.replace(SUMS, metadata=[])
    assert cli.datamodule.eval_columns == {"t": ColumnMapping(metadata=["level"])}


@pytest.mark.filterwarnings("ignore")
def test_fit_one_step_on_the_readme_example(tmp_path: Path) -> None:
    """README "Your own data": `lampo fit -c configs/smoke.yaml -c examples/data/own_data.yaml`, one step."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "lampo_pl", "fit", "-c", "configs/smoke.yaml", "-c", "examples/data/own_data.yaml",
               "--trainer.max_steps", "1", "--trainer.logger.init_args.save_dir", str(tmp_path),
               "--trainer.enable_progress_bar", "false"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "smoke" / "version_0"
    samples = [json.loads(line) for line in (run / "samples" / "samples.jsonl").read_text().splitlines()]
    assert samples and all(sample["problem_id"].startswith("sums-") for sample in samples)  # trained on the file
    (result,) = json.loads((run / "eval" / "end_policy_step1_k2.json").read_text())["results"]
    assert (result["name"], result["num_problems"]) == ("my_sums_test", 6)
    assert list(result["per_problem"]) == [f"my_sums_test-{i}" for i in range(6)]
    assert list(result["breakdown"]) == ["level=1"]  # the mapped metadata column
