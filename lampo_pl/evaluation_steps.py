"""``validation_step`` and ``test_step`` so that ``lampo validate`` and ``lampo test`` run.

Lightning runs an evaluation loop only for a module that defines its step. The evaluation itself
is not per batch here: ``BenchmarkEvaluation`` samples and grades the evaluation sets when the
loop's epoch ends, with the same settings (k, temperature, limit, target) that it uses during
``fit``, so the steps have nothing to do. Mix in before ``LightningModule`` so that these override
its placeholders::

    class LamPOModule(EvaluationSteps, L.LightningModule): ...
"""

from __future__ import annotations

from lampo_pl.data.record import Problem


class EvaluationSteps:
    """Empty evaluation steps: the loops run, ``BenchmarkEvaluation`` does the work at their end."""

    def validation_step(self, batch: list[Problem], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Nothing per batch (module docstring)."""

    def test_step(self, batch: list[Problem], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Nothing per batch (module docstring)."""
