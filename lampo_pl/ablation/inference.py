"""Corrected inference over an ablation's paired differences: Holm's correction within a family of
comparisons, difference-of-differences for claims that compare two effects, and power.

- **p-value** of a cell: the two-sided paired t-test of its per-seed differences against 0 (the test
  whose inversion is ``paired.t_interval``).
- **Holm** (Holm 1979, "A simple sequentially rejective multiple test procedure"): with m cells sorted by
  p, p_(1) <= ... <= p_(m), the adjusted p-value is p~_(j) = max_{i<=j} min(1, (m − i + 1) · p_(i)); a
  cell is rejected at α when p~ < α.
- **Holm-adjusted interval**: the cell ranked j gets the t interval at level 1 − α/(m − k + 1), where k
  is j, or the rank of the first cell Holm does not reject if that comes earlier. So an adjusted
  interval excludes 0 exactly when Holm rejects that cell (the step-down levels; the first-ranked cell
  gets the Bonferroni level 1 − α/m, and every cell's level lies between 1 − α/m and 1 − α).
- **Power**: a paired t-test on n seeds whose differences have SD σ rejects δ ≠ 0 (two-sided α) with
  probability P(|T| > t_{1−α/2, n−1}), T ~ noncentral t(n − 1, δ√n/σ). The detectable effect is the δ
  with power 0.8; the seeds needed for δ are the least n with power >= 0.8.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lampo_pl.ablation.methods import binary_arm, method_preset, reference_arm
from lampo_pl.ablation.paired import Interval, PairedRow, t_interval
from lampo_pl.ablation.run import RunResult
from lampo_pl.ablation.settings import AblationSettings
from lampo_pl.ablation.summary import final_heldout, paired_runs, steps_to_threshold, train_auc

OUTCOMES = ("steps", "auc", "final")
OUTCOME_LABELS = {"steps": "Δ steps to threshold", "auc": "Δ train-acc AUC", "final": "Δ final held-out"}


def paired_t_p(values: Sequence[float]) -> float:
    """Two-sided p-value of the one-sample t-test of ``values`` against 0; NaN with fewer than 2 values.

    Differences with no spread: 0 when their mean is not 0, 1 when it is."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return math.nan
    if np.ptp(x) == 0:
        return 0.0 if x[0] != 0 else 1.0
    return float(stats.ttest_1samp(x, 0.0).pvalue)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values (NaN cells stay NaN and do not count in m). [m] -> [m]"""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):  # rank 0 is p_(1): multiplier m
        running = max(running, min(1.0, (m - rank) * p[index]))
        out[index] = running
    return out


def holm_levels(pvalues: Sequence[float], alpha: float = 0.05) -> np.ndarray:
    """Per cell, the confidence level of its Holm-adjusted interval (module docstring); NaN for NaN p. [m] -> [m]"""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    stopped: int | None = None
    for rank, index in enumerate(order):
        if stopped is None and not p[index] < alpha / (m - rank):
            stopped = rank
        out[index] = 1 - alpha / (m - (rank if stopped is None else stopped))
    return out


def paired_t_power(delta: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at level ``alpha`` against a true mean difference ``delta``."""
    from scipy import stats

    if n < 2:
        return math.nan
    if sd == 0:
        return 1.0 if delta != 0 else alpha
    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    nc = abs(delta) * math.sqrt(n) / sd  # the power is symmetric in the sign of delta
    lower = stats.nct.cdf(-critical, df, nc)  # the wrong-sign tail: tiny, and NaN in scipy for large nc
    return float(stats.nct.sf(critical, df, nc) + (0.0 if math.isnan(lower) else lower))


def detectable_effect(sd: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """The mean difference a paired t-test on ``n`` seeds (differences' SD ``sd``) detects with ``power``."""
    from scipy import optimize

    if n < 2 or not math.isfinite(sd):
        return math.nan
    if sd == 0:
        return 0.0
    d = optimize.brentq(lambda d: paired_t_power(d, 1.0, n, alpha) - power, 1e-9, 1e2, xtol=1e-10)
    return float(d * sd)


def seeds_needed(delta: float, sd: float, power: float = 0.8, alpha: float = 0.05, limit: int = 100_000) -> int:
    """The fewest seeds (>= 2) whose paired t-test detects ``delta`` with ``power``; ``limit`` if none below it."""
    from scipy import stats

    if sd == 0:
        return 2
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    n = max(2, int((z * sd / abs(delta)) ** 2) - 2)  # the normal approximation undershoots the t-test's n
    while n < limit and paired_t_power(delta, sd, n, alpha) < power:
        n += 1
    return n


@dataclass(frozen=True)
class Cell:
    """One (comparison, outcome) cell of a family.

    Attributes:
        row: The paired row it comes from. outcome: ``steps`` | ``auc`` | ``final``.
        interval: Unadjusted 95 % t interval. p: Unadjusted two-sided paired-t p-value.
        p_holm: Holm-adjusted p-value within the family. level: Confidence level of ``adjusted``.
        adjusted: The Holm-adjusted interval. sd: Sample SD (ddof = 1) of the per-seed differences.
    """

    row: PairedRow
    outcome: str
    interval: Interval
    p: float
    p_holm: float
    level: float
    adjusted: Interval
    sd: float


def family(rows: Sequence[PairedRow], alpha: float = 0.05) -> list[Cell]:
    """Every row × outcome as one Holm family (the caller says which rows make the family)."""
    raw = [(row, outcome, getattr(row, outcome)) for row in rows for outcome in OUTCOMES]
    pvalues = [paired_t_p(iv.values) for _, _, iv in raw]
    adjusted_p, levels = holm(pvalues), holm_levels(pvalues, alpha)
    cells = []
    for (row, outcome, iv), p, q, level in zip(raw, pvalues, adjusted_p, levels, strict=True):
        adjusted = t_interval(iv.values, float(level)) if math.isfinite(level) else iv
        sd = float(np.std(iv.values, ddof=1)) if len(iv.values) >= 2 else math.nan
        cells.append(Cell(row, outcome, iv, p, float(q), float(level), adjusted, sd))
    return cells


def interaction_differences(results: Sequence[RunResult], settings: AblationSettings) -> list[PairedRow]:
    """Per arm with a ``+rouge`` twin, the density reward's effect on it minus its effect on the baseline, per seed:
    (A+rouge − A) − (B+rouge − B), over the seeds all four ran. Backs "the density reward helps A more/less than B"."""
    base = settings.baseline
    rows = []
    for arm in settings.methods:
        plain, base_rouge = binary_arm(arm), reference_arm(arm, base)
        if not method_preset(arm).density or plain == base or not {plain, base, base_rouge} <= set(settings.methods):
            continue
        ref = {s: (x, y) for s, x, y in paired_runs(results, base_rouge, base, settings.seeds)}
        quads = [(seed, a_rouge, a, *ref[seed]) for seed, a_rouge, a in paired_runs(results, arm, plain, settings.seeds)
                 if seed in ref]
        if not quads:
            continue
        reach = [[steps_to_threshold(r, settings.threshold, settings.smooth) for r in q[1:]] for q in quads]
        never = settings.steps + 1
        steps = [[never if s is None else s for s in four] for four in reach]
        rows.append(PairedRow(
            method=arm, label=f"ROUGE-L effect on {method_preset(plain).label}", reference=base_rouge,
            reference_label=f"on {method_preset(base).label}", seeds=tuple(q[0] for q in quads),
            steps=t_interval([(w - x) - (y - z) for w, x, y, z in steps]),
            censored=sum(None in four for four in reach),
            auc=_difference_of_differences(quads, train_auc), final=_difference_of_differences(quads, final_heldout),
        ))
    return rows


def _difference_of_differences(quads: Sequence[tuple[int, RunResult, RunResult, RunResult, RunResult]],
                               outcome: Callable[[RunResult], float]) -> Interval:
    """t interval of (outcome(w) − outcome(x)) − (outcome(y) − outcome(z)) over (seed, w, x, y, z)."""
    return t_interval([(outcome(w) - outcome(x)) - (outcome(y) - outcome(z)) for _, w, x, y, z in quads])


def _num(x: float, digits: int, signed: bool = True) -> str:
    return "—" if not math.isfinite(x) else f"{x:{'+' if signed else ''}.{digits}f}"


def _iv(iv: Interval, digits: int) -> str:
    if iv.n < 2:
        return "—"
    return f"{_num(iv.mean, digits)} [{_num(iv.low, digits)}, {_num(iv.high, digits)}]"


def _p(p: float) -> str:
    return "—" if not math.isfinite(p) else f"{p:.2g}" if p >= 0.001 else "<0.001"


def family_markdown(cells: Sequence[Cell], alpha: float = 0.05) -> str:
    """One line per cell: mean [95 % t], p, Holm p, Holm-adjusted interval (bold when Holm rejects)."""
    lines = ["| comparison | minus | outcome | seeds | mean [95 % t], unadjusted | p | Holm p "
             "| Holm-adjusted interval (level) |", "|---|---|---|---|---|---|---|---|"]
    for c in cells:
        digits = 1 if c.outcome == "steps" else 3
        adjusted = f"{_iv(c.adjusted, digits)} ({100 * c.level:.2f} %)" if math.isfinite(c.level) else "—"
        if math.isfinite(c.p_holm) and c.p_holm < alpha:
            adjusted = f"**{adjusted}**"
        censored = f" ({c.row.censored} censored)" if c.outcome == "steps" and c.row.censored else ""
        lines.append(f"| {c.row.label} | {c.row.reference_label} | {OUTCOME_LABELS[c.outcome]}{censored} "
                     f"| {c.interval.n} | {_iv(c.interval, digits)} | {_p(c.p)} | {_p(c.p_holm)} | {adjusted} |")
    return "\n".join(lines) + "\n"


def power_markdown(cells: Sequence[Cell], target: float = 0.02, power: float = 0.8, alpha: float = 0.05) -> str:
    """Per AUC / held-out cell: sample SD of the differences, the effect detectable at ``power`` with the
    seeds run, and the seeds needed to detect ``target`` (unadjusted two-sided ``alpha``, paired t)."""
    lines = [f"| comparison | minus | outcome | seeds | sample SD of differences | detectable at {power:.0%} power "
             f"| seeds for {target:g} |", "|---|---|---|---|---|---|---|"]
    for c in cells:
        if c.outcome == "steps" or not math.isfinite(c.sd):
            continue
        lines.append(f"| {c.row.label} | {c.row.reference_label} | {OUTCOME_LABELS[c.outcome]} | {c.interval.n} "
                     f"| {c.sd:.3f} | {detectable_effect(c.sd, c.interval.n, power, alpha):.3f} "
                     f"| {seeds_needed(target, c.sd, power, alpha)} |")
    return "\n".join(lines) + "\n"
