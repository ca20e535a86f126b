"""A long-lived child process spoken to in lines, killed and restarted when it overruns a deadline.

The time bound behind every grader that may run away: math-verify (`verifier.MathVerifier`) and
users' own reward functions (`custom.CustomRewardRunner`). Why a child process and not a thread or
``signal.alarm``:
1. ``signal.alarm`` only works in the main thread (it raises ``ValueError`` in callbacks and
   evaluation threads) and takes whole seconds; a thread cannot be stopped at all.
2. An alarm only interrupts between Python bytecodes: C-level big-integer work such as
   ``10^{10^{10}}`` or ``(10^6)!`` ran 12 s to >20 s under a 3 s alarm on this machine. Killing
   a process stops anything.
3. The trainer's memory is not touched by a runaway computation (the workers also cap their own
   address space with ``RLIMIT_AS``).
4. The child leads its own process group (``start_new_session``); a timeout kills the whole group
   (``os.killpg``), so a reward function's own subprocesses do not outlive it.
Protocol: the child prints ``ready`` once it has imported what it needs, then answers each request
line with one line. Linux/POSIX only (``select`` on a pipe), like the rest of the stack.
"""

from __future__ import annotations

import atexit
import logging
import os
import select
import signal
import subprocess
import threading
import time

logger = logging.getLogger(__name__)


class LineWorker:
    """One child process at a time; safe across ``fork`` (a forked copy starts its own child).

    Subclasses give the command line (`argv`) and speak through `ask` while holding `lock`.
    """

    name = "worker"

    def __init__(self, startup_timeout_s: float = 300.0) -> None:
        """
        Args:
            startup_timeout_s: How long a fresh child may take to import what it needs (not
                counted against any request). Generous: a child that fails at import exits at once,
                so only a hung one waits this long, while 60 s was overrun on a 2-core machine
                running four processes (every request until a start succeeded was scored 0).
        """
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner_pid = -1
        self._buffer = b""
        self.lock = threading.Lock()
        self.restarts = 0  # children started after the first one (timeouts, crashes)
        atexit.register(self.close)

    def argv(self) -> list[str]:
        """The child's command line."""
        raise NotImplementedError

    def env(self) -> dict[str, str] | None:
        """The child's environment (``None``: the parent's)."""
        return None

    def close(self) -> None:
        """Stop the child (if this process started it)."""
        if self._proc is not None and self._owner_pid == os.getpid():
            self._kill()

    def ask(self, request: bytes, timeout_s: float) -> str | None:
        """Send one request line and wait for the answer line.

        Returns the answer; ``None`` past ``timeout_s`` (the child is killed, the next request
        starts a fresh one); ``""`` when the child is not running or died (also killed).
        """
        if not self.ensure_started():
            return ""
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(request + b"\n")
            self._proc.stdin.flush()
        except OSError:  # the child died since the last request (e.g. killed from outside)
            self._kill()
            return ""
        line = self._read_line(time.monotonic() + timeout_s)
        if not line:  # None: timeout; "": EOF, the child crashed
            self._kill()
        return line

    def ensure_started(self) -> bool:
        """Start the child unless it is running; ``False`` when it cannot start."""
        if self._owner_pid != os.getpid():  # first use, or we are a forked copy: the child is not ours
            self._proc, self._buffer = None, b""
        if self._proc is not None and self._proc.poll() is None:
            return True
        if self._proc is not None:
            self._kill()
        started_before = self._owner_pid == os.getpid()
        try:
            self._proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=self.env(),
                start_new_session=True,  # the terminal's Ctrl-C is for the trainer only
            )
        except OSError:
            logger.exception("could not start the %s", self.name)
            return False
        self._owner_pid, self._buffer = os.getpid(), b""
        self.restarts += int(started_before)
        ready = self._read_line(time.monotonic() + self.startup_timeout_s)
        if ready != "ready":
            logger.error("the %s did not start: %s", self.name, ready or "no answer")
            self._kill()
            return False
        return True

    def _read_line(self, deadline: float) -> str | None:
        """The child's next line; ``""`` at EOF; ``None`` if ``deadline`` passes first."""
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
        try:  # the whole group: the child and whatever it started (start_new_session made it the leader)
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
            logger.warning("%s %d did not exit after SIGKILL", self.name, proc.pid)
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:  # unflushed bytes to a dead pipe
                pass
