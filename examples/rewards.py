"""Example reward functions for ``model.rewards.custom``, written as for TRL's GRPOTrainer on plain text.

Each takes the completions (and any problem field it names) as keyword lists and returns one
float per completion, or None where it does not apply. They read completions as strings, so they
are listed with ``completion_format: text`` (chat prompts otherwise get TRL's message lists,
``[{"role": "assistant", "content": ...}]``, as TRL's own ``trl.rewards`` functions expect):

    model:
      rewards:
        correctness: 1.0
        custom:
          - {function: examples.rewards.concise, weight: 0.1, completion_format: text}
          - {function: examples.rewards.shows_work, weight: 0.1, completion_format: text}

Run from the repository root (so that ``examples`` imports), e.g.
    python -m lampo_pl fit -c configs/smoke.yaml -c examples/custom_rewards.yaml
"""

from __future__ import annotations

from typing import Any


def concise(completions: list[str], **kwargs: Any) -> list[float]:
    """1 for an empty response down to 0 at 400 characters and beyond: a length penalty."""
    return [max(0.0, 1.0 - len(text) / 400) for text in completions]


def shows_work(completions: list[str], solution: list[str | None], **kwargs: Any) -> list[float | None]:
    """1 when the response writes out at least one equation, on problems with a reference solution.

    None where the problem has no reference solution: the reward does not apply there, and TRL's
    convention leaves it out of the weighted sum.
    """
    return [None if ref is None else float("=" in text) for text, ref in zip(completions, solution, strict=True)]
