"""Users' own reward functions, configured beside the built-in ones and called as TRL calls them.

    model:
      rewards:
        correctness: 1.0
        custom:
          - {function: trl.rewards.think_format_reward, weight: 0.5}     # TRL's own, unchanged
          - {function: examples.rewards.concise, weight: 0.1, completion_format: text}

A function written for TRL's ``GRPOTrainer`` works unchanged. It is called once per batch the way
TRL 1.16 calls a plain reward function on a conversational dataset (``trl/trainer/grpo_trainer.py``:
``_calculate_rewards`` lines 1584-1588 and 1626-1628 build the call; ``_generate_and_score_completions``
lines 2229-2245 decode the completions; line 2338 takes the prompts):

    fn(prompts=[...], completions=[...], completion_ids=[...], trainer_state=..., **columns)

1. ``completion_format`` (per function): ``messages`` passes what TRL passes for a prompt rendered
   from chat messages: ``completions = [[{"role": "assistant", "content": text}], ...]`` and
   ``prompts`` = the chat messages the prompt was rendered from (system turn, few-shot turns, the
   problem's user turn). ``text`` passes plain strings: the decoded responses and each problem's
   text (``Problem.prompt``, before the chat template), for functions written for plain text.
   ``auto`` (the default) is ``messages`` where the prompts were rendered from chat messages (the
   training loop always renders through the chat template), else ``text`` — as TRL decides by
   ``is_conversational``. ``completion_ids``: the responses' token ids (EOS included, as TRL's), or
   ``None`` where the caller has no tokens (scoring saved texts).
2. ``columns``: the problem's fields as one list each, one entry per response — ``id``,
   ``answer``, ``solution``, ``kind``, ``choices``, ``metadata`` — and every ``metadata`` key
   (``None`` where a problem lacks it), as TRL passes each dataset column. A column never replaces
   one of TRL's own arguments (``inputs.RESERVED_ARGUMENTS``; data columns so named are refused
   when the data loads).
3. ``trainer_state``: an object with ``global_step``, ``max_steps`` and ``epoch`` (fractional, as
   TRL's ``TrainerState``). TRL's ``log_extra``, ``log_metric`` and ``environments`` are not passed.
4. It returns one number per completion, or ``None`` where it does not apply. ``None`` becomes NaN:
   left out of the weighted sum (TRL's ``nansum``) and of the logged mean ``train/reward_<name>``.
   Unlike TRL, a response that no reward scores is not dropped from its group's baseline: the
   built-in correctness reward scores every response.

No reward silently drops out. Checked at start: `check_custom_rewards` imports each function when
the module is built from the config (before any model loads); a wrong path is one line naming it.
The first scored batch is a preflight (``RewardGuard``): a function that raises there, returns the
wrong count, a non-number or a non-finite value stops the run with one line naming it, what it
got and the completion format it was given. Later, one failed batch scores ``None`` for the whole
batch (counted as ``reward_diag/<name>_failures``); ``failure_limit`` failed batches in a row stop
the run. Bounded and contained like math-verify: the function runs in a child process
(`lampo_pl.rewards.worker`) that imports its module once, with an address-space limit
(``memory_limit_gib``); a call past ``timeout_s`` kills the child's whole process group. The
arguments and results cross a pipe, so they must pickle (plain Python values do).
"""

from __future__ import annotations

import base64
import functools
import importlib
import logging
import math
import os
import pickle
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, Literal

from lampo_pl.data.record import Problem
from lampo_pl.errors import UserError
from lampo_pl.rewards.inputs import RESERVED_ARGUMENTS
from lampo_pl.rewards.worker import LineWorker

logger = logging.getLogger(__name__)

_WORKER_SCRIPT = Path(__file__).with_name("custom_reward_worker.py")
BUILT_IN = ("correctness", "density", "format")  # compose.REWARD_NAMES, without the import cycle
_NOT_COLUMNS = ("prompt", "messages")  # the prompt is passed as ``prompts``; messages render it
CompletionFormat = Literal["auto", "text", "messages"]
Messages = list[dict[str, str]]


class RewardFunctionError(UserError):
    """A custom reward failed on the preflight batch or on ``failure_limit`` batches in a row (one line)."""


def with_working_directory_on_path() -> str:
    """Put the working directory first on ``sys.path`` (once) and return it.

    ``python -m lampo_pl`` puts it there; the ``lampo`` console script puts its own ``bin`` folder
    there instead, so ``examples.rewards`` would import under one spelling of the command and not
    the other (issue 25 item 1). Reward worker children inherit ``sys.path`` (``env`` below).
    """
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)
    return cwd


def import_user_module(module_name: str, what: str) -> ModuleType:
    """Import a user's module from the working directory or the Python path.

    Raises:
        ValueError: one line naming ``what``, the module, the reason and where it looked.
    """
    cwd = with_working_directory_on_path()
    try:
        return importlib.import_module(module_name)
    except Exception as error:  # ImportError, or the module's own code failing
        raise ValueError(f"{what}: cannot import module {module_name!r} ({error}); looked in the working directory "
                         f"{cwd} and the Python path (PYTHONPATH, installed packages)") from error


def resolve_function(path: str) -> Callable[..., Any]:
    """The callable at ``package.module.function`` (or ``package.module:function``).

    Raises:
        ValueError: one line naming the path, when it does not import or is not callable.
    """
    module_name, sep, attribute = path.replace(":", ".").rpartition(".")
    if not sep or not module_name or not attribute:
        raise ValueError(f"custom reward {path!r}: expected an import path like my_module.my_reward")
    module = import_user_module(module_name, f"custom reward {path!r}")
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ValueError(f"custom reward {path!r}: module {module_name!r} has no callable {attribute!r}")
    return function


@dataclass(frozen=True)
class CustomReward:
    """A user's reward function (module docstring) and its weight in r_i = Σ_k c_k r_k.

    Attributes:
        function: Import path of a TRL-style reward function, e.g. ``trl.rewards.accuracy_reward``.
        weight: c_k.
        name: Logged as ``train/reward_<name>``; default the function's name.
        timeout_s: Hard time limit of one call (one batch); past it the batch scores None.
        completion_format: What ``prompts`` and ``completions`` are: ``messages`` (TRL's conversational
            format: ``completions[i] = [{"role": "assistant", "content": text}]``, ``prompts[i]`` the chat
            messages), ``text`` (plain strings, for functions written for plain text) or ``auto``
            (``messages`` for prompts rendered from chat messages, as TRL does).
        memory_limit_gib: Address-space limit of the function's child process (``RLIMIT_AS``): a call
            past it gets a ``MemoryError`` (a failed batch) instead of the OOM killer taking the
            trainer; null: no limit. 8 GiB leaves room for a module that imports torch, transformers
            and TRL (3.0 GiB of address space on CPU, measured).
    """

    function: str
    weight: float = 1.0
    name: str | None = None
    timeout_s: float = 60.0
    completion_format: CompletionFormat = "auto"
    memory_limit_gib: float | None = 8.0

    def __post_init__(self) -> None:
        if self.name is None:
            object.__setattr__(self, "name", self.function.replace(":", ".").rpartition(".")[2])
        if self.name in BUILT_IN:
            raise ValueError(f"custom reward {self.function!r}: name {self.name!r} is a built-in reward; set name:")
        if not math.isfinite(self.weight) or self.timeout_s <= 0:
            raise ValueError(f"custom reward {self.function!r}: weight must be finite and timeout_s > 0")
        if self.completion_format not in ("auto", "text", "messages"):
            raise ValueError(f"custom reward {self.function!r}: completion_format={self.completion_format!r}; "
                             "allowed auto | text | messages")
        if self.memory_limit_gib is not None and not (math.isfinite(self.memory_limit_gib)
                                                      and self.memory_limit_gib > 0):
            raise ValueError(f"custom reward {self.function!r}: memory_limit_gib={self.memory_limit_gib!r}; "
                             "allowed null or a number > 0")

    @property
    def key(self) -> str:
        """The component name (``name`` after defaulting)."""
        assert self.name is not None
        return self.name

    def format_for(self, chat: bool) -> Literal["text", "messages"]:
        """The format this function is given when the prompts were (``chat``) or were not rendered from messages."""
        if self.completion_format == "auto":
            return "messages" if chat else "text"
        return self.completion_format


def check_custom_rewards(rewards: Sequence[CustomReward]) -> None:
    """Import every function now (the module calls this when it is built, before any model loads).

    Not in ``CustomReward.__post_init__``: the CLI parser would bury the one-line error in its usage text.

    Raises:
        ValueError: one line naming the first path that does not import or is not callable.
    """
    for reward in rewards:
        resolve_function(reward.function)


@dataclass(frozen=True)
class TrainerProgress:
    """What a reward function reads of TRL's ``TrainerState`` (``trainer_state``): where the run stands.

    Attributes:
        global_step: Optimiser steps taken.
        max_steps: The run's step budget (0: unbounded).
        epoch: Fractional epochs of training data seen (TRL's ``TrainerState.epoch``).
    """

    global_step: int = 0
    max_steps: int = 0
    epoch: float = 0.0

    @classmethod
    def of(cls, trainer: Any, global_step: int) -> TrainerProgress:
        """From a Lightning trainer; ``epoch`` from its DataModule's position where it has one."""
        data = getattr(trainer, "datamodule", None)
        epoch = float(trainer.current_epoch)
        if data is not None and hasattr(data, "position") and getattr(data, "batches_per_epoch", 0):
            done, index = data.position()
            epoch = done + index / data.batches_per_epoch
        return cls(global_step, max(int(trainer.max_steps or 0), 0), epoch)


class CustomRewardRunner(LineWorker):
    """Calls one reward function in a child process; thread-safe, never raises from `__call__`."""

    def __init__(self, function: str, memory_limit_gib: float | None = 8.0) -> None:
        super().__init__()  # LineWorker's start-up limit, as the grader's (a loaded machine overran 60 s)
        self.function = function
        self.memory_limit_gib = memory_limit_gib
        self.name = f"reward worker for {function}"

    def argv(self) -> list[str]:
        # -P: the script's folder (lampo_pl/rewards) must not shadow stdlib modules.
        limit = "0" if self.memory_limit_gib is None else str(int(self.memory_limit_gib * 1024**3))
        return [sys.executable, "-P", str(_WORKER_SCRIPT), self.function, limit]

    def env(self) -> dict[str, str]:
        # The child imports the function from where the trainer would (its sys.path, cwd for "").
        paths = [p or os.getcwd() for p in sys.path]
        return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}

    def __call__(self, kwargs: dict[str, Any], n: int, timeout_s: float) -> list[float] | str:
        """``n`` values (NaN for None) or, on failure, one line saying what it got."""
        request = base64.b64encode(pickle.dumps(kwargs))
        with self.lock:
            line = self.ask(request, timeout_s)
        if line is None:
            return f"timed out after {timeout_s} s"
        kind, _, payload = line.partition(" ")
        if kind == "error":  # the function raised; the child lives on
            return "raised " + base64.b64decode(payload).decode(errors="replace")
        if kind != "ok":
            self._kill()
            return "the worker died (out of memory?), did not start, or answered garbage"
        return check_values(pickle.loads(base64.b64decode(payload)), n)


def check_values(values: Any, n: int) -> list[float] | str:
    """``n`` finite numbers (NaN for None), or one line saying what came back instead."""
    if not isinstance(values, (list, tuple)) or len(values) != n:
        got = f"{len(values)} values" if isinstance(values, (list, tuple)) else f"a {type(values).__name__}"
        return f"returned {got} for {n} completions"
    try:
        out = [math.nan if v is None else float(v) for v in values]
    except (TypeError, ValueError):
        bad = next(v for v in values if v is not None and not _is_number(v))
        return f"returned {bad!r} ({type(bad).__name__}), not a number or None"
    for i, value in enumerate(out):
        if values[i] is not None and not math.isfinite(value):  # inf would crash the advantages, nan is a bug
            return f"returned a non-finite value ({value}) for completion {i}"
    return out


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


@functools.cache
def shared_runner(function: str, memory_limit_gib: float | None = 8.0) -> CustomRewardRunner:
    """The process-wide runner of one function; its child starts on first use."""
    return CustomRewardRunner(function, memory_limit_gib)


def reward_columns(problems: Sequence[Problem]) -> dict[str, list[Any]]:
    """The problems' fields as TRL's dataset columns: one list per field, metadata keys flattened.

    A metadata key named like one of TRL's own arguments (``RESERVED_ARGUMENTS``) is left out: the data
    loaders refuse such columns, and an argument must never be replaced by data.
    """
    names = [f.name for f in fields(Problem) if f.name not in _NOT_COLUMNS]
    columns = {name: [getattr(p, name) for p in problems] for name in names}
    meta_keys = sorted({key for p in problems for key in p.metadata} - set(columns) - set(RESERVED_ARGUMENTS))
    columns |= {key: [p.metadata.get(key) for p in problems] for key in meta_keys}
    return columns


@dataclass
class RewardGuard:
    """No custom reward silently drops out: the first batch is a preflight, and failures in a row stop the run.

    Attributes:
        failure_limit: Failed batches in a row (after the preflight) that stop the run.
        checked: Whether the preflight batch has been scored.
        streaks: Per function, its current run of failed batches.
    """

    failure_limit: int = 3
    checked: bool = False
    streaks: dict[str, int] = field(default_factory=dict)

    def record(self, reward: CustomReward, failure: str | None, given: str) -> None:
        """Count one batch of ``reward`` (``failure``: why it failed, else ``None``); raise to stop the run."""
        if failure is None:
            self.streaks[reward.function] = 0
            return
        streak = self.streaks[reward.function] = self.streaks.get(reward.function, 0) + 1
        if not self.checked:
            other = "text" if given == "messages" else "messages"
            raise RewardFunctionError(
                f"custom reward {reward.function} failed on the first batch, before training: {failure}; it was "
                f"given completions as {given} (completion_format: {reward.completion_format}), set "
                f"completion_format: {other} if it expects {other}"
            )
        if streak >= self.failure_limit:
            raise RewardFunctionError(
                f"custom reward {reward.function} failed on {streak} batches in a row ({failure}); "
                "fix it, or raise model.rewards.failure_limit"
            )


def call_arguments(
    problems: Sequence[Problem],
    responses: Sequence[str],
    prompt_messages: Sequence[Messages] | None,
    completion_ids: Sequence[Sequence[int]] | None,
    state: TrainerProgress,
    given: Literal["text", "messages"],
) -> dict[str, Any]:
    """The keyword arguments of one call, in ``given`` format (module docstring); TRL's own arguments last,
    so that no column replaces one."""
    if given == "messages":
        prompts: list[Any] = [list(m) for m in prompt_messages] if prompt_messages is not None else [
            [{"role": "user", "content": p.prompt}] for p in problems]
        completions: list[Any] = [[{"role": "assistant", "content": text}] for text in responses]
    else:
        prompts, completions = [p.prompt for p in problems], list(responses)
    return {
        **reward_columns(problems),
        "prompts": prompts,
        "completions": completions,
        "completion_ids": None if completion_ids is None else [list(ids) for ids in completion_ids],
        "trainer_state": SimpleNamespace(global_step=state.global_step, max_steps=state.max_steps, epoch=state.epoch),
    }


def score_custom(
    rewards: Sequence[CustomReward],
    responses: Sequence[str],
    problems: Sequence[Problem],
    *,
    completion_ids: Sequence[Sequence[int]] | None = None,
    state: TrainerProgress | None = None,
    prompt_messages: Sequence[Messages] | None = None,
    guard: RewardGuard | None = None,
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Each custom reward's values (NaN where None or failed) and failure counts for the logs.

    ``prompt_messages``: per response, the chat messages its prompt was rendered from (``None``: plain-text
    prompts). ``guard``: stops the run on a failed preflight batch or too many failures in a row.
    """
    state = state or TrainerProgress()
    components: dict[str, list[float]] = {}
    diagnostics: dict[str, float] = {}
    for reward in rewards:
        given = reward.format_for(chat=prompt_messages is not None)
        kwargs = call_arguments(problems, responses, prompt_messages, completion_ids, state, given)
        result = shared_runner(reward.function, reward.memory_limit_gib)(kwargs, len(responses), reward.timeout_s)
        failure = result if isinstance(result, str) else None
        if guard is not None:
            guard.record(reward, failure, given)
        if failure is not None:
            logger.warning("custom reward %s failed on this batch (scored None): %s", reward.function, failure)
        components[reward.key] = [math.nan] * len(responses) if failure is not None else result  # type: ignore[assignment]
        diagnostics[f"{reward.key}_failures"] = float(failure is not None)
    if guard is not None:
        guard.checked = True
    return components, diagnostics
