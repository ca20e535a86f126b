"""Checkpoints that resume exactly and never load half-written.

Lightning's checkpoint already holds the optimiser, scheduler, loop counters (the step), the module's
state (the two LoRA adapters and λ, see ``LamPOModule.on_save_checkpoint``) and the data module's
stream position. What it lacks, and this file adds:

1. ``RNGStateCheckpoint``: the random-number states (torch CPU and CUDA, ``random``, numpy).
   Lightning saves none of them, so a resumed run would sample different rollouts. The state is
   captured at the end of every training step and put back at the start of the next one, in an
   uninterrupted run as in a resumed one: whatever draws happen in between (a DataLoader drawing
   its base seed when an epoch starts, an evaluation, a validation loop) can then never make the
   two runs diverge, and the checkpoint holds exactly the state the next step starts from.
2. ``AtomicCheckpointIO``: a file is written to ``<path>.tmp``, flushed to disk, then renamed over
   ``<path>``. A process killed mid-save leaves the previous checkpoint intact and at worst a
   stray ``.tmp`` that no ``*.ckpt`` glob picks up. (Lightning's own save goes through an fsspec
   transaction whose temporary file lives in the system temp folder: the final move is then a
   copy across filesystems, and nothing is fsynced.)

Every state is stored as tensors, numbers and lists so that ``torch.load(weights_only=True)`` —
torch's default since 2.6 — reads it. The module's hyper-parameters hold the plain config
dataclasses of ``lampo_pl.settings``; ``AtomicCheckpointIO.load_checkpoint`` allows exactly those
(``config_classes()``), and nothing else, on top of torch's weights-only defaults.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, BinaryIO

import lightning as L
import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

TMP_SUFFIX = ".tmp"


# ---- random-number states -----------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """The global RNG states of torch (CPU and every CUDA device), ``random`` and numpy, weights_only-safe."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),  # uint32 [624]
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back what ``capture_rng`` took (CUDA states only where this machine has the same devices)."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class RNGStateCheckpoint(L.Callback):
    """Make the RNG stream of training steps independent of everything between them, and checkpoint it.

    The state captured when step k ends is restored when step k+1 starts (module docstring, point 1);
    that state is what the checkpoint stores and what a resumed run restores before its first step.
    Under DDP each rank samples its own stream, so every rank's state is gathered into the
    checkpoint and each rank takes its own back (exact when resumed with the same world size).
    """

    def __init__(self) -> None:
        self._state: dict[str, Any] | None = None
        self._rank, self._world_size = 0, 1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._rank, self._world_size = trainer.global_rank, trainer.world_size

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._state is not None:
            restore_rng(self._state)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._state = capture_rng()

    def state_dict(self) -> dict[str, Any]:
        if self._state is None:
            return {}
        states: list[Any] = [self._state]
        # Lightning builds the checkpoint dict on every rank (only rank 0 writes it): a collective is safe here.
        if self._world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            states = [None] * self._world_size
            torch.distributed.all_gather_object(states, self._state)
        return {"rng_per_rank": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict.get("rng_per_rank") or []
        self._state = states[self._rank] if self._rank < len(states) else None


# ---- atomic checkpoint files --------------------------------------------------------------------


def config_classes() -> list[type]:
    """The data-only dataclasses in the module's hparams: safe to rebuild under weights_only loading."""
    # Imported on use: lampo_pl.rollout pulls in transformers and peft, which writing a checkpoint never needs.
    from lampo_pl.rollout import SamplingParams
    from lampo_pl.settings import ComputeArgs, LoraArgs, MethodArgs, OptimArgs, PromptArgs, RewardArgs

    return [SamplingParams, LoraArgs, MethodArgs, OptimArgs, ComputeArgs, PromptArgs, RewardArgs]


def _write(checkpoint: dict[str, Any], file: BinaryIO) -> None:
    """Serialise into an open file (one function, so that a test can make it stop halfway)."""
    torch.save(checkpoint, file)


def _fsync_dir(directory: Path) -> None:
    """Persist a rename: on POSIX the directory entry is only durable once the directory is synced."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a sibling temporary file, then rename it over ``path``: never half a file on disk."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # atomic on one filesystem


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes ``<path>.tmp``, fsyncs it and renames it over ``<path>``.

    Remote paths (``s3://`` ...) go through Lightning's own writer: object-store uploads already
    appear whole or not at all.
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + TMP_SUFFIX)
        try:
            with open(tmp, "wb") as file:
                _write(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, target)  # atomic on one filesystem: readers see the old file or the new one
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)

    @override
    def load_checkpoint(
        self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # map_location None keeps Lightning's default (tensors stay on the CPU until the strategy moves them).
        kwargs = {} if map_location is None else {"map_location": map_location}
        with torch.serialization.safe_globals(config_classes()):
            return super().load_checkpoint(path, weights_only=weights_only, **kwargs)
