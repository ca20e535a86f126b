"""The child process that runs math-verify for `lampo_pl.rewards.verifier.MathVerifier`.

Run as a script (``python -P math_verify_worker.py``), it imports only the standard library and
math-verify. Protocol, one line each way: the parent writes ``{"pred": ..., "gold": ...}`` as
JSON; the worker answers one status word (`STATUSES`). It prints ``ready`` once imported and warmed
(one grade builds math-verify's parser, so the first request's time limit is not spent on it).

math-verify's own timeouts are switched off here (``parsing_timeout=None``,
``timeout_seconds=None``): the parent bounds each pair by killing this process, which also stops
what ``signal.alarm`` cannot — C-level big-integer work such as ``10^{10^{10}}`` or ``(10^6)!``
ran for 12 s to >20 s under a 3 s alarm here (math_verify/utils.py uses ``signal.alarm``, which
only interrupts between Python bytecodes and only in the main thread).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import resource
import signal
import sys
from functools import lru_cache
from typing import Any

STATUSES = ("correct", "wrong", "parse_failure", "error")
# A runaway power or factorial allocates gigabytes before any timeout fires; the training process
# shares the host's memory, so the worker gets a MemoryError (graded "error") instead.
_MEMORY_LIMIT_BYTES = 4 * 1024**3
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _confine() -> None:
    """Die with the parent, ignore the terminal's Ctrl-C, cap memory."""
    # A worker stuck in C code never reads the EOF a dead parent leaves on stdin: ask the kernel
    # to kill it with the parent (Linux only; elsewhere the EOF path is the only one).
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (_MEMORY_LIMIT_BYTES, _MEMORY_LIMIT_BYTES))
    except (ValueError, OSError):
        pass


def main() -> None:
    # Keep the protocol channel private: anything a library prints goes to stderr instead.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    _confine()
    logging.disable(logging.WARNING)  # "Timeout is disabled ..." is on purpose, see the docstring
    from math_verify import LatexExtractionConfig, parse, verify

    # The parent already extracted one final value; math-verify must parse all of it, not search
    # inside it (its ExprExtractionConfig would find "21 - 11" inside a sentence).
    config = [LatexExtractionConfig(try_extract_without_anchor=False, boxed_match_priority=0)]

    def parse_value(value: str) -> list[Any]:
        return parse("\\boxed{" + value + "}", extraction_config=config, parsing_timeout=None)

    parse_reference = lru_cache(maxsize=4096)(parse_value)  # each reference repeats G times

    def grade(pred: str, gold: str) -> str:
        gold_parsed = parse_reference(gold)
        pred_parsed = parse_value(pred)
        if verify(gold_parsed, pred_parsed, timeout_seconds=None):
            return "correct"
        # parse() falls back to the raw string when sympy cannot read it; only a string match
        # can then succeed, so a miss there is a parse failure rather than a wrong answer.
        parsed = all(any(not isinstance(x, str) for x in p) for p in (gold_parsed, pred_parsed))
        return "wrong" if parsed else "parse_failure"

    # The first grade builds math-verify's LaTeX parser (~0.1 s idle, several times that on a loaded machine);
    # done here it falls in the start-up window, not in the first request's timeout after every restart.
    try:
        grade("1", "1")
    except Exception:  # a broken install still starts, and grades each pair "error" as before
        pass
    protocol.write("ready\n")
    for line in iter(sys.stdin.readline, ""):
        try:
            job = json.loads(line)
            status = grade(str(job["pred"]), str(job["gold"]))
        except Exception:  # anything at all: the parent grades it 0 and counts it
            status = "error"
        protocol.write(status + "\n")


if __name__ == "__main__":
    main()
