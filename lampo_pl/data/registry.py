"""One entry point for every problem set: ``load_problems(name, ...)``.

============== ======================================== ============== ==========================
name           default source                           default split  role
============== ======================================== ============== ==========================
math500        HuggingFaceH4/MATH-500                   test           evaluation
aime24         HuggingFaceH4/aime_2024                  train (only)   evaluation
aime25         math-ai/aime25                           test           evaluation
gpqa_diamond   Idavidrein/gpqa, config gpqa_diamond     train (only)   evaluation (multiple choice)
math_train     DigitalLearningGmbH/MATH-lighteval       train          training
gsm8k          openai/gsm8k, config main                train          training
champ          the champ-dataset package (offline)      -              evaluation
synthetic      generated (offline)                      train          training (embedded default)
============== ======================================== ============== ==========================

``source`` replaces the default with another Hub id or a local .jsonl/.json/.parquet/.csv file in
the same schema; the per-benchmark modules document their columns and answer extraction.
"""

from __future__ import annotations

from typing import Protocol

from lampo_pl.data import aime24, aime25, champ, gpqa, gsm8k, math500, math_train, synthetic
from lampo_pl.data.record import Problem
from lampo_pl.data.sources import OnBadRow


class Loader(Protocol):
    """The signature every benchmark module's ``load`` has."""

    def __call__(
        self,
        source: str | None = None,
        *,
        split: str | None = None,
        limit: int | None = None,
        on_bad_row: OnBadRow = "error",
        seed: int = 0,
    ) -> list[Problem]: ...


LOADERS: dict[str, Loader] = {
    "math500": math500.load,
    "aime24": aime24.load,
    "aime25": aime25.load,
    "gpqa_diamond": gpqa.load,
    "math_train": math_train.load,
    "gsm8k": gsm8k.load,
    "champ": champ.load,
    "synthetic": synthetic.load,
}
# The held-out split to use when a training set serves as an evaluation set; the others are
# evaluated on their default split.
EVAL_SPLITS: dict[str, str] = {"math_train": "test", "gsm8k": "test", "synthetic": "test"}


def check_name(name: str) -> None:
    """``ValueError`` listing the valid names unless ``name`` is one."""
    if name not in LOADERS:
        raise ValueError(f"unknown problem set {name!r}; valid names: {', '.join(LOADERS)}")


def load_problems(
    name: str,
    *,
    source: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    on_bad_row: OnBadRow = "error",
    seed: int = 0,
) -> list[Problem]:
    """Load a problem set by name.

    Args:
        name: One of ``LOADERS`` (see the table above).
        source: Hub dataset id or local file path; ``None`` uses the set's default source.
        split: Hub split (ignored for local files); ``None`` uses the set's default split.
        limit: Keep at most the first ``limit`` problems (for ``synthetic``: how many to generate,
            default ``synthetic.DEFAULT_SIZE``).
        on_bad_row: ``"error"`` raises at the first row that cannot be converted (naming the
            source, row and field); ``"skip"`` drops such rows and warns with their count.
        seed: Seeds GPQA's per-question choice shuffles and the synthetic generator; the other
            sets have a fixed order.
    """
    check_name(name)
    return LOADERS[name](source, split=split, limit=limit, on_bad_row=on_bad_row, seed=seed)
