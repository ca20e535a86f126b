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
import torch

from lampo_pl.data.columns import ColumnMapping
from lampo_pl.data.record import Problem
from lampo_pl.rewards import CustomReward, RewardSpec, check_custom_rewards, score_responses
from lampo_pl.rewards.custom import (
    CustomRewardRunner,
    RewardFunctionError,
    RewardGuard,
    TrainerProgress,
    reward_columns,
    shared_runner,
)
from lampo_pl.rewards.verifier import MathVerifier

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
                   "step": trainer_state.global_step, "max_steps": trainer_state.max_steps,
                   "epoch": trainer_state.epoch, "answer": answer,
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

def records(completions, prompts, **kwargs):
    """Records what it was given (any format) and scores 1."""
    with open(os.environ["LAMPO_TEST_RECORD"], "w") as f:
        json.dump({"prompts": prompts, "completions": completions, "trainer_state": str(kwargs["trainer_state"])}, f)
    return [1.0] * len(completions)

def plain_text(completions, **kwargs):
    """Written for plain text: a message list has no strip()."""
    return [float(len(c.strip()) > 3) for c in completions]

def not_a_number(completions, **kwargs):
    return ["high"] * len(completions)

def infinite(completions, **kwargs):
    return [float("inf")] + [1.0] * (len(completions) - 1)

def fails_on_bad(completions, **kwargs):
    if completions[0] == "bad":
        raise ValueError("bad batch")
    return [1.0] * len(completions)

def allocates(completions, **kwargs):
    block = bytearray(1 << 30)  # 1 GiB, touched only lazily: fine without a limit, refused under 0.5 GiB
    return [float(len(block) > 0)] * len(completions)

def spawns_and_hangs(completions, **kwargs):
    import subprocess
    child = subprocess.Popen(["sleep", "300"])
    with open(os.environ["LAMPO_TEST_RECORD"], "w") as f:
        f.write(str(child.pid))
    time.sleep(300)

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
    for name in ("trl_style", "math_only", "sleeps", "raises", "wrong_count", "records", "plain_text",
                 "not_a_number", "infinite", "fails_on_bad", "spawns_and_hangs"):
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
    assert seen["max_steps"] == 0 and seen["epoch"] == 0.0  # TRL's TrainerState fields (issue 21, item 7)
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


def test_a_reward_module_in_the_working_directory_imports_under_the_console_script(tmp_path: Path) -> None:
    """Issue 25 item 1: ``lampo`` (console script: sys.path[0] is its bin folder, not the working directory)
    imports ``examples.rewards``-style paths from the working directory, as ``python -m lampo_pl`` does;
    the reward's child process imports it too."""
    (tmp_path / "my_pkg").mkdir()
    (tmp_path / "my_pkg" / "__init__.py").write_text("")
    source = "def half(completions, **kw):\n    return [0.5] * len(completions)\n"
    (tmp_path / "my_pkg" / "scores.py").write_text(source)
    script = textwrap.dedent(f"""
        import sys
        assert "" not in sys.path and {str(tmp_path)!r} not in sys.path  # as under the console script
        from lampo_pl.rewards.custom import CustomReward, check_custom_rewards, score_custom
        from lampo_pl.data.record import Problem
        reward = CustomReward("my_pkg.scores.half")
        check_custom_rewards([reward])
        values, _ = score_custom([reward], ["a", "b"], [Problem(id="p", prompt="q", answer="1")] * 2)
        print(values)
        try:
            check_custom_rewards([CustomReward("not_here.fn")])
        except ValueError as error:
            print(error)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # -P: no script folder or working directory on sys.path, as under `.venv/bin/lampo`.
    done = subprocess.run([sys.executable, "-P", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "{'half': [0.5, 0.5]}" in done.stdout
    assert f"looked in the working directory {tmp_path}" in done.stdout


# ---- issue 21, item 7: TRL compatibility as TRL defines it; no reward silently drops out --------------------

CHAT = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 1+1?"}],
        [{"role": "user", "content": "Pick"}]]


def test_chat_prompts_give_trl_message_lists_and_text_functions_keep_plain_strings(
    user_module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As TRL 1.16's GRPOTrainer on a conversational dataset (grpo_trainer.py lines 2229-2245 decode
    ``completions = [[{"role": "assistant", "content": content}] ...]``; line 2338 takes the dataset's prompt
    messages as ``prompts``); ``completion_format: text`` keeps strings; ``trainer_state`` has TRL's fields."""
    record = tmp_path / "record.json"
    monkeypatch.setenv("LAMPO_TEST_RECORD", str(record))
    state = TrainerProgress(global_step=4, max_steps=10, epoch=1.5)
    score_responses(["so 2", "A"], PROBLEMS, [], custom=[CustomReward(f"{user_module}.records")],
                    prompt_messages=CHAT, state=state)
    seen = json.loads(record.read_text())
    assert seen["completions"] == [[{"role": "assistant", "content": "so 2"}], [{"role": "assistant", "content": "A"}]]
    assert seen["prompts"] == CHAT
    assert seen["trainer_state"] == "namespace(global_step=4, max_steps=10, epoch=1.5)"
    text = CustomReward(f"{user_module}.records", completion_format="text")
    score_responses(["so 2", "A"], PROBLEMS, [], custom=[text], prompt_messages=CHAT, state=state)
    seen = json.loads(record.read_text())
    assert seen["completions"] == ["so 2", "A"] and seen["prompts"] == ["What is 1+1?", "Pick"]


@pytest.fixture(scope="module")
def trl_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A user module holding an instance of TRL's soft overlong punishment, as a TRL user writes it."""
    pytest.importorskip("trl")
    folder = tmp_path_factory.mktemp("user_trl")
    (folder / "user_trl_rewards.py").write_text(
        "from trl.rewards import get_soft_overlong_punishment\n"
        "overlong = get_soft_overlong_punishment(max_completion_len=4, soft_punish_cache=2)\n"
    )
    sys.path.insert(0, str(folder))
    yield "user_trl_rewards"
    sys.path.remove(str(folder))
    for path in ("trl.rewards.accuracy_reward", "trl.rewards.think_format_reward", "user_trl_rewards.overlong"):
        shared_runner(path).close()


def test_trl_own_reward_functions_work_unchanged_by_import_path(trl_module: str) -> None:
    """``trl.rewards.accuracy_reward``, ``think_format_reward`` and a ``get_soft_overlong_punishment`` instance,
    named by import path with no further setting, score as TRL's own call on the same messages does."""
    from trl.rewards import accuracy_reward, get_soft_overlong_punishment, think_format_reward

    problems = [Problem(id=f"q{i}", prompt="What is 1+1?", answer="2", solution="$2$") for i in range(3)]
    responses = ["<think>\nadd</think>\nSo \\boxed{2}", "\\boxed{3}", "<think>x</think> the answer is \\boxed{2}"]
    ids = [[1, 2], [1, 2, 3], [1, 2, 3, 4, 5]]
    custom = [CustomReward("trl.rewards.accuracy_reward"), CustomReward("trl.rewards.think_format_reward"),
              CustomReward(f"{trl_module}.overlong")]
    batch = score_responses(responses, problems, [], custom=custom, completion_ids=ids,
                            prompt_messages=[[{"role": "user", "content": "What is 1+1?"}]] * 3, guard=RewardGuard())
    # TRL's own call (grpo_trainer.py lines 1626-1628) on what its trainer passes for these completions
    completions = [[{"role": "assistant", "content": text}] for text in responses]
    solution = [p.solution for p in problems]
    assert batch.components["accuracy_reward"] == accuracy_reward(completions, solution) == [1.0, 0.0, 1.0]
    assert batch.components["think_format_reward"] == think_format_reward(completions) == [1.0, 0.0, 1.0]
    expected = get_soft_overlong_punishment(max_completion_len=4, soft_punish_cache=2)(ids)
    assert batch.components["overlong"] == expected == [0.0, -0.5, -1.0]
    assert all(batch.diagnostics[f"{k}_failures"] == 0.0 for k in ("accuracy_reward", "think_format_reward"))


@pytest.mark.parametrize(
    ("name", "got"),
    [
        ("plain_text", "raised AttributeError: 'list' object has no attribute 'strip'"),
        ("wrong_count", "returned 1 values for 2 completions"),
        ("not_a_number", "returned 'high' (str), not a number or None"),
        ("infinite", "returned a non-finite value (inf) for completion 0"),
    ],
)
def test_a_function_that_fails_the_first_batch_stops_the_run_in_one_line(user_module: str, name: str,
                                                                         got: str) -> None:
    """The first scored batch is the preflight: no reward silently drops out of a whole run."""
    with pytest.raises(RewardFunctionError) as error:
        score_responses(["a", "b"], PROBLEMS, [], custom=[CustomReward(f"{user_module}.{name}")],
                        prompt_messages=CHAT, guard=RewardGuard())
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"custom reward {user_module}.{name} failed on the first batch, before training: ")
    assert got in message
    assert "given completions as messages (completion_format: auto), set completion_format: text" in message


def test_non_finite_values_are_a_failed_batch_not_a_crash(user_module: str) -> None:
    batch = score_responses(["a", "b"], PROBLEMS, [RewardSpec("correctness")],
                            custom=[CustomReward(f"{user_module}.infinite")])
    assert all(math.isnan(v) for v in batch.components["infinite"]) and batch.total == [0.0, 0.0]
    assert batch.diagnostics["infinite_failures"] == 1.0


def test_failures_in_a_row_stop_the_run_a_single_one_is_counted(user_module: str) -> None:
    reward, guard = CustomReward(f"{user_module}.fails_on_bad"), RewardGuard(failure_limit=3)
    run = [["ok", "x"], ["bad", "x"], ["bad", "x"], ["ok", "x"], ["bad", "x"], ["bad", "x"]]
    for responses in run:  # the preflight passes; no three failures in a row
        batch = score_responses(responses, PROBLEMS, [], custom=[reward], guard=guard)
        assert batch.diagnostics["fails_on_bad_failures"] == float(responses[0] == "bad")
    with pytest.raises(RewardFunctionError, match=r"fails_on_bad failed on 3 batches in a row \(raised ValueError"):
        score_responses(["bad", "x"], PROBLEMS, [], custom=[reward], guard=guard)


def test_a_column_never_replaces_one_of_trls_arguments() -> None:
    with pytest.raises(ValueError, match=r"^columns: metadata column 'completion_ids' has the name of an argument"):
        ColumnMapping(question="q", answer="a", metadata=["level", "completion_ids"])
    sneaky = Problem(id="q", prompt="p", answer="1", metadata={"trainer_state": "data", "completions": "data"})
    columns = reward_columns([sneaky])
    assert "trainer_state" not in columns and "completions" not in columns


# ---- issue 21, item 12: the worker is contained --------------------------------------------------------------


def test_the_worker_has_a_memory_limit_and_the_graders_start_up_limit(user_module: str) -> None:
    assert CustomRewardRunner("x.f").startup_timeout_s == MathVerifier().startup_timeout_s == 300.0
    limited = CustomReward(f"{user_module}.allocates", memory_limit_gib=0.5)
    batch = score_responses(["a"], PROBLEMS[:1], [], custom=[limited])
    assert math.isnan(batch.components["allocates"][0]) and batch.diagnostics["allocates_failures"] == 1.0
    shared_runner(f"{user_module}.allocates", 0.5).close()


def test_a_timeout_kills_the_workers_whole_process_group(user_module: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    record = tmp_path / "grandchild.pid"
    monkeypatch.setenv("LAMPO_TEST_RECORD", str(record))
    batch = score_responses(["a"], PROBLEMS[:1], [], custom=[CustomReward(f"{user_module}.spawns_and_hangs",
                                                                           timeout_s=2.0)])
    assert batch.diagnostics["spawns_and_hangs_failures"] == 1.0
    pid = int(record.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    alive = _alive(pid)
    if alive:
        os.kill(pid, 9)  # do not leave it behind
    assert not alive, "the reward function's own subprocess outlived the timeout"


def _alive(pid: int) -> bool:
    """Running and not a zombie (an orphan waits for a reaper that a container may not run)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_fit_stops_at_the_first_rollout_when_a_reward_expects_another_format(user_module: str) -> None:
    """The training loop passes chat messages (its prompts are rendered from them) and runs the preflight on the
    first rollout: a plain-text function left at ``completion_format: auto`` stops the run before any update."""
    from test_module import fit

    from lampo_pl.module import LamPOModule
    from lampo_pl.policy import adapter_state
    from lampo_pl.rollout import SamplingParams
    from lampo_pl.settings import ComputeArgs, MethodArgs, RewardArgs

    module = LamPOModule(model="tiny:qwen3", group_size=2, prompts_per_step=2, method=MethodArgs(estimator="grpo"),
                         sampling=SamplingParams(temperature=1.0, max_new_tokens=4),
                         compute=ComputeArgs(micro_batch_size=4),
                         rewards=RewardArgs(custom=(CustomReward(f"{user_module}.plain_text"),)))
    module.configure_model()
    before = {k: v.clone() for k, v in adapter_state(module.policy_model, "policy").items()}
    with pytest.raises(RewardFunctionError, match=r"plain_text failed on the first batch, before training: raised "
                                                  r"AttributeError.*given completions as messages"):
        fit(module, steps=1)
    after = adapter_state(module.policy_model, "policy")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_trainer_state_reads_the_run_like_trls() -> None:
    """``trainer_state``: the step, the budget (``trainer.max_steps``; -1 is unbounded: 0, as TRL's default) and
    the fractional epoch of the DataModule's position (TRL's ``TrainerState.epoch``)."""
    from types import SimpleNamespace

    data = SimpleNamespace(position=lambda: (2, 3), batches_per_epoch=4)
    trainer = SimpleNamespace(datamodule=data, current_epoch=2, max_steps=40)
    assert TrainerProgress.of(trainer, 11) == TrainerProgress(global_step=11, max_steps=40, epoch=2.75)
    bare = SimpleNamespace(datamodule=None, current_epoch=1, max_steps=-1)
    assert TrainerProgress.of(bare, 5) == TrainerProgress(global_step=5, max_steps=0, epoch=1.0)
