"""Save the ``policy`` LoRA adapter in PEFT format (safetensors) that plain ``peft`` loads."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import lightning as L

from lampo_pl.policy import POLICY_ADAPTER


def save_policy_adapter(pl_module: Any, directory: str | Path) -> Path:
    """Write the policy adapter (safetensors) and tokenizer to ``directory``, atomically.

    ``PeftModel.from_pretrained(base, directory)`` loads the result with plain peft; the frozen base
    and the ``reference`` adapter are not written. The folder is built beside ``directory`` and
    renamed into place; an existing one is first renamed aside, so that at every instant either
    the old or the new adapter is complete on disk.
    """
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    old = tmp.with_name(tmp.name + ".old")
    try:
        pl_module.policy_model.save_pretrained(tmp, selected_adapters=[POLICY_ADAPTER], safe_serialization=True)
        # peft writes a non-default adapter into a sub-folder named after it; flatten that.
        inner = tmp / POLICY_ADAPTER
        src = inner if inner.is_dir() else tmp
        if pl_module.tokenizer is not None:
            pl_module.tokenizer.save_pretrained(src)
        if target.exists():
            target.rename(old)
        src.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return target


class AdapterExport(L.Callback):
    """Save the policy adapter every N steps and at the end of training.

    Args:
        dirpath: Folder for adapters; null: ``<log_dir>/adapter``.
        every_n_steps: Also save every N steps as ``step_<k>`` (0: only at the end, as ``final``).
    """

    def __init__(self, dirpath: str | None = None, every_n_steps: int = 0) -> None:
        self.dirpath = dirpath
        self.every_n_steps = every_n_steps
        self.saved: list[Path] = []

    def _root(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath or Path(trainer.log_dir or ".") / "adapter")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        if self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0 and trainer.is_global_zero:
            self.saved.append(save_policy_adapter(pl_module, self._root(trainer) / f"step_{trainer.global_step}"))

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.is_global_zero:
            path = save_policy_adapter(pl_module, self._root(trainer) / "final")
            self.saved.append(path)
            print(f"policy adapter saved to {path}")
