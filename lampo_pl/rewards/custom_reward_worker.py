"""The child process that runs one user reward function for `lampo_pl.rewards.custom.CustomRewardRunner`.

Run as ``python -P custom_reward_worker.py package.module.function LIMIT_BYTES`` with the trainer's
sys.path in ``PYTHONPATH``; ``LIMIT_BYTES`` > 0 caps the address space (``RLIMIT_AS``), so a runaway
allocation is a ``MemoryError`` here, not the OOM killer taking the trainer. Protocol, one line each
way: the parent writes the call's keyword arguments as base64 pickle; the worker answers
``ok <base64 pickle of the returned list>`` or ``error <base64 of a one-line reason>``. It prints
``ready`` once the function is imported (``import_error <reason>`` if it cannot be). Dies with its
parent and ignores Ctrl-C, like the math-verify worker; it leads its own process group, which a
timeout kills whole (``worker.LineWorker``).
"""

from __future__ import annotations

import base64
import ctypes
import importlib
import os
import pickle
import resource
import signal
import sys
import traceback

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _confine(limit_bytes: int) -> None:
    if limit_bytes > 0:  # before the import: the function's module may allocate at import too
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    try:  # a worker stuck in C code never reads the EOF a dead parent leaves on stdin
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def main() -> None:
    # Keep the protocol channel private: whatever the function prints goes to stderr instead.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    _confine(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    module_name, _, attribute = sys.argv[1].replace(":", ".").rpartition(".")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except Exception as error:  # the parent checked the path already; report, do not hang
        protocol.write(f"import_error {error!r}".replace("\n", " ") + "\n")
        return
    protocol.write("ready\n")
    for line in iter(sys.stdin.buffer.readline, b""):
        try:
            kwargs = pickle.loads(base64.b64decode(line))
            values = list(function(**kwargs))
            answer = "ok " + base64.b64encode(pickle.dumps(values)).decode()
        except Exception as error:  # the parent scores the batch None and logs the reason
            last = traceback.extract_tb(error.__traceback__)[-1]
            reason = f"{type(error).__name__}: {error} ({last.filename}:{last.lineno})"
            answer = "error " + base64.b64encode(reason.encode()).decode()
        protocol.write(answer + "\n")


if __name__ == "__main__":
    main()
