"""``validation_step`` and ``test_step`` so that ``lampo validate`` and ``lampo test`` run.

Lightning runs an evaluation loop only for a module that defines its step. The loop hands each
batch (a ``list[Problem]`` of one evaluation set) to ``BenchmarkEvaluation.on_validation_batch_end``
/ ``on_test_batch_end``, which samples and grades it with the same settings (k, temperature, limit,
target, sampler) that it uses during ``fit``; so the steps themselves have nothing to do. Mix in
before ``LightningModule`` so that these override its placeholders::

    class LamPOModule(EvaluationSteps, L.LightningModule): ...
"""

from __future__ import annotations

from lampo_pl.data.record import Problem


class EvaluationSteps:
    """Empty evaluation steps: the loops run, ``BenchmarkEvaluation`` grades each of their batches."""

    def validation_step(self, batch: list[Problem], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Nothing here (module docstring)."""

    def test_step(self, batch: list[Problem], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Nothing here (module docstring)."""
