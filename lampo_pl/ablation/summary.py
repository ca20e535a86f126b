"""From runs to curves (mean ± sample SD over seeds), the per-method table and the outcome of each run
(paired differences of those outcomes, with intervals: ``paired.py``).

Three outcome metrics per run:
- steps to threshold: the first step at which training accuracy, averaged over the trailing
  ``smooth`` steps (B·G samples each), reaches ``threshold``. In the per-method table, runs that
  never reach it are counted, not averaged in; in paired differences they count as ``steps + 1``
  (censored: a difference involving one is a bound, and the table says how many there were).
- AUC: the area under the training-accuracy curve divided by the number of steps, i.e. the mean
  training accuracy over the run. It rewards learning early and learning much, and needs no threshold.
- final held-out accuracy: avg@k of the last evaluation.
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


def train_auc(result: RunResult) -> float:
    """Mean per-step training accuracy over the run (the accuracy curve's area per step)."""
    return _nanmean(series(result, "acc")[1])


def final_heldout(result: RunResult) -> float:
    """Held-out avg@k of the run's last evaluation."""
    return float(result.evals[-1]["avg_at_k"])


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
    """A metric against steps, over seeds: mean, sample SD (ddof = 1; NaN with one seed) and how many seeds had
    a value. [S] each"""

    steps: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray


def curve(results: Sequence[RunResult], metric: str, smooth: int = 1) -> Curve:
    """Per-step mean ± sample SD over runs (all runs of one method) of ``metric``, each run smoothed first."""
    if not results:
        raise ValueError(f"no runs to make a {metric!r} curve from")
    length = min(len(r.steps) for r in results)
    stacked = np.stack([trailing_mean(series(r, metric)[1][:length], smooth) for r in results])  # [R, S]
    count = np.isfinite(stacked).sum(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column (a metric this method does not log), 1 seed
        mean, std = np.nanmean(stacked, axis=0), np.nanstd(stacked, axis=0, ddof=1)
    return Curve(series(results[0], metric)[0][:length], mean, std, count)


def eval_curve(results: Sequence[RunResult], key: str = "avg_at_k") -> Curve:
    """Held-out ``avg_at_k`` (or ``pass_at_k``) at each evaluation step, mean ± sample SD over runs."""
    length = min(len(r.evals) for r in results)
    stacked = np.array([[e[key] for e in r.evals[:length]] for r in results], dtype=float)  # [R, E]
    steps = np.array([e["step"] for e in results[0].evals[:length]], dtype=float)
    return Curve(steps, stacked.mean(axis=0), _sd(stacked), np.full(length, len(results)))


def t_half_width(x: np.ndarray, level: float = 0.95) -> np.ndarray:
    """Half-width of the Student-t interval of the mean over axis 0 (sample std, n − 1 degrees of
    freedom; n = ``x.shape[0]`` >= 2). [N, ...] -> [...]"""
    from scipy import stats  # the ablation extra: the rest of the package runs without scipy

    n = x.shape[0]
    return stats.t.ppf(0.5 + level / 2, n - 1) * x.std(axis=0, ddof=1) / math.sqrt(n)


@dataclass(frozen=True)
class Band:
    """A paired difference against steps: mean over seeds and its 95 % t band. [S] each"""

    steps: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray


def paired_runs(
    results: Sequence[RunResult], arm: str, reference: str, seeds: Sequence[int] | None = None
) -> list[tuple[int, RunResult, RunResult]]:
    """(seed, arm's run, reference's run) for every seed both ran (of ``seeds``, if given), in seed order."""
    by_key = {(r.method, r.seed): r for r in results}
    ran = sorted(s for m, s in by_key if m == arm and (reference, s) in by_key)
    return [(s, by_key[arm, s], by_key[reference, s]) for s in ran if seeds is None or s in seeds]


def difference_band(
    results: Sequence[RunResult], arm: str, reference: str, metric: str = "acc", smooth: int = 1
) -> Band | None:
    """``arm`` minus ``reference`` per seed, for a per-step metric (smoothed) or ``"eval"`` (held-out avg@k).

    ``None`` when no seed ran both."""
    pairs = paired_runs(results, arm, reference)
    if not pairs:
        return None
    if metric == "eval":
        length = min(min(len(a.evals), len(b.evals)) for _, a, b in pairs)
        steps = np.array([e["step"] for e in pairs[0][1].evals[:length]], dtype=float)
        diffs = np.array([[x["avg_at_k"] - y["avg_at_k"]
                           for x, y in zip(a.evals[:length], b.evals[:length], strict=True)]
                          for _, a, b in pairs])  # [P, E]
    else:
        length = min(min(len(a.steps), len(b.steps)) for _, a, b in pairs)
        steps = series(pairs[0][1], metric)[0][:length]
        diffs = np.stack([trailing_mean(series(a, metric)[1][:length], smooth)
                          - trailing_mean(series(b, metric)[1][:length], smooth) for _, a, b in pairs])  # [P, S]
    mean = diffs.mean(axis=0)
    if len(pairs) < 2:
        return Band(steps, mean, mean.copy(), mean.copy())
    half = t_half_width(diffs)
    return Band(steps, mean, mean - half, mean + half)


def _sd(values: np.ndarray) -> np.ndarray:
    """Sample SD (ddof = 1) over axis 0; NaN with fewer than 2 rows. [N, ...] -> [...]"""
    values = np.asarray(values, dtype=float)
    if values.shape[0] < 2:
        return np.full(values.shape[1:], math.nan)
    return values.std(axis=0, ddof=1)


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
    """One method's line of the table (mean and sample SD, ddof = 1, over its seeds; ``*_std`` are those SDs)."""

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
    train_auc_mean: float
    train_auc_std: float
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
        final = np.array([final_heldout(r) for r in runs])
        aucs = np.array([train_auc(r) for r in runs])
        last = settings.smooth
        rows.append(SummaryRow(
            method=method,
            label=method_preset(method).label,
            seeds=len(runs),
            reached=len(hits),
            steps_to_threshold_mean=float(np.mean(hits)) if hits else math.nan,
            steps_to_threshold_std=float(_sd(np.array(hits))) if hits else math.nan,
            start_accuracy_mean=float(np.mean([r.evals[0]["avg_at_k"] for r in runs])),
            final_accuracy_mean=float(final.mean()),
            final_accuracy_std=float(_sd(final)),
            final_pass_at_k_mean=float(np.mean([r.evals[-1]["pass_at_k"] for r in runs])),
            final_train_accuracy_mean=_nanmean(np.array([_nanmean(series(r, "acc")[1][-last:]) for r in runs])),
            train_auc_mean=float(np.mean(aucs)),
            train_auc_std=float(_sd(aucs)),
            final_kl_mean=_nanmean(np.array([_nanmean(series(r, "kl_ref")[1][-last:]) for r in runs])),
            seconds_per_step=float(np.mean([r.seconds / max(1, len(r.steps)) for r in runs])),
        ))
    return rows


def _pm(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def _kl_cell(row: SummaryRow) -> str:
    """The KL column: arms without a KL term (β = 0) do not compute KL(π_θ ‖ π_ref) at all, so no number."""
    if not math.isnan(row.final_kl_mean):
        return f"{row.final_kl_mean:.4f}"
    return "— (β = 0)" if method_preset(row.method).method.beta == 0 else "—"


def to_markdown(rows: Sequence[SummaryRow], settings: AblationSettings) -> str:
    """The per-method table as GitHub Markdown (mean ± sample SD over seeds, said in the header)."""
    k = settings.eval_k
    head = (f"Mean ± sample SD (ddof = 1) over seeds.\n\n"
            f"| method | steps to train acc ≥ {settings.threshold:g} (reached) | held-out avg@{k} start → final "
            f"| final pass@{k} | train-acc AUC | train acc, last {settings.smooth} steps "
            f"| KL to ref, last {settings.smooth} steps | s/step |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r.label} | {_pm(r.steps_to_threshold_mean, r.steps_to_threshold_std, 1)} ({r.reached}/{r.seeds}) "
            f"| {r.start_accuracy_mean:.3f} → {_pm(r.final_accuracy_mean, r.final_accuracy_std, 3)} "
            f"| {r.final_pass_at_k_mean:.3f} | {_pm(r.train_auc_mean, r.train_auc_std, 3)} "
            f"| {r.final_train_accuracy_mean:.3f} | {_kl_cell(r)} "
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


def grader_failures(results: Sequence[RunResult]) -> dict[str, int]:
    """Per run name, samples the math grader could not judge (timed out or failed, scored 0), in training
    steps and held-out evaluations; runs without any are left out. A run listed here has a lower-bound score:
    re-run it (delete its file) on a quieter machine before comparing it."""
    out = {}
    for r in results:
        steps = sum(row.get("reward_diag/math_timeouts", 0) + row.get("reward_diag/math_errors", 0) for row in r.steps)
        evals = sum(e.get("grader_failures", 0) for e in r.evals)
        if steps + evals:
            out[r.name] = int(steps + evals)
    return out
