"""Users' own reward functions, configured beside the built-in ones and called as TRL calls them.

    model:
      rewards:
        correctness: 1.0
        custom:
          - {function: examples.rewards.concise, weight: 0.5}

A function written for TRL's ``GRPOTrainer`` works unchanged. It is called once per batch the way
TRL 1.16 calls a plain reward function (``trl/trainer/grpo_trainer.py``, ``_calculate_rewards``,
standard text format):

    fn(prompts=[...], completions=[...], completion_ids=[...], trainer_state=..., **columns)

1. ``prompts``: each response's problem text (``Problem.prompt``, before the chat template);
   ``completions``: the decoded responses; ``completion_ids``: their token ids (EOS included, as
   TRL's), or ``None`` where the caller has no tokens (scoring saved texts).
2. ``columns``: the problem's fields as one list each, one entry per response — ``id``,
   ``answer``, ``solution``, ``kind``, ``choices``, ``metadata`` — and every ``metadata`` key
   (``None`` where a problem lacks it), as TRL passes each dataset column.
3. ``trainer_state``: an object with ``global_step`` (TRL passes its whole ``TrainerState``).
   TRL's ``log_extra``, ``log_metric`` and ``environments`` callbacks are not passed.
4. It returns one number per completion, or ``None`` where it does not apply. ``None`` becomes NaN:
   left out of the weighted sum (TRL's ``nansum``) and of the logged mean ``train/reward_<name>``.
   Unlike TRL, a response that no reward scores is not dropped from its group's baseline: the
   built-in correctness reward scores every response.

Checked at start: `check_custom_rewards` imports each function when the module is built from the
config (before any model loads); a wrong path is one line naming it. Bounded in time like
math-verify: the function runs in a child process (`lampo_pl.rewards.worker`) that imports its
module once; a call past ``timeout_s`` kills it, and a call that raises, times out or returns
the wrong number of values scores ``None`` for the whole batch, counted as
``reward_diag/<name>_failures``. The arguments and
results cross a pipe, so they must pickle (plain Python values do).
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
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

from lampo_pl.data.record import Problem
from lampo_pl.rewards.worker import LineWorker

logger = logging.getLogger(__name__)

_WORKER_SCRIPT = Path(__file__).with_name("custom_reward_worker.py")
BUILT_IN = ("correctness", "density", "format")  # compose.REWARD_NAMES, without the import cycle
_NOT_COLUMNS = ("prompt", "messages")  # the prompt is passed as ``prompts``; messages render it


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
        function: Import path of a TRL-style reward function, e.g. ``my_module.my_reward``.
        weight: c_k.
        name: Logged as ``train/reward_<name>``; default the function's name.
        timeout_s: Hard time limit of one call (one batch); past it the batch scores None.
    """

    function: str
    weight: float = 1.0
    name: str | None = None
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.name is None:
            object.__setattr__(self, "name", self.function.replace(":", ".").rpartition(".")[2])
        if self.name in BUILT_IN:
            raise ValueError(f"custom reward {self.function!r}: name {self.name!r} is a built-in reward; set name:")
        if not math.isfinite(self.weight) or self.timeout_s <= 0:
            raise ValueError(f"custom reward {self.function!r}: weight must be finite and timeout_s > 0")

    @property
    def key(self) -> str:
        """The component name (``name`` after defaulting)."""
        assert self.name is not None
        return self.name


def check_custom_rewards(rewards: Sequence[CustomReward]) -> None:
    """Import every function now (the module calls this when it is built, before any model loads).

    Not in ``CustomReward.__post_init__``: the CLI parser would bury the one-line error in its usage text.

    Raises:
        ValueError: one line naming the first path that does not import or is not callable.
    """
    for reward in rewards:
        resolve_function(reward.function)


class CustomRewardRunner(LineWorker):
    """Calls one reward function in a child process; thread-safe, never raises from `__call__`."""

    def __init__(self, function: str, startup_timeout_s: float = 60.0) -> None:
        super().__init__(startup_timeout_s)
        self.function = function
        self.name = f"reward worker for {function}"

    def argv(self) -> list[str]:
        # -P: the script's folder (lampo_pl/rewards) must not shadow stdlib modules.
        return [sys.executable, "-P", str(_WORKER_SCRIPT), self.function]

    def env(self) -> dict[str, str]:
        # The child imports the function from where the trainer would (its sys.path, cwd for "").
        paths = [p or os.getcwd() for p in sys.path]
        return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}

    def __call__(self, kwargs: dict[str, Any], n: int, timeout_s: float) -> list[float] | str:
        """``n`` values (NaN for None) or, on failure, one line saying why."""
        request = base64.b64encode(pickle.dumps(kwargs))
        with self.lock:
            line = self.ask(request, timeout_s)
        if line is None:
            return f"timed out after {timeout_s} s"
        kind, _, payload = line.partition(" ")
        if kind == "error":  # the function raised; the child lives on
            return base64.b64decode(payload).decode(errors="replace")
        if kind != "ok":
            self._kill()
            return "the worker died, did not start, or answered garbage"
        values = pickle.loads(base64.b64decode(payload))
        if not isinstance(values, (list, tuple)) or len(values) != n:
            got = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
            return f"returned {got} values for {n} completions"
        try:
            return [math.nan if v is None else float(v) for v in values]
        except (TypeError, ValueError) as error:
            return f"returned a value that is not a number or None ({error})"


@functools.cache
def shared_runner(function: str) -> CustomRewardRunner:
    """The process-wide runner of one function; its child starts on first use."""
    return CustomRewardRunner(function)


def reward_columns(problems: Sequence[Problem]) -> dict[str, list[Any]]:
    """The problems' fields as TRL's dataset columns: one list per field, metadata keys flattened."""
    names = [f.name for f in fields(Problem) if f.name not in _NOT_COLUMNS]
    columns = {name: [getattr(p, name) for p in problems] for name in names}
    meta_keys = sorted({key for p in problems for key in p.metadata} - set(columns) - {"prompts", "completions"})
    columns |= {key: [p.metadata.get(key) for p in problems] for key in meta_keys}
    return columns


def score_custom(
    rewards: Sequence[CustomReward],
    responses: Sequence[str],
    problems: Sequence[Problem],
    *,
    completion_ids: Sequence[Sequence[int]] | None = None,
    step: int | None = None,
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Each custom reward's values (NaN where None or failed) and failure counts for the logs."""
    kwargs = {
        "prompts": [p.prompt for p in problems],
        "completions": list(responses),
        "completion_ids": None if completion_ids is None else [list(ids) for ids in completion_ids],
        "trainer_state": SimpleNamespace(global_step=step),
        **reward_columns(problems),
    }
    components: dict[str, list[float]] = {}
    diagnostics: dict[str, float] = {}
    for reward in rewards:
        result = shared_runner(reward.function)(kwargs, len(responses), reward.timeout_s)
        failed = isinstance(result, str)
        if failed:
            logger.warning("custom reward %s failed on this batch (scored None): %s", reward.function, result)
        components[reward.key] = [math.nan] * len(responses) if failed else result  # type: ignore[assignment]
        diagnostics[f"{reward.key}_failures"] = float(failed)
    return components, diagnostics
