"""Compare LamPO with GRPO-family baselines on one task, over several seeds (notebooks/ablations.ipynb,
bench/learning_efficiency.py, docs/ablations.md)."""

from lampo_pl.ablation.methods import METHODS, MethodPreset, method_preset
from lampo_pl.ablation.run import RunResult, load_results, run_ablation, run_one
from lampo_pl.ablation.settings import PRESETS, AblationSettings, preset
from lampo_pl.ablation.summary import SummaryRow, curve, eval_curve, steps_to_threshold, summarise, to_csv, to_markdown

__all__ = [
    "METHODS",
    "PRESETS",
    "AblationSettings",
    "MethodPreset",
    "RunResult",
    "SummaryRow",
    "curve",
    "eval_curve",
    "load_results",
    "method_preset",
    "preset",
    "run_ablation",
    "run_one",
    "steps_to_threshold",
    "summarise",
    "to_csv",
    "to_markdown",
]
