"""Users' own reward functions: TRL's calling convention, None, time bound, failures, the CLI door."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lampo_pl.data.record import Problem
from lampo_pl.rewards import CustomReward, RewardSpec, check_custom_rewards, score_responses
from lampo_pl.rewards.custom import TrainerProgress, reward_columns, shared_runner

ROOT = Path(__file__).resolve().parents[1]
PROBLEMS = [
    Problem(id="p0", prompt="What is 1+1?", answer="2", solution="1+1=2", metadata={"level": "1"}),
    Problem(id="p1", prompt="Pick", answer="B", kind="choice", choices=("x", "y"), metadata={"subject": "bio"}),
]
USER_MODULE = '''
import json, os, time

def trl_style(completions, prompts, completion_ids, trainer_state, answer, **kwargs):
    """Written for TRL: records what it was given, scores 1 when the completion ends with the answer."""
    with open(os.environ["LAMPO_TEST_RECORD"], "w") as f:
        json.dump({"prompts": prompts, "completions": completions, "completion_ids": completion_ids,
                   "step": trainer_state.global_step, "answer": answer,
                   "kwargs": sorted(kwargs), "level": kwargs["level"], "subject": kwargs["subject"]}, f)
    return [float(c.strip().endswith(a)) for c, a in zip(completions, answer)]

def math_only(completions, kind, **kwargs):
    return [1.0 if k == "math" else None for k in kind]

def sleeps(completions, **kwargs):
    if completions[0] == "slow":
        time.sleep(60)
    return [0.5] * len(completions)

def raises(completions, **kwargs):
    raise RuntimeError("user bug")

def wrong_count(completions, **kwargs):
    return [1.0]

NOT_A_FUNCTION = 3
'''


@pytest.fixture(scope="module")
def user_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A module outside the repository, importable as ``user_rewards`` (the child gets our sys.path)."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "user_rewards.py").write_text(textwrap.dedent(USER_MODULE))
    sys.path.insert(0, str(folder))
    yield "user_rewards"
    sys.path.remove(str(folder))
    for name in ("trl_style", "math_only", "sleeps", "raises", "wrong_count"):
        shared_runner(f"user_rewards.{name}").close()


def test_called_as_trl_calls_it(user_module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = tmp_path / "record.json"
    monkeypatch.setenv("LAMPO_TEST_RECORD", str(record))
    reward = CustomReward(f"{user_module}.trl_style", weight=0.5)
    batch = score_responses(["so 2", "I pick A"], PROBLEMS, [], custom=[reward], completion_ids=[[5, 6], [7]],
                            state=TrainerProgress(global_step=3))
    assert batch.components == {"trl_style": [1.0, 0.0]}
    assert batch.total == [0.5, 0.0]
    seen = json.loads(record.read_text())
    assert seen["prompts"] == ["What is 1+1?", "Pick"] and seen["completions"] == ["so 2", "I pick A"]
    assert seen["completion_ids"] == [[5, 6], [7]] and seen["step"] == 3 and seen["answer"] == ["2", "B"]
    # every Problem field but the prompt, and each metadata key (None where a problem lacks it)
    assert seen["kwargs"] == ["choices", "id", "kind", "level", "metadata", "solution", "subject"]
    assert seen["level"] == ["1", None] and seen["subject"] == [None, "bio"]


def test_none_is_left_out_of_the_sum_and_of_the_mean(user_module: str) -> None:
    specs = [RewardSpec("correctness", 1.0)]
    custom = [CustomReward(f"{user_module}.math_only", weight=0.25, name="mathy")]
    batch = score_responses(["\\boxed{2}", "The answer is (B)."], PROBLEMS, specs, custom=custom)
    assert batch.components["correctness"] == [1.0, 1.0]
    assert batch.components["mathy"][0] == 1.0 and math.isnan(batch.components["mathy"][1])
    assert batch.total == [1.25, 1.0]  # TRL's nansum: the None adds nothing
    assert batch.diagnostics["mathy_failures"] == 0.0


def test_a_runaway_function_is_killed_at_its_timeout(user_module: str) -> None:
    reward = CustomReward(f"{user_module}.sleeps", timeout_s=1.0)
    score_responses(["fast"], PROBLEMS[:1], [], custom=[reward])  # start the child outside the clock
    start = time.monotonic()
    batch = score_responses(["slow", "x"], PROBLEMS, [], custom=[reward])
    assert time.monotonic() - start < 5.0
    assert all(math.isnan(v) for v in batch.components["sleeps"]) and batch.total == [0.0, 0.0]
    assert batch.diagnostics["sleeps_failures"] == 1.0
    again = score_responses(["fast", "x"], PROBLEMS, [], custom=[reward])  # a fresh child takes over
    assert again.components["sleeps"] == [0.5, 0.5]


@pytest.mark.parametrize("name", ["raises", "wrong_count"])
def test_a_failing_function_costs_its_batch_not_the_run(user_module: str, name: str) -> None:
    custom = [CustomReward(f"{user_module}.{name}")]
    batch = score_responses(["a", "b"], PROBLEMS, [RewardSpec("correctness")], custom=custom)
    assert all(math.isnan(v) for v in batch.components[name])
    assert batch.diagnostics[f"{name}_failures"] == 1.0 and batch.total == [0.0, 0.0]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_such_module.fn", "custom reward 'no_such_module.fn': cannot import module 'no_such_module'"),
        ("user_rewards.missing", "'user_rewards.missing': module 'user_rewards' has no callable 'missing'"),
        ("user_rewards.NOT_A_FUNCTION", "has no callable 'NOT_A_FUNCTION'"),
        ("justaname", "expected an import path"),
    ],
)
def test_a_bad_path_is_one_line_naming_it(user_module: str, path: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        check_custom_rewards([CustomReward(path)])
    assert "\n" not in str(error.value)


def test_names_must_not_clash() -> None:
    with pytest.raises(ValueError, match="built-in reward"):
        CustomReward("examples.rewards.concise", name="correctness")
    with pytest.raises(ValueError, match="once"):
        score_responses(["a"], PROBLEMS[:1], [], custom=[CustomReward("a.f", name="x"), CustomReward("b.f", name="x")])


def test_columns_flatten_metadata_without_clobbering_fields() -> None:
    clash = Problem(id="q", prompt="p", answer="1", metadata={"answer": "meta", "year": 2024})
    columns = reward_columns([clash])
    assert columns["answer"] == ["1"] and columns["year"] == [2024] and "prompt" not in columns


def test_lampo_fit_logs_each_custom_reward(tmp_path: Path) -> None:
    """The README's door, end to end: ``python -m lampo_pl fit`` with examples/custom_rewards.yaml."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable, "-m", "lampo_pl", "fit", "-c", "configs/smoke.yaml", "-c", "examples/custom_rewards.yaml",
        "--trainer.max_steps", "1", "--trainer.callbacks", "[]", "--data.eval_sets", "[]",
        "--trainer.logger.init_args.save_dir", str(tmp_path),
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = (tmp_path / "smoke").iterdir()
    events = EventAccumulator(str(run))
    events.Reload()
    scalars = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}
    assert 0.0 <= scalars["train/reward_concise"] <= 1.0
    assert "train/reward_shows_work" in scalars and scalars["train/reward_diag/concise_failures"] == 0.0


def test_an_unknown_path_stops_fit_before_any_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    from lampo_pl import module
    from lampo_pl.cli import build_cli

    def no_model(self: object) -> None:
        raise AssertionError("the model loaded before the bad path was reported")

    monkeypatch.setattr(module.LamPOModule, "configure_model", no_model)
    message = "custom reward 'my_rewards.nope': cannot import module 'my_rewards' (No module named 'my_rewards')"
    with pytest.raises(ValueError, match=re.escape(message)):
        build_cli(["fit", "-c", str(ROOT / "configs/smoke.yaml"), "--trainer.logger", "false",
                   "--model.rewards.custom", "[{function: my_rewards.nope}]"])
