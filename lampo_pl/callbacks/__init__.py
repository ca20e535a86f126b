"""Lightning callbacks: benchmark evaluation, adapter export and rollout samples."""

from lampo_pl.callbacks.adapter import AdapterExport, save_policy_adapter
from lampo_pl.callbacks.evaluation import BenchmarkEvaluation, EvalOverrides
from lampo_pl.callbacks.samples import RolloutSamples

__all__ = ["AdapterExport", "BenchmarkEvaluation", "EvalOverrides", "RolloutSamples", "save_policy_adapter"]
