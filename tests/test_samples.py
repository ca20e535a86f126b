"""RolloutSamples: the chosen prompts with their G responses and scores, to JSONL and TensorBoard text."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lampo_pl.callbacks.samples import RolloutSamples, prompt_records, to_markdown
from lampo_pl.step_metrics import StepRecord

B, G = 3, 2


def record(step: int, with_pairs: bool = True) -> StepRecord:
    """B = 3 prompts × G = 2 responses; response row i is ``b<prompt>r<index in group>``, reward i."""
    n = B * G
    return StepRecord(
        step=step,
        prompts=[f"prompt {b}" for b in range(B)],
        problem_ids=[f"p{b}" for b in range(B)],
        answers=[str(10 + b) for b in range(B)],
        texts=[f"b{i // G}r{i % G}\nsecond line" for i in range(n)],
        rewards=[float(i) for i in range(n)],
        components={"correctness": [float(i % 2) for i in range(n)], "density": [0.1 * i for i in range(n)]},
        advantages=[-0.5, 0.5] * B,
        pair_weights=[[[0.0, 0.1 * (b + 1)], [0.2 * (b + 1), 0.0]] for b in range(B)] if with_pairs else None,
        group_size=G,
        metrics={"reward": 2.5},
        extracted=[str(i) for i in range(n)],
        grades=["wrong", "correct"] * B,
    )


def test_prompt_records_pick_each_prompts_group() -> None:
    (first, second) = prompt_records(record(4), num_prompts=2)
    assert (second["step"], second["problem_id"], second["prompt"]) == (4, "p1", "prompt 1")
    assert second["answer"] == "11"  # the reference answer beside the responses graded against it
    assert [(r["extracted"], r["grade"]) for r in second["responses"]] == [("2", "wrong"), ("3", "correct")]
    assert [r["text"].split("\n")[0] for r in second["responses"]] == ["b1r0", "b1r1"]
    assert [r["reward"] for r in second["responses"]] == [2.0, 3.0]  # rows 2 and 3
    assert second["responses"][1]["components"] == {"correctness": 1.0, "density": pytest.approx(0.3)}
    assert [r["advantage"] for r in second["responses"]] == [-0.5, 0.5]
    assert [r["pair_weights"] for r in second["responses"]] == [[0.0, pytest.approx(0.2)], [pytest.approx(0.4), 0.0]]
    assert first["responses"][0]["pair_weights"] == [0.0, pytest.approx(0.1)]
    assert prompt_records(record(4, with_pairs=False), 1)[0]["responses"][0]["pair_weights"] is None
    assert len(prompt_records(record(4), num_prompts=10)) == B
    md = to_markdown(first)
    assert "reference answer `10`" in md and "correct (extracted `1`)" in md
    assert "b0r1\nsecond line" in md and "advantage +0.500" in md and "pair weights [0.00, 0.10]" in md


def test_callback_writes_every_n_steps_to_jsonl_and_tensorboard(tmp_path: Path) -> None:
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    trainer = SimpleNamespace(loggers=[logger], log_dir=logger.log_dir, is_global_zero=True)
    module = SimpleNamespace(last_step=None)
    callback = RolloutSamples(every_n_steps=2, num_prompts=2)
    for step in (1, 2, 2, 3, 4):  # step 2 seen twice (e.g. a second hook call): logged once
        module.last_step = record(step)
        callback.on_train_batch_end(trainer, module)  # type: ignore[arg-type]
    lines = [json.loads(line) for line in Path(logger.log_dir, "samples", "samples.jsonl").read_text().splitlines()]
    assert [(s["step"], s["problem_id"]) for s in lines] == [(2, "p0"), (2, "p1"), (4, "p0"), (4, "p1")]
    assert len(lines[0]["responses"]) == G
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0})
    events.Reload()
    assert {"samples/prompt_0/text_summary", "samples/prompt_1/text_summary"} <= set(events.Tags()["tensors"])
    assert [e.step for e in events.Tensors("samples/prompt_0/text_summary")] == [2, 4]


def test_no_record_no_output_and_bad_arguments(tmp_path: Path) -> None:
    trainer = SimpleNamespace(loggers=[], log_dir=str(tmp_path), is_global_zero=True)
    RolloutSamples(every_n_steps=1, dirpath=str(tmp_path / "s")).on_train_batch_end(
        trainer, SimpleNamespace(last_step=None)
    )  # type: ignore[arg-type]
    assert not (tmp_path / "s").exists()
    with pytest.raises(ValueError):
        RolloutSamples(every_n_steps=0)


def test_scoring_reports_the_extracted_answer_and_grade_per_response() -> None:
    """What samples.jsonl shows comes from the graders themselves (issue 25 item 8)."""
    from lampo_pl.data.record import Problem
    from lampo_pl.rewards import RewardSpec, score_responses

    math = Problem(id="m", prompt="What is 3 + 4?", answer="7")
    choice = Problem(id="c", prompt="Pick", answer="B", kind="choice", choices=("x", "y"))
    texts = ["so \\boxed{7}", "\\boxed{8}", "I do not know", "3 + 4", "\\boxed{B}"]
    batch = score_responses(texts, [math] * 4 + [choice], [RewardSpec("correctness", 1.0)])
    assert batch.extracted == ["7", "8", None, "3 + 4", "B"]
    assert batch.grades == ["correct", "wrong", "no_answer", "echo", "correct"]
