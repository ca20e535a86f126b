"""The ablation figures: per-method curves (a line and a ±1 sample-SD band over seeds per metric), and paired
differences to the baseline (a line and a 95 % t band over seeds; above 0: the arm is ahead).

matplotlib is imported here only (``pip install lampo-pl[ablation]``); the rest of the package runs
without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lampo_pl.ablation.methods import method_preset, reference_arm
from lampo_pl.ablation.run import RunResult
from lampo_pl.ablation.summary import Curve, curve, difference_band, eval_curve

# (metric key in the step records, panel title); "eval" is the held-out avg@k from the evaluations.
PANELS: tuple[tuple[str, str], ...] = (
    ("reward", "reward (mean over B·G)"),
    ("acc", "training accuracy"),
    ("eval", "held-out avg@k"),
    ("kl_ref", "KL(π_θ ‖ π_ref), k3"),
    ("response_len_mean", "response length (tokens)"),
    ("mean_pair_weight", "LamPO mean pair weight"),
)


def _band(ax: Any, c: Curve, label: str, color: Any) -> None:
    finite = np.isfinite(c.mean)
    if not finite.any():
        return
    ax.plot(c.steps[finite], c.mean[finite], label=label, color=color, lw=1.5)
    ax.fill_between(c.steps[finite], (c.mean - c.std)[finite], (c.mean + c.std)[finite], color=color, alpha=0.2, lw=0)


def plot_ablation(
    results: Sequence[RunResult], methods: Sequence[str], smooth: int = 10, threshold: float | None = None,
    panels: Sequence[tuple[str, str]] = PANELS,
) -> Any:
    """A matplotlib ``Figure``: mean ± sample SD over seeds per method, per-step metrics smoothed over ``smooth``
    steps."""
    import matplotlib.pyplot as plt

    cols = 3
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, (metric, title) in zip(axes.flat, panels, strict=False):
        for i, method in enumerate(methods):
            runs = [r for r in results if r.method == method]
            if not runs:
                continue
            c = eval_curve(runs) if metric == "eval" else curve(runs, metric, smooth)
            _band(ax, c, method_preset(method).label, colors(i))
        if threshold is not None and metric == "acc":
            ax.axhline(threshold, color="grey", ls=":", lw=1)
        ax.set_title(title if metric == "eval" else f"{title}, {smooth}-step mean" if smooth > 1 else title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def plot_differences(
    results: Sequence[RunResult], methods: Sequence[str], baseline: str = "grpo", smooth: int = 10
) -> Any:
    """A ``Figure``: each arm minus ``baseline`` (same reward) per seed, training accuracy and held-out avg@k.

    One panel per reward (binary, with ROUGE-L density) that has arms; bands are 95 % t intervals of
    the mean paired difference over seeds, so a band clear of 0 is a difference the seeds support.
    """
    import matplotlib.pyplot as plt

    groups = [[m for m in methods if method_preset(m).density == rouge and reference_arm(m, baseline) != m
               and reference_arm(m, baseline) in methods] for rouge in (False, True)]
    groups = [g for g in groups if g] or [[]]
    fig, axes = plt.subplots(len(groups), 2, figsize=(13, 3.6 * len(groups)), squeeze=False)
    colors = plt.get_cmap("tab10")
    for row, arms in zip(axes, groups, strict=True):
        for ax, metric, title in ((row[0], "acc", f"training accuracy, {smooth}-step mean"),
                                  (row[1], "eval", "held-out avg@k")):
            for arm in arms:
                reference = reference_arm(arm, baseline)
                band = difference_band(results, arm, reference, metric, smooth)
                if band is None:
                    continue
                color = colors(list(methods).index(arm) % 10)
                ax.plot(band.steps, band.mean, color=color, lw=1.5, label=method_preset(arm).label)
                ax.fill_between(band.steps, band.low, band.high, color=color, alpha=0.15, lw=0)
            ax.axhline(0, color="grey", lw=1)
            ref = method_preset(reference_arm(arms[0], baseline)).label if arms else baseline
            ax.set_title(f"{title}: arm − {ref}")
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if arms:
                ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig
