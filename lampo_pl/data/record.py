"""The one problem record every loader produces and every reward and prompt consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ProblemKind = Literal["math", "choice"]


@dataclass(frozen=True)
class Problem:
    """One benchmark or training problem, whatever its source.

    Attributes:
        id: Stable identifier, unique within its source (e.g. MATH-500's ``unique_id``).
        prompt: The question as the user sees it (for ``choice`` problems: the question followed
            by the lettered, shuffled choices).
        answer: The reference final answer (for ``choice`` problems: the correct letter, "A".."D").
        solution: The reference step-by-step solution, or ``None`` when the source has none.
            The semantic-density (ROUGE-L) reward is live only where this is set.
        kind: ``"math"`` (graded by math-verify) or ``"choice"`` (graded by letter).
        choices: The choices in the order shown (``choice`` problems only).
        messages: Optional chat messages that replace ``prompt`` when rendering (few-shot etc.).
        metadata: Source-specific fields: ``source``, ``subject``, ``level``, ``year`` ...
    """

    id: str
    prompt: str
    answer: str
    solution: str | None = None
    kind: ProblemKind = "math"
    choices: tuple[str, ...] = ()
    messages: tuple[dict[str, str], ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
