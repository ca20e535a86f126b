"""Paired differences between arms, seed by seed, with Student-t intervals.

Seed s of method A and seed s of its reference ran on the same prompt order, LoRA initialisation and
sampling seed, so A − reference is taken per seed and its mean gets a 95 % Student-t interval over seeds
(the seeds' differences are independent draws; t, not a bootstrap, because with 3-10 seeds a percentile
bootstrap is too narrow). The outcomes (steps to threshold, AUC, final held-out) are ``summary.py``'s.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lampo_pl.ablation.methods import binary_arm, method_preset, reference_arm
from lampo_pl.ablation.run import RunResult
from lampo_pl.ablation.settings import AblationSettings
from lampo_pl.ablation.summary import final_heldout, paired_runs, steps_to_threshold, t_half_width, train_auc


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` paired differences and its two-sided t interval (NaN bounds when n < 2); ``values`` are
    the finite differences it was computed from (for tests and corrections over them)."""

    mean: float
    low: float
    high: float
    n: int
    values: tuple[float, ...] = ()

    @property
    def excludes_zero(self) -> bool:
        return bool(self.low > 0 or self.high < 0)


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Student-t interval of the mean of ``values`` (sample std, n − 1 degrees of freedom)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, math.nan, math.nan, 1, (mean,))
    half = float(t_half_width(x, level))
    return Interval(mean, mean - half, mean + half, int(x.size), tuple(float(v) for v in x))


@dataclass(frozen=True)
class PairedRow:
    """One arm against its reference, per seed, over the seeds both ran.

    Attributes:
        method, label: The arm (spec, display name).
        reference, reference_label: What it is compared with (``grpo``, or ``grpo+rouge`` for an arm
            with the density reward; or the same method without it, for the density effect).
        seeds: Seeds both ran.
        steps: Difference in steps to threshold (negative: the arm gets there sooner).
        censored: Pairs in which at least one run never reached the threshold (counted as steps + 1).
        auc: Difference in mean training accuracy over the run.
        final: Difference in final held-out avg@k.
    """

    method: str
    label: str
    reference: str
    reference_label: str
    seeds: tuple[int, ...]
    steps: Interval
    censored: int
    auc: Interval
    final: Interval


def paired_differences(
    results: Sequence[RunResult], settings: AblationSettings, against: str = "baseline"
) -> list[PairedRow]:
    """Every arm of ``settings.methods`` minus its reference, seed by seed, with 95 % t intervals.

    ``against="baseline"``: the reference is ``settings.baseline`` under the same reward (``+rouge``
    kept). ``against="binary"``: each ``+rouge`` arm against the same method without the density reward.
    Arms whose reference did not run (or is the arm itself) get no row. With ``against="baseline"`` the
    ``settings.contrasts`` pairs follow the baseline's rows (e.g. LamPO minus DelTA).
    """
    if against not in ("baseline", "binary"):
        raise ValueError(f"against must be 'baseline' or 'binary', got {against!r}")
    pairs_asked: list[tuple[str, str]] = []
    for arm in settings.methods:
        if against == "baseline":
            pairs_asked.append((arm, reference_arm(arm, settings.baseline)))
        elif method_preset(arm).density:
            pairs_asked.append((arm, binary_arm(arm)))
    if against == "baseline":
        pairs_asked += [pair for pair in settings.contrasts if pair not in pairs_asked]
    rows = []
    for arm, reference in pairs_asked:
        if reference == arm or reference not in settings.methods:
            continue
        matched = paired_runs(results, arm, reference, settings.seeds)
        if not matched:
            continue
        seeds = tuple(seed for seed, _, _ in matched)
        pairs = [(a, b) for _, a, b in matched]
        reach = [[steps_to_threshold(r, settings.threshold, settings.smooth) for r in pair] for pair in pairs]
        never = settings.steps + 1
        rows.append(PairedRow(
            method=arm, label=method_preset(arm).label, reference=reference,
            reference_label=method_preset(reference).label, seeds=seeds,
            steps=t_interval([(a if a is not None else never) - (b if b is not None else never) for a, b in reach]),
            censored=sum(a is None or b is None for a, b in reach),
            auc=t_interval([train_auc(a) - train_auc(b) for a, b in pairs]),
            final=t_interval([final_heldout(a) - final_heldout(b) for a, b in pairs]),
        ))
    return rows


def format_interval(iv: Interval, digits: int, signed: bool = True) -> str:
    """``+0.031 [-0.004, +0.066]``, in bold when the interval excludes 0; ``—`` when there is nothing."""
    if iv.n == 0:
        return "—"
    sign = "+" if signed else ""
    text = f"{iv.mean:{sign}.{digits}f}"
    if iv.n >= 2:
        text += f" [{iv.low:{sign}.{digits}f}, {iv.high:{sign}.{digits}f}]"
    return f"**{text}**" if iv.n >= 2 and iv.excludes_zero else text


def paired_markdown(rows: Sequence[PairedRow], settings: AblationSettings) -> str:
    """The paired-difference table: mean difference over seeds [95 % t interval]; bold excludes 0."""
    k = settings.eval_k
    lines = [
        f"| method | minus | seeds | Δ steps to train acc ≥ {settings.threshold:g} (censored) | Δ train-acc AUC "
        f"| Δ final held-out avg@{k} |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r.label} | {r.reference_label} | {len(r.seeds)} | {format_interval(r.steps, 1)} "
                     f"({r.censored}) | {format_interval(r.auc, 3)} | {format_interval(r.final, 3)} |")
    return "\n".join(lines) + "\n"


def paired_csv(rows: Sequence[PairedRow]) -> str:
    """The paired differences as CSV: mean, low, high and n per metric."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    metrics = ("steps", "auc", "final")
    writer.writerow(["method", "reference", "seeds", "censored"]
                    + [f"{m}_{part}" for m in metrics for part in ("mean", "low", "high", "n")])
    for r in rows:
        values = [getattr(getattr(r, m), part) for m in metrics for part in ("mean", "low", "high", "n")]
        writer.writerow([r.method, r.reference, " ".join(map(str, r.seeds)), r.censored, *values])
    return buffer.getvalue()
