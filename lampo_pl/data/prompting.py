r"""From a ``Problem`` to the prompt text the policy continues, through the tokenizer's chat template.

The conversation is: an optional system turn, the few-shot (user, assistant) turns, then the
problem as a user turn — its ``prompt`` followed by a blank line and the instruction (or, when the
problem carries ``messages``, those messages verbatim). The default instruction is the one of
DeepSeek-R1, DAPO, Dr. GRPO and most reasoning-RL work, "Please reason step by step, and put your
final answer within \boxed{}."; multiple-choice problems ask for the letter instead.

Rendering goes through ``tokenizer.apply_chat_template(..., tokenize=False,
add_generation_prompt=True)``. ``enable_thinking`` is passed only when set: Qwen3's template reads
it (``False`` pre-fills an empty ``<think>\n\n</think>`` block), while other templates render
extra keyword arguments into an unused Jinja variable — SmolLM2's, for one, is unchanged by it.
SmolLM2's template also inserts its own default system prompt when none is given.

Example (Qwen3, enable_thinking=False):
    "<|im_start|>user\nWhat is 3 + 5?\n\nPlease reason step by step, and put your final answer
     within \\boxed{}.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lampo_pl.data.record import Problem
from lampo_pl.data.synthetic import generate_synthetic

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEFAULT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CHOICE_INSTRUCTION = (
    "Please reason step by step, and put the letter of your final answer (A, B, C or D) within \\boxed{}."
)


def user_message(problem: Problem, instruction: str | None = DEFAULT_INSTRUCTION) -> str:
    """The problem's user turn: its prompt, a blank line, the instruction.

    The default instruction becomes ``CHOICE_INSTRUCTION`` for ``choice`` problems; any other
    string is used as given, and ``None`` leaves the prompt alone.
    """
    if instruction == DEFAULT_INSTRUCTION and problem.kind == "choice":
        instruction = CHOICE_INSTRUCTION
    return problem.prompt if instruction is None else f"{problem.prompt}\n\n{instruction}"


def chat_messages(
    problem: Problem,
    *,
    system_prompt: str | None = None,
    few_shot: Sequence[tuple[str, str]] = (),
    instruction: str | None = DEFAULT_INSTRUCTION,
) -> list[dict[str, str]]:
    """The conversation ``render_prompt`` renders (see the module docstring for its order)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    for user, assistant in few_shot:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    if problem.messages:
        return messages + [dict(message) for message in problem.messages]
    return [*messages, {"role": "user", "content": user_message(problem, instruction)}]


def render_prompt(
    tokenizer: PreTrainedTokenizerBase,
    problem: Problem,
    *,
    system_prompt: str | None = None,
    enable_thinking: bool | None = None,
    few_shot: Sequence[tuple[str, str]] = (),
    instruction: str | None = DEFAULT_INSTRUCTION,
) -> str:
    """The prompt text, ending with the template's assistant header (the generation prompt).

    Args:
        tokenizer: A tokenizer with a chat template.
        problem: The problem to ask.
        system_prompt: A system turn; ``None`` leaves it to the template (SmolLM2 adds its own).
        enable_thinking: Passed to the template only when not ``None`` (Qwen3 honours it).
        few_shot: (user, assistant) pairs inserted as chat turns before the problem; see
            ``few_shot_pairs`` to build them from solved problems.
        instruction: Appended to the problem (see ``user_message``); ``None`` for none.
    """
    messages = chat_messages(problem, system_prompt=system_prompt, few_shot=few_shot, instruction=instruction)
    return render_messages(tokenizer, messages, enable_thinking=enable_thinking)


def render_messages(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[dict[str, str]], *, enable_thinking: bool | None = None
) -> str:
    """``messages`` through the chat template, ending with the assistant header (``render_prompt``)."""
    kwargs: dict[str, Any] = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True, **kwargs)
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, not str")
    return text


def few_shot_pairs(problems: Sequence[Problem], instruction: str | None = DEFAULT_INSTRUCTION) -> list[tuple[str, str]]:
    """(user, assistant) turns from solved problems: the user turn as ``user_message``, the solution."""
    pairs = []
    for problem in problems:
        if problem.solution is None:
            raise ValueError(f"few-shot problem {problem.id!r} has no solution to show")
        pairs.append((user_message(problem, instruction), problem.solution))
    return pairs


@functools.cache
def one_shot_example() -> tuple[tuple[str, str], ...]:
    """One worked synthetic word problem as a (user, assistant) chat turn, from a split never trained on.

    Measured with the packaged SmolLM2-135M-Instruct (shared docs/ENVIRONMENT.md): asked zero-shot
    for ``\\boxed{}`` it uses it in 1 response of 10; after one worked example in 8 of 10, and
    single-digit accuracy rises from ~54% to ~86%.
    """
    return tuple(few_shot_pairs(generate_synthetic(1, levels=(3,), split="fewshot")))
