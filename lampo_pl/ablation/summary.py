"""From runs to curves (mean ± std over seeds) and the ablation table (Markdown and CSV).

Steps to threshold: the first step at which a run's training accuracy, averaged over the trailing
``smooth`` steps (B·G samples each), reaches ``threshold``. Runs that never reach it are counted
as not reaching it, not averaged in. Final accuracy: held-out avg@k of the last evaluation.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from lampo_pl.ablation.methods import method_preset
from lampo_pl.ablation.run import RunResult
from lampo_pl.ablation.settings import AblationSettings


def series(result: RunResult, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one per-step metric; NaN where a step did not log it. [S], [S]"""
    steps = np.array([row["step"] for row in result.steps], dtype=float)
    values = np.array([row.get(metric, math.nan) for row in result.steps], dtype=float)
    return steps, values


def trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each position (fewer at the start), NaNs ignored. [S] -> [S]"""
    out = np.full(values.shape, math.nan)
    for i in range(len(values)):
        chunk = values[max(0, i + 1 - window) : i + 1]
        out[i] = _nanmean(chunk)
    return out


@dataclass(frozen=True)
class Curve:
    """A metric against steps, over seeds: mean, std (population) and how many seeds had a value. [S] each"""

    steps: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray


def curve(results: Sequence[RunResult], metric: str, smooth: int = 1) -> Curve:
    """Per-step mean ± std over runs (all runs of one method) of ``metric``, each run smoothed first."""
    if not results:
        raise ValueError(f"no runs to make a {metric!r} curve from")
    length = min(len(r.steps) for r in results)
    stacked = np.stack([trailing_mean(series(r, metric)[1][:length], smooth) for r in results])  # [R, S]
    count = np.isfinite(stacked).sum(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: a metric this method does not log
        mean, std = np.nanmean(stacked, axis=0), np.nanstd(stacked, axis=0)
    return Curve(series(results[0], metric)[0][:length], mean, std, count)


def eval_curve(results: Sequence[RunResult], key: str = "avg_at_k") -> Curve:
    """Held-out ``avg_at_k`` (or ``pass_at_k``) at each evaluation step, mean ± std over runs."""
    length = min(len(r.evals) for r in results)
    stacked = np.array([[e[key] for e in r.evals[:length]] for r in results], dtype=float)  # [R, E]
    steps = np.array([e["step"] for e in results[0].evals[:length]], dtype=float)
    return Curve(steps, stacked.mean(axis=0), stacked.std(axis=0), np.full(length, len(results)))


def _nanmean(values: np.ndarray) -> float:
    """Mean of the finite values; NaN (without numpy's all-NaN warning) when there are none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def steps_to_threshold(result: RunResult, threshold: float, smooth: int) -> int | None:
    """First step whose trailing-mean training accuracy is >= ``threshold``; ``None`` if never."""
    steps, acc = series(result, "acc")
    hits = np.nonzero(trailing_mean(acc, smooth) >= threshold)[0]
    return int(steps[hits[0]]) if len(hits) else None


@dataclass(frozen=True)
class SummaryRow:
    """One method's line of the table (mean and std over its seeds)."""

    method: str
    label: str
    seeds: int
    reached: int
    steps_to_threshold_mean: float
    steps_to_threshold_std: float
    start_accuracy_mean: float
    final_accuracy_mean: float
    final_accuracy_std: float
    final_pass_at_k_mean: float
    final_train_accuracy_mean: float
    final_kl_mean: float
    seconds_per_step: float


def summarise(results: Sequence[RunResult], settings: AblationSettings) -> list[SummaryRow]:
    """One row per method in ``settings.methods`` that has runs."""
    rows = []
    for method in settings.methods:
        runs = [r for r in results if r.method == method]
        if not runs:
            continue
        hits = [s for r in runs if (s := steps_to_threshold(r, settings.threshold, settings.smooth)) is not None]
        final = np.array([r.evals[-1]["avg_at_k"] for r in runs])
        last = settings.smooth
        rows.append(SummaryRow(
            method=method,
            label=method_preset(method).label,
            seeds=len(runs),
            reached=len(hits),
            steps_to_threshold_mean=float(np.mean(hits)) if hits else math.nan,
            steps_to_threshold_std=float(np.std(hits)) if hits else math.nan,
            start_accuracy_mean=float(np.mean([r.evals[0]["avg_at_k"] for r in runs])),
            final_accuracy_mean=float(final.mean()),
            final_accuracy_std=float(final.std()),
            final_pass_at_k_mean=float(np.mean([r.evals[-1]["pass_at_k"] for r in runs])),
            final_train_accuracy_mean=_nanmean(np.array([_nanmean(series(r, "acc")[1][-last:]) for r in runs])),
            final_kl_mean=_nanmean(np.array([_nanmean(series(r, "kl_ref")[1][-last:]) for r in runs])),
            seconds_per_step=float(np.mean([r.seconds / max(1, len(r.steps)) for r in runs])),
        ))
    return rows


def _pm(mean: float, std: float, digits: int) -> str:
    return "—" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def to_markdown(rows: Sequence[SummaryRow], settings: AblationSettings) -> str:
    """The table as GitHub Markdown (mean ± std over seeds)."""
    k = settings.eval_k
    head = (f"| method | steps to train acc ≥ {settings.threshold:g} (reached) | held-out avg@{k} start → final "
            f"| final pass@{k} | train acc, last {settings.smooth} steps | KL to ref, last {settings.smooth} steps "
            "| s/step |")
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        lines.append(
            f"| {r.label} | {_pm(r.steps_to_threshold_mean, r.steps_to_threshold_std, 1)} ({r.reached}/{r.seeds}) "
            f"| {r.start_accuracy_mean:.3f} → {_pm(r.final_accuracy_mean, r.final_accuracy_std, 3)} "
            f"| {r.final_pass_at_k_mean:.3f} | {r.final_train_accuracy_mean:.3f} | {r.final_kl_mean:.4f} "
            f"| {r.seconds_per_step:.2f} |"
        )
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[SummaryRow]) -> str:
    """The table as CSV, one column per ``SummaryRow`` field."""
    buffer = io.StringIO()
    names = list(SummaryRow.__dataclass_fields__)
    writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(asdict(row))
    return buffer.getvalue()
