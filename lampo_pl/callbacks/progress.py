"""The training progress bar counts the run's optimiser steps, not batches of one epoch.

Lightning's ``RichProgressBar`` counts batches of the current epoch against the epoch's length and
titles the bar ``Epoch e/max_epochs-1``. A run here is bounded by ``trainer.max_steps`` (max_epochs
is -1), so it showed ``Epoch 0/-2``, and after a resume in mid-epoch ``30/21`` (the step within the
run against the epoch's length). It also showed the logger's version as ``v_num: 0.000``. This bar
shows ``step k/max_steps`` of the whole run, resumed or not, and the logged reward and accuracy.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from typing_extensions import override


class StepProgressBar(RichProgressBar):
    """``RichProgressBar`` over optimiser steps: ``Training k/max_steps`` (batches of the epoch without max_steps)."""

    @property
    @override
    def total_train_batches(self) -> int | float:
        max_steps = self.trainer.max_steps
        return max_steps if max_steps is not None and max_steps > 0 else super().total_train_batches

    @override
    def _get_train_description(self, current_epoch: int) -> str:
        return "Training"

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if trainer.max_steps is not None and trainer.max_steps > 0:
            self._update(self.train_progress_bar_id, trainer.global_step)  # a resumed run starts where it stopped

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args)
        if trainer.max_steps is not None and trainer.max_steps > 0:
            self._update(self.train_progress_bar_id, trainer.global_step)

    @override
    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)  # the logger's version as a float ("0.000") tells nothing; the log dir says it
        return items
