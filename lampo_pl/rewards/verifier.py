"""Bounded-time math-verify: one long-lived child process, killed and restarted on a timeout.

The process machinery and why a child process (math-verify's ``signal.alarm`` works only in the
main thread and cannot interrupt C-level big-integer work) are in `lampo_pl.rewards.worker`.
The trainer never imports sympy. Costs: ~1.3 s to start the worker once (and after each
timeout), ~0.1 ms of pipe round trip per unique (answer, reference) pair.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from lampo_pl.rewards.worker import LineWorker

VerifyStatus = Literal["correct", "wrong", "parse_failure", "timeout", "error"]
_WORKER_STATUSES = frozenset({"correct", "wrong", "parse_failure", "error"})
_WORKER_SCRIPT = Path(__file__).with_name("math_verify_worker.py")


class MathVerifier(LineWorker):
    """Grades (prediction, reference) pairs with math-verify in a child process.

    Thread-safe (one pair at a time under a lock); safe across ``fork`` (a forked child starts
    its own worker instead of sharing the parent's pipes). Never raises from `verify`. Importing
    math-verify takes ~1.3 s (measured); ``LineWorker``'s start-up limit covers a loaded machine.
    """

    name = "math-verify worker"

    def argv(self) -> list[str]:
        # -P: the script's folder (lampo_pl/rewards) must not shadow stdlib modules.
        return [sys.executable, "-P", str(_WORKER_SCRIPT)]

    def verify(self, pairs: Sequence[tuple[str, str]], timeout_s: float) -> list[VerifyStatus]:
        """One status per ``(prediction, reference)`` pair, each pair bounded by ``timeout_s``."""
        with self.lock:
            statuses: list[VerifyStatus] = []
            for pred, gold in pairs:
                if not self.ensure_started():
                    statuses.extend(["error"] * (len(pairs) - len(statuses)))
                    break
                line = self.ask(json.dumps({"pred": pred, "gold": gold}).encode(), timeout_s)
                if line is None:
                    statuses.append("timeout")
                elif line in _WORKER_STATUSES:
                    statuses.append(line)  # type: ignore[arg-type]
                else:  # EOF or garbage: the worker crashed
                    self._kill()
                    statuses.append("error")
            return statuses


@functools.cache
def shared_verifier() -> MathVerifier:
    """The process-wide verifier every `grade_math` call shares; its worker starts on first use."""
    return MathVerifier()
