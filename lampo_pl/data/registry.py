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
the same schema; the per-benchmark modules document their columns and answer extraction. Every
set but ``synthetic`` is a ``Benchmark`` record loaded by the one loader, ``Benchmark.load``.
With ``columns`` (a ``ColumnMapping``), any name is a set of the user's own, read by that mapping.
"""

from __future__ import annotations

from collections.abc import Sequence

from lampo_pl.data import aime24, aime25, champ, gpqa, gsm8k, math500, math_train, synthetic
from lampo_pl.data.benchmark import Benchmark
from lampo_pl.data.columns import ColumnMapping
from lampo_pl.data.record import Problem
from lampo_pl.data.sources import OnBadRow, check_source

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (math500.BENCHMARK, aime24.BENCHMARK, aime25.BENCHMARK, gpqa.BENCHMARK, math_train.BENCHMARK,
              gsm8k.BENCHMARK, champ.BENCHMARK)
}
NAMES: tuple[str, ...] = (*BENCHMARKS, "synthetic")  # synthetic is generated (synthetic.py), not read
# The held-out split to use when a training set serves as an evaluation set; the others are
# evaluated on their default split.
EVAL_SPLITS: dict[str, str] = {"math_train": "test", "gsm8k": "test", "synthetic": "test"}


def check_name(name: str) -> None:
    """``ValueError`` listing the valid names unless ``name`` is one."""
    if name not in NAMES:
        raise ValueError(
            f"unknown problem set {name!r}; valid names: {', '.join(NAMES)} "
            "(or give columns to read a file or Hub dataset of your own)"
        )


def check_sources(
    train_set: str,
    train_source: str | None,
    train_columns: ColumnMapping | None,
    eval_sets: Sequence[str],
    eval_sources: dict[str, str],
    eval_columns: dict[str, ColumnMapping],
) -> None:
    """Refuse, in one line and before anything loads, names that do not resolve and files that are not there."""
    if unknown := set(eval_sources) - set(eval_sets):
        raise ValueError(f"eval_sources names sets not in eval_sets {list(eval_sets)}: {sorted(unknown)}")
    if unknown := set(eval_columns) - set(eval_sets):
        raise ValueError(f"eval_columns names sets not in eval_sets {list(eval_sets)}: {sorted(unknown)}")
    sets = [(train_set, train_source, train_columns, "train_source")]
    sets += [(name, eval_sources.get(name), eval_columns.get(name), f"eval_sources[{name!r}]") for name in eval_sets]
    for name, source, columns, setting in sets:
        if columns is None:
            check_name(name)
        elif source is None:
            raise ValueError(f"{name!r} is read by a column mapping, so it needs {setting}: a local file or Hub id")
        if source is not None:
            check_source(source)


def load_problems(
    name: str,
    *,
    source: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    on_bad_row: OnBadRow = "error",
    seed: int = 0,
    columns: ColumnMapping | None = None,
) -> list[Problem]:
    """Load a problem set by name.

    Args:
        name: One of ``NAMES`` (see the table above), or any name with ``columns``.
        source: Hub dataset id or local file path; ``None`` uses the set's default source
            (required with ``columns``).
        split: Hub split (ignored for local files); ``None`` uses the set's default split.
        limit: Keep at most the first ``limit`` problems (for ``synthetic``: how many to generate,
            default ``synthetic.DEFAULT_SIZE``).
        on_bad_row: ``"error"`` raises at the first row that cannot be converted (naming the
            source, its line or row, and the field); ``"skip"`` drops such rows and warns with their count.
        seed: Seeds GPQA's per-question choice shuffles and the synthetic generator; the other
            sets have a fixed order.
        columns: Read ``source`` with this column mapping instead of the named set's row function.
    """
    if columns is not None:
        benchmark = columns.benchmark(name)
    elif name == "synthetic":
        if source is not None:
            raise ValueError(f"synthetic problems are generated, not read: got source={source!r}")
        return synthetic.generate_synthetic(limit or synthetic.DEFAULT_SIZE, seed=seed, split=split or "train")
    else:
        check_name(name)
        benchmark = BENCHMARKS[name]
    return benchmark.load(source, split=split, limit=limit, on_bad_row=on_bad_row, seed=seed)
