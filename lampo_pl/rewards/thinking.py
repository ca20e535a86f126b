"""Split a response into its reasoning and its final-answer part.

Qwen3-style thinking templates make the model write ``<think> reasoning </think> answer``; some
templates put the opening ``<think>`` in the prompt, so a response may start directly with the
reasoning and contain only ``</think>``. Non-thinking templates produce neither tag.
"""

from __future__ import annotations

from typing import NamedTuple

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


class ThinkingSplit(NamedTuple):
    """The two parts of a response.

    Attributes:
        reasoning: Text inside the reasoning block, tags removed; ``None`` when the response has
            no tag at all. A block that was opened but never closed (a truncated response) runs
            to the end of the response.
        answer: Text after the last ``</think>``; the whole response when there is no tag; ``""``
            when the reasoning block was never closed (the model never reached its answer).
        closed: Whether a ``</think>`` was found.
    """

    reasoning: str | None
    answer: str
    closed: bool


def split_thinking(response: str) -> ThinkingSplit:
    """Split ``response`` at its reasoning block (see `ThinkingSplit`)."""
    close = response.rfind(THINK_CLOSE)
    if close >= 0:
        reasoning = response[:close].replace(THINK_OPEN, "").replace(THINK_CLOSE, "")
        return ThinkingSplit(reasoning, response[close + len(THINK_CLOSE) :], True)
    open_ = response.find(THINK_OPEN)
    if open_ >= 0:
        # Truncated inside its thoughts: everything after the tag is reasoning, there is no answer.
        return ThinkingSplit(response[open_ + len(THINK_OPEN) :].replace(THINK_OPEN, ""), "", False)
    return ThinkingSplit(None, response, False)


def reasoning_text(response: str) -> str:
    """The reasoning the semantic-density reward scores: inside the think block, else everything.

    ALGORITHMS.md, "Rewards": "the text inside <think>…</think> when present, else the whole
    response".
    """
    reasoning = split_thinking(response).reasoning
    return response if reasoning is None else reasoning
