"""Multiple-choice correctness (GPQA-Diamond): extract the chosen letter, compare with the key.

The choices are shuffled by the data loader; here we only grade. Extraction works on the answer
part of the response (after the last ``</think>``). Two kinds of *answer statement* compete and
the one that comes LAST in the text wins, so a second thought after a first guess counts
("Answer: B. Wait — actually the answer is C." gives C):

1. **Boxed**: the last ``\\boxed{}``/``\\fbox{}`` when it opens with one letter, bare or as
   ``\\text{C}``/``\\textbf{C}``, ``(C)``, ``[C]``, ``C)``, ``C.`` or ``C:``, optionally followed
   by the option's own text: ``\\boxed{C) A 2:1 mixture}`` and ``\\boxed{D) D-glucose}`` are C
   and D (capitals inside the option text are no second answer). A lower-case letter counts only
   alone or bracketed (``\\boxed{b}``, ``\\boxed{(b)}``): ``\\boxed{b = 5}`` is a variable, not B.
   An unclosed last box (a response cut while answering) is no answer at all.
2. **Anchored**: the last "answer", "final answer", "correct/best option|choice|answer" followed
   by an optional *is* / ``:`` and the letter: "The answer is (B)", "Answer: D",
   "**Final Answer:** C", "the correct option is C". A bare letter after an anchor must be
   upper-case and not start a word ("the answer is a bit tricky", "Answer: D-glucose" are
   prose); ``(b)`` is accepted.

When neither is present, the **last line**: the response's last non-empty line is just a letter
("C", "**(C)**") or holds a parenthesised one ("Therefore (C).").

A hedge — a second letter joined by "or", "and", "/" or "," right after the chosen one ("A or B",
``\\boxed{A, C}``, "B (or possibly C)", ``\\boxed{B} or \\boxed{C}``) — is no answer, so hedging
never earns the reward by covering two keys. The answer-style table in
``tests/test_rewards_choice.py`` pins these rules on reasoning-model phrasings.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from lampo_pl.rewards.extraction import last_box
from lampo_pl.rewards.inputs import as_text, check_lengths
from lampo_pl.rewards.thinking import split_thinking

_TEXT_COMMAND_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textrm)\s*\{([^{}]*)\}")
_BOX_HEDGE_RE = re.compile(r"\s*\$?\s*(?:,|/|\bor\b|\band\b)\s*\$?\s*$")  # "\boxed{B} or $\boxed{C}"


@dataclass(frozen=True)
class ChoiceGrades:
    """Per-response multiple-choice grades ([N] each).

    Attributes:
        scores: 1.0 when the extracted letter is the correct one, else 0.0.
        extracted: The chosen letter (upper-case), ``None`` when no single letter was found.
    """

    scores: list[float]
    extracted: list[str | None]

    @property
    def n_no_answer(self) -> int:
        return self.extracted.count(None)

    def diagnostics(self) -> dict[str, float]:
        return {"choice_no_answer": float(self.n_no_answer)}


class _Patterns(NamedTuple):
    boxed: re.Pattern[str]
    anchored: re.Pattern[str]
    last_line: re.Pattern[str]
    hedge: re.Pattern[str]


@lru_cache(maxsize=8)
def _patterns(letters: str) -> _Patterns:
    """The extraction patterns for one set of valid letters (module docstring)."""
    upper, lower = re.escape(letters.upper()), re.escape(letters.lower())
    either = f"[{upper}{lower}]"
    letter = rf"(?:\((?P<p>{either})\)|\[(?P<b>{either})\]|(?P<u>[{upper}])(?![A-Za-z0-9-]))"
    boxed = re.compile(
        rf"\s*(?:(?i:option|choice)\s*)?(?:\(\s*(?P<p>{either})\s*\)|\[\s*(?P<b>{either})\s*\]"
        rf"|(?P<u>{either})[).:\]]?)(?P<rest>(?:\s.*)?)",
        re.DOTALL,
    )
    # The anchor needs a verb or a mark (":", "-", "**", "$") before its letter: with spaces alone
    # "answer choice A would be wrong" (an explanation after the box) would read as an answer.
    separator = r"(?:[^\S\n]|\*\*|:|-|\$)"
    anchored = re.compile(
        r"(?i:\b(?:final\s+answer|answer|(?:correct|best)\s+(?:option|choice|answer))\b)"
        r"(?:[^\S\n]+(?i:choice|option)\b)?"
        rf"(?:[^\S\n]+(?i:is|would\s+be|should\s+be|must\s+be)\b{separator}*|[^\S\n]*(?:\*\*|:|-|\$){separator}*)"
        r"(?:(?i:option|choice)[^\S\n]+)?" + letter
    )
    last_line = re.compile(rf"[\s*$]*(?:\((?P<p>[{upper}])\)|(?P<u>[{upper}]))[\s*.:)$]*")
    hedge = re.compile(
        rf"[\s*$)]*\(?\s*(?:,|/|\b(?:or|and)\b(?:\s+(?:possibly|maybe|perhaps))?)[\s*$]*\(?[{upper}](?![A-Za-z0-9])"
    )
    return _Patterns(boxed, anchored, last_line, hedge)


def _boxed_letter(answer: str, patterns: _Patterns) -> tuple[int, str | None] | None:
    """(position, letter) of the last box; letter ``None`` for a hedge or an unclosed box.

    ``None`` when there is no box or it holds no letter (the other rules then decide).
    """
    box = last_box(answer)
    if box is None:
        return None
    if box.content is None:
        return len(answer), None  # cut while answering: no answer, whatever was stated before
    match = patterns.boxed.fullmatch(_TEXT_COMMAND_RE.sub(r"\1", box.content))
    if match is None:
        return None
    chosen = match["p"] or match["b"] or match["u"]
    if match["u"] and chosen.islower() and match["rest"].strip():
        return None  # "b = 5": a variable, not option B
    previous = last_box(answer[: box.start])
    if patterns.hedge.match(match["rest"]) or (
        previous is not None and _BOX_HEDGE_RE.fullmatch(answer, previous.end, box.start)
    ):
        return box.start, None
    return box.start, chosen.upper()


def _anchored_letter(answer: str, patterns: _Patterns) -> tuple[int, str | None] | None:
    """(position, letter) of the last anchored statement; letter ``None`` for a hedge."""
    anchors = list(patterns.anchored.finditer(answer))
    if not anchors:
        return None
    last = anchors[-1]
    if patterns.hedge.match(answer, last.end()):
        return last.start(), None
    return last.start(), next(g for g in last.group("p", "b", "u") if g).upper()


def _last_line_letter(answer: str, patterns: _Patterns, letters: str) -> str | None:
    lines = [line for line in answer.splitlines() if line.strip()]
    if not lines:
        return None
    tail = lines[-1]
    whole = patterns.last_line.fullmatch(tail)
    if whole is not None:
        return (whole["p"] or whole["u"]).upper()
    parenthesised = re.findall(rf"\(([{re.escape(letters.upper())}])\)", tail)
    return parenthesised[-1] if len(set(parenthesised)) == 1 else None


def extract_choice(response: str, letters: str = "ABCD") -> str | None:
    """The letter a response chooses (module docstring), upper-case, or ``None``."""
    patterns = _patterns(letters)
    answer = split_thinking(response).answer
    statements = [s for s in (_boxed_letter(answer, patterns), _anchored_letter(answer, patterns)) if s is not None]
    if statements:
        return max(statements, key=lambda statement: statement[0])[1]  # the last statement wins
    return _last_line_letter(answer, patterns, letters)


def grade_choice(responses: Sequence[str], correct_letters: Sequence[str], *, letters: str = "ABCD") -> ChoiceGrades:
    """Grade multiple-choice responses against their correct letters.

    Args:
        responses: Generated responses.
        correct_letters: The key for each response (``Problem.answer``), case-insensitive.
        letters: The valid choice letters (GPQA-Diamond has four).

    Raises:
        ValueError: ``responses`` and ``correct_letters`` differ in length.
    """
    check_lengths(responses, correct_letters, "responses", "correct_letters")
    extracted = [extract_choice(as_text(response), letters) for response in responses]
    keys = [as_text(key).strip().upper() for key in correct_letters]
    scores = [float(chosen is not None and chosen == key) for chosen, key in zip(extracted, keys, strict=True)]
    return ChoiceGrades(scores, extracted)


def choice_reward(responses: Sequence[str], correct_letters: Sequence[str]) -> list[float]:
    """1.0 per response that chooses its correct letter, else 0.0."""
    return grade_choice(responses, correct_letters).scores
