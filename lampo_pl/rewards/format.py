"""Format reward (optional, ALGORITHMS.md "Rewards"): the response closes its reasoning and gives
its final answer in the expected form.

Rules, 1.0 when all hold, else 0.0:
- ``thinking=True`` (Qwen3 ``enable_thinking``, R1-style templates): exactly one ``</think>``;
  at most one ``<think>``, and if present it opens the response (templates that pre-fill
  ``<think>`` in the prompt leave only the closing tag in the response); the reasoning is not
  empty.
- ``thinking=False``: no ``<think>`` / ``</think>`` tag at all (a non-thinking template already
  put an empty block in the prompt).
- Both: the answer part (after ``</think>``) holds a complete, non-empty ``\\boxed{...}``; the
  same form math and multiple-choice grading look for first.
"""

from __future__ import annotations

from collections.abc import Sequence

from lampo_pl.rewards.extraction import last_boxed
from lampo_pl.rewards.inputs import as_text
from lampo_pl.rewards.thinking import THINK_CLOSE, THINK_OPEN, split_thinking


def has_expected_format(response: str, *, thinking: bool) -> bool:
    """Whether one response follows the format rules of the module docstring."""
    opens, closes = response.count(THINK_OPEN), response.count(THINK_CLOSE)
    if thinking:
        if closes != 1 or opens > 1:
            return False
        if opens == 1 and response.lstrip().find(THINK_OPEN) != 0:
            return False
        reasoning, answer, _ = split_thinking(response)
        if reasoning is None or not reasoning.strip():
            return False
    elif opens or closes:
        return False
    else:
        answer = response
    boxed = last_boxed(answer)
    return boxed is not None and bool(boxed.strip())


def format_reward(responses: Sequence[str], *, thinking: bool) -> list[float]:
    """1.0 per response in the expected format (module docstring), else 0.0."""
    return [1.0 if has_expected_format(as_text(r), thinking=thinking) else 0.0 for r in responses]
