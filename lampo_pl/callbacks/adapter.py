"""Save the ``policy`` LoRA adapter in PEFT format (safetensors) that plain ``peft`` loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L

from lampo_pl.atomic import write_dir_atomic
from lampo_pl.errors import UserError
from lampo_pl.policy import POLICY_ADAPTER


def save_policy_adapter(pl_module: Any, directory: str | Path, base_model: str | None = None) -> Path:
    """Write the policy adapter (safetensors) and tokenizer to ``directory``, atomically.

    ``base_model``: the model's public name (``Qwen/Qwen3-1.7B``, ``tiny:qwen3``, ``packaged:...``)
    recorded as the adapter's ``base_model_name_or_path`` instead of the resolved cache folder peft
    knows, so that the adapter loads, and ``lampo export`` finds its base, on another machine.
    (peft itself keeps the folder: its save checks the base's vocabulary there, offline and fast.)

    ``PeftModel.from_pretrained(base, directory)`` loads the result with plain peft; the frozen base
    and the ``reference`` adapter are not written. The folder is built beside ``directory`` and
    swapped into place (``lampo_pl.atomic.write_dir_atomic``): at every instant either the old or
    the new adapter is complete on disk.
    """

    def build(tmp: Path) -> Path:
        pl_module.policy_model.save_pretrained(tmp, selected_adapters=[POLICY_ADAPTER], safe_serialization=True)
        # peft writes a non-default adapter into a sub-folder named after it; publish that one.
        inner = tmp / POLICY_ADAPTER
        src = inner if inner.is_dir() else tmp
        if pl_module.tokenizer is not None:
            pl_module.tokenizer.save_pretrained(src)
        if base_model is not None:
            config_file = src / "adapter_config.json"
            config = json.loads(config_file.read_text())
            config["base_model_name_or_path"] = base_model
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True))
        return src

    return write_dir_atomic(directory, build)


class AdapterExport(L.Callback):
    """Save the policy adapter every N steps and at the end of training.

    The final adapter is written whenever ``fit`` ends normally, also when it resumes from the
    checkpoint of a run that had already reached ``max_steps`` (killed after its last checkpoint,
    before this export): Lightning then skips the training loop and its ``on_train_end``, so the
    export also runs from ``on_fit_end``. Finishing is idempotent: after any successful ``fit``,
    ``final`` holds the weights the run ended with.

    Args:
        dirpath: Folder for adapters; null: ``<log_dir>/adapter``.
        every_n_steps: Also save every N steps as ``step_<k>`` (0: only at the end, as ``final``).
    """

    def __init__(self, dirpath: str | None = None, every_n_steps: int = 0) -> None:
        if not isinstance(every_n_steps, int) or every_n_steps < 0:
            raise UserError(f"AdapterExport.every_n_steps={every_n_steps!r}: allowed an integer >= 0 (0: only final)")
        self.dirpath = dirpath
        self.every_n_steps = every_n_steps
        self.saved: list[Path] = []
        self._final_saved = False

    def _root(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath or Path(trainer.log_dir or ".") / "adapter")

    def on_fit_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._final_saved = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        if self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0 and trainer.is_global_zero:
            self.saved.append(save_policy_adapter(pl_module, self._root(trainer) / f"step_{trainer.global_step}",
                                                  pl_module.model_name))

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._save_final(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if not trainer.interrupted:  # a Ctrl-C or an exception is not an end of training
            self._save_final(trainer, pl_module)

    def _save_final(self, trainer: L.Trainer, pl_module: Any) -> None:
        if self._final_saved:
            return
        self._final_saved = True
        if trainer.is_global_zero:
            path = save_policy_adapter(pl_module, self._root(trainer) / "final", pl_module.model_name)
            self.saved.append(path)
            print(f"policy adapter saved to {path}")
