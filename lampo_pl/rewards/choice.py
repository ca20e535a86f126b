"""Multiple-choice correctness (GPQA-Diamond): extract the chosen letter, compare with the key.

The choices are shuffled by the data loader; here we only grade. Extraction, on the answer part
of the response (after the last ``</think>``), first rule that yields a letter wins:

1. **Boxed**: the last ``\\boxed{}``/``\\fbox{}`` holding one letter, possibly as ``\\text{C}``,
   ``(C)``, ``C)`` or ``C. <choice text>``.
2. **Anchored**: the last "answer", "final answer", "correct/best option|choice|answer" followed
   by an optional *is* / ``:`` and the letter: "The answer is (B)", "Answer: D",
   "**Final Answer:** C", "the correct option is C". A bare letter after an anchor must be
   upper-case ("the answer is a bit tricky" is prose); ``(b)`` is accepted.
3. **Last line**: the response's last non-empty line is just a letter ("C", "**(C)**") or holds a
   parenthesised one ("Therefore (C).").

A hedge — two letters joined by "or", "and", "/" or "," ("A or B", ``\\boxed{A, C}``) — is no
answer, so hedging never earns the reward by covering two keys.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from lampo_pl.rewards.extraction import last_boxed
from lampo_pl.rewards.inputs import as_text, check_lengths
from lampo_pl.rewards.thinking import split_thinking

_TEXT_COMMAND_RE = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textrm)\s*\{([^{}]*)\}")


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


@lru_cache(maxsize=8)
def _patterns(letters: str) -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """(boxed content, anchored, last line, hedge) patterns for one set of valid letters."""
    upper, lower = re.escape(letters.upper()), re.escape(letters.lower())
    letter = rf"(?:\((?P<p>[{upper}{lower}])\)|\[(?P<b>[{upper}{lower}])\]|(?P<u>[{upper}])(?![A-Za-z0-9]))"
    boxed = re.compile(
        rf"\s*(?:(?:option|choice)\s*)?[(\[]?\s*(?P<l>[{upper}{lower}])\s*[)\]]?(?P<rest>(?:[\s.:)\-].*)?)",
        re.IGNORECASE | re.DOTALL,
    )
    anchored = re.compile(
        r"(?i:\b(?:final\s+answer|answer|(?:correct|best)\s+(?:option|choice|answer))\b)"
        r"(?:[^\S\n]+(?i:is|would\s+be|should\s+be|must\s+be))?"
        r"(?:[^\S\n]|\*\*|:|-|\$)*(?:(?i:option|choice)[^\S\n]+)?" + letter
    )
    last_line = re.compile(rf"[\s*$]*(?:\((?P<p>[{upper}])\)|(?P<u>[{upper}]))[\s*.:)$]*")
    hedge = re.compile(rf"\s*(?:\*\*)?\s*(?:,|/|\bor\b|\band\b)\s*\(?[{upper}](?![A-Za-z0-9])")
    return boxed, anchored, last_line, hedge


def extract_choice(response: str, letters: str = "ABCD") -> str | None:
    """The letter a response chooses (module docstring), upper-case, or ``None``."""
    boxed_re, anchored_re, last_line_re, hedge_re = _patterns(letters)
    answer = split_thinking(response).answer
    boxed = last_boxed(answer)
    if boxed is not None:
        content = _TEXT_COMMAND_RE.sub(r"\1", boxed)
        match = boxed_re.fullmatch(content)
        if match is not None:
            hedged = re.search(rf"(?<![A-Za-z])[{re.escape(letters.upper())}](?![A-Za-z])", match["rest"])
            return None if hedged else match["l"].upper()
    anchors = list(anchored_re.finditer(answer))
    if anchors:
        last = anchors[-1]
        if hedge_re.match(answer, last.end()):
            return None
        return next(g for g in last.group("p", "b", "u") if g).upper()
    lines = [line for line in answer.splitlines() if line.strip()]
    if not lines:
        return None
    tail = lines[-1]
    whole = last_line_re.fullmatch(tail)
    if whole is not None:
        return (whole["p"] or whole["u"]).upper()
    parenthesised = re.findall(rf"\(([{re.escape(letters.upper())}])\)", tail)
    return parenthesised[-1] if len(set(parenthesised)) == 1 else None


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
