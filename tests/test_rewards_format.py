"""Format reward and the reasoning/answer split it shares with the other rewards."""

from __future__ import annotations

import pytest

from lampo_pl.rewards import format_reward, reasoning_text, split_thinking

THINKING = [
    ("<think>Let me add.</think>The sum is \\boxed{4}.", True),
    ("Let me add.</think>\\boxed{4}", True),  # template pre-filled <think>
    ("  <think>\nsteps\n</think>\n\n\\boxed{\\frac{1}{2}}", True),
    ("<think>steps</think>The sum is 4.", False),  # no boxed answer
    ("<think>steps</think>\\boxed{}", False),  # empty box
    ("<think>steps \\boxed{4}", False),  # never closed
    ("<think></think>\\boxed{4}", False),  # empty reasoning
    ("<think>a</think><think>b</think>\\boxed{4}", False),  # two blocks
    ("Intro <think>steps</think>\\boxed{4}", False),  # block does not open the response
    ("\\boxed{4}", False),  # no reasoning block in thinking mode
]
NON_THINKING = [
    ("The sum is \\boxed{4}.", True),
    ("\\boxed{x^{2}}", True),
    ("The sum is 4.", False),
    ("<think>steps</think>\\boxed{4}", False),  # tags where the template put none
    ("\\boxed{4", False),
]


@pytest.mark.parametrize(("response", "ok"), THINKING)
def test_thinking_format(response: str, ok: bool) -> None:
    assert format_reward([response], thinking=True) == [float(ok)]


@pytest.mark.parametrize(("response", "ok"), NON_THINKING)
def test_non_thinking_format(response: str, ok: bool) -> None:
    assert format_reward([response], thinking=False) == [float(ok)]


def test_format_reward_tolerates_missing_responses() -> None:
    assert format_reward([None, "\\boxed{1}"], thinking=False) == [0.0, 1.0]  # type: ignore[list-item]


def test_split_thinking() -> None:
    assert split_thinking("<think>r</think>a") == ("r", "a", True)
    assert split_thinking("r</think>a") == ("r", "a", True)
    assert split_thinking("<think>r") == ("r", "", False)
    assert split_thinking("plain") == (None, "plain", False)


def test_reasoning_text_falls_back_to_the_whole_response() -> None:
    assert reasoning_text("<think>why</think>what") == "why"
    assert reasoning_text("just an answer") == "just an answer"
