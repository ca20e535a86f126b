"""Bounded-time math-verify: one long-lived child process, killed and restarted on a timeout.

Why a child process rather than math-verify's built-in timeout:
1. math-verify bounds work with ``signal.alarm`` (math_verify/utils.py), which only works in the
   main thread — it raises ``ValueError`` elsewhere (callbacks, evaluation threads) — and takes
   whole seconds.
2. An alarm only interrupts between Python bytecodes: C-level big-integer work such as
   ``10^{10^{10}}`` or ``(10^6)!`` ran 12 s to >20 s under a 3 s alarm on this machine. Killing
   a process stops anything.
3. The trainer never imports sympy; its memory is not touched by a runaway parse.
Costs: ~1.3 s to start the worker once (and after each timeout), ~0.1 ms of pipe round trip per
unique (answer, reference) pair. Linux/POSIX only (``select`` on a pipe), like the rest of the
stack (bitsandbytes, fork-based data loading).
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

VerifyStatus = Literal["correct", "wrong", "parse_failure", "timeout", "error"]
_WORKER_STATUSES = frozenset({"correct", "wrong", "parse_failure", "error"})
_WORKER_SCRIPT = Path(__file__).with_name("math_verify_worker.py")


class MathVerifier:
    """Grades (prediction, reference) pairs with math-verify in a child process.

    Thread-safe (one pair at a time under a lock); safe across ``fork`` (a forked child starts
    its own worker instead of sharing the parent's pipes). Never raises from `verify`.
    """

    def __init__(self, startup_timeout_s: float = 60.0) -> None:
        """
        Args:
            startup_timeout_s: How long a fresh worker may take to import math-verify (~1.3 s
                measured; generous for a loaded machine). Not counted against any pair.
        """
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner_pid = -1
        self._buffer = b""
        self._lock = threading.Lock()
        self.restarts = 0  # workers started after the first one (timeouts, crashes)
        atexit.register(self.close)

    def verify(self, pairs: Sequence[tuple[str, str]], timeout_s: float) -> list[VerifyStatus]:
        """One status per ``(prediction, reference)`` pair, each pair bounded by ``timeout_s``."""
        with self._lock:
            statuses: list[VerifyStatus] = []
            for pred, gold in pairs:
                if not self._ensure_worker():
                    statuses.extend(["error"] * (len(pairs) - len(statuses)))
                    break
                statuses.append(self._verify_one(pred, gold, timeout_s))
            return statuses

    def close(self) -> None:
        """Stop the worker (if this process started it)."""
        if self._proc is not None and self._owner_pid == os.getpid():
            self._kill()

    def _verify_one(self, pred: str, gold: str, timeout_s: float) -> VerifyStatus:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps({"pred": pred, "gold": gold}).encode() + b"\n")
            self._proc.stdin.flush()
        except OSError:  # the worker died since the last pair (e.g. killed from outside)
            self._kill()
            return "error"
        line = self._read_line(time.monotonic() + timeout_s)
        if line is None:
            self._kill()  # the next pair starts a fresh worker
            return "timeout"
        if line not in _WORKER_STATUSES:  # EOF (b"") or garbage: the worker crashed
            self._kill()
            return "error"
        return line  # type: ignore[return-value]

    def _ensure_worker(self) -> bool:
        if self._owner_pid != os.getpid():  # first use, or we are a forked copy: the worker is not ours
            self._proc, self._buffer = None, b""
        if self._proc is not None and self._proc.poll() is None:
            return True
        if self._proc is not None:
            self._kill()
        started_before = self._owner_pid == os.getpid()
        try:
            self._proc = subprocess.Popen(
                # -P: the script's folder (lampo_pl/rewards) must not shadow stdlib modules.
                [sys.executable, "-P", str(_WORKER_SCRIPT)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                start_new_session=True,  # the terminal's Ctrl-C is for the trainer only
            )
        except OSError:
            logger.exception("could not start the math-verify worker")
            return False
        self._owner_pid, self._buffer = os.getpid(), b""
        self.restarts += int(started_before)
        if self._read_line(time.monotonic() + self.startup_timeout_s) != "ready":
            logger.error("the math-verify worker did not start (is math-verify installed?)")
            self._kill()
            return False
        return True

    def _read_line(self, deadline: float) -> str | None:
        """The worker's next line; ``""`` at EOF; ``None`` if ``deadline`` passes first."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return ""
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode(errors="replace")

    def _kill(self) -> None:
        proc, self._proc, self._buffer = self._proc, None, b""
        if proc is None:
            return
        proc.kill()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
            logger.warning("math-verify worker %d did not exit after SIGKILL", proc.pid)
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:  # unflushed bytes to a dead pipe
                pass


@functools.cache
def shared_verifier() -> MathVerifier:
    """The process-wide verifier every `grade_math` call shares; its worker starts on first use."""
    return MathVerifier()
