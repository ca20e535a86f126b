"""Compare LamPO with GRPO-family baselines on one task, over paired seeds, with intervals
(notebooks/ablations.ipynb, bench/learning_efficiency.py, docs/ablations.md)."""

from lampo_pl.ablation.methods import METHODS, MethodPreset, binary_arm, method_preset, reference_arm
from lampo_pl.ablation.paired import Interval, PairedRow, paired_differences, paired_markdown, t_interval
from lampo_pl.ablation.run import RunResult, load_results, run_ablation, run_one
from lampo_pl.ablation.settings import PRESETS, AblationSettings, preset
from lampo_pl.ablation.summary import SummaryRow, curve, eval_curve, steps_to_threshold, summarise, to_csv, to_markdown

__all__ = [
    "METHODS",
    "PRESETS",
    "AblationSettings",
    "Interval",
    "MethodPreset",
    "PairedRow",
    "RunResult",
    "SummaryRow",
    "binary_arm",
    "curve",
    "eval_curve",
    "load_results",
    "method_preset",
    "paired_differences",
    "paired_markdown",
    "preset",
    "reference_arm",
    "run_ablation",
    "run_one",
    "steps_to_threshold",
    "summarise",
    "t_interval",
    "to_csv",
    "to_markdown",
]
