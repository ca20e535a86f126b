"""Problem sets, prompt rendering and the training DataModule.

``load_problems(name)`` gives a list of ``Problem`` for any benchmark (one module per benchmark,
each a ``Benchmark`` record: its source, columns, answer extraction and row function), or for a
file or Hub dataset of the user's own read by a ``ColumnMapping``; ``render_prompt`` turns one into
the text the policy sees. The Lightning ``ProblemDataModule`` lives in
``lampo_pl.data.datamodule`` (not imported here, so the pure pieces import without Lightning).
"""

from lampo_pl.data.columns import ColumnMapping
from lampo_pl.data.prompting import (
    CHOICE_INSTRUCTION,
    DEFAULT_INSTRUCTION,
    chat_messages,
    few_shot_pairs,
    render_prompt,
    user_message,
)
from lampo_pl.data.record import Problem, ProblemKind
from lampo_pl.data.registry import EVAL_SPLITS, NAMES, load_problems
from lampo_pl.data.sources import BadRowError, BadRowsWarning, OnBadRow
from lampo_pl.data.synthetic import generate_synthetic

__all__ = [
    "CHOICE_INSTRUCTION",
    "DEFAULT_INSTRUCTION",
    "EVAL_SPLITS",
    "NAMES",
    "BadRowError",
    "BadRowsWarning",
    "ColumnMapping",
    "OnBadRow",
    "Problem",
    "ProblemKind",
    "chat_messages",
    "few_shot_pairs",
    "generate_synthetic",
    "load_problems",
    "render_prompt",
    "user_message",
]
