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
   ``<path>`` (``lampo_pl.atomic.write_atomic``). A process killed mid-save leaves the previous
   checkpoint intact and at worst a stray ``.tmp`` that no ``*.ckpt`` glob picks up. (Lightning's
   own save goes through an fsspec transaction whose temporary file lives in the system temp
   folder: the final move is then a copy across filesystems, and nothing is fsynced.)
3. Its SHA-256 is written beside it (``<path>.sha256``) and checked on load, so a file that changed
   since it was written (flipped bytes on disk or in a copy) is refused by name instead of loading
   damaged optimiser state that turns the weights NaN a step later; an empty, truncated or
   non-finite checkpoint is refused by name too (``CheckpointError``, one line from ``lampo``).

Every state is stored as tensors, numbers and lists so that ``torch.load(weights_only=True)`` —
torch's default since 2.6 — reads it. The module's hyper-parameters hold the plain config
dataclasses of ``lampo_pl.settings``; ``AtomicCheckpointIO.load_checkpoint`` allows exactly those
(``config_classes()``), and nothing else, on top of torch's weights-only defaults.
"""

from __future__ import annotations

import hashlib
import pickle
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import lightning as L
import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

from lampo_pl.atomic import TMP_SUFFIX, write_atomic, write_text_atomic
from lampo_pl.errors import UserError

__all__ = ["TMP_SUFFIX", "AtomicCheckpointIO", "CheckpointError", "RNGStateCheckpoint", "RunCheckpoint",
           "write_text_atomic"]

CHECKSUM_SUFFIX = ".sha256"


class CheckpointError(UserError):
    """A checkpoint that is missing, empty, truncated, changed since it was written or non-finite (named)."""


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


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block; afterwards the global RNG states (``capture_rng``'s) are as before, also after an error."""
    state = capture_rng()
    try:
        yield
    finally:
        restore_rng(state)


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


def checksum_path(path: str | Path) -> Path:
    """``<checkpoint>.sha256``: the SHA-256 of the checkpoint as written, beside the real file (links resolved)."""
    real = Path(path).resolve()
    return real.with_name(real.name + CHECKSUM_SUFFIX)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _recorded_digest(path: Path) -> str:
    """The digest recorded for an existing checkpoint (its own file: no second hashing pass), else computed."""
    sums = checksum_path(path)
    recorded = sums.read_text().split() if sums.is_file() else []
    return recorded[0] if len(recorded) == 1 else file_sha256(path)


def verify_checkpoint(path: str | Path) -> None:
    """Refuse, by name, a checkpoint that is missing, empty, or changed since it was written (cheap: no unpickling).

    The checksum file lists the digest of the new file and of the one it replaced: a process killed
    between writing the list and renaming the checkpoint into place leaves the previous, intact file,
    which must still load. A checkpoint without a checksum file (written by other code) is not checked.
    """
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"checkpoint {file} does not exist")
    if file.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {file} is empty (0 bytes); resume from an earlier checkpoint")
    sums = checksum_path(file)
    if not sums.is_file():
        return
    allowed = sums.read_text().split()
    actual = file_sha256(file)
    if actual not in allowed:
        raise CheckpointError(f"checkpoint {file} changed since it was written (SHA-256 {actual[:12]}… is not the "
                              f"{allowed[0][:12]}… recorded in {sums.name}); it is damaged: resume from another one")


def check_finite(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint whose weights or optimiser state hold NaN or ±inf, naming the first such entry."""
    for where, tree in (("state_dict", checkpoint.get("state_dict", {})),
                        ("optimizer_states", checkpoint.get("optimizer_states", []))):
        bad = _first_non_finite(tree, where)
        if bad is not None:
            raise CheckpointError(f"checkpoint {path} holds non-finite values in {bad}; resume from an earlier one")


def _first_non_finite(tree: Any, where: str) -> str | None:
    if isinstance(tree, torch.Tensor):
        return where if tree.is_floating_point() and not bool(torch.isfinite(tree).all()) else None
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    for key, value in items:
        bad = _first_non_finite(value, f"{where}.{key}")
        if bad is not None:
            return bad
    return None


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
        tmp = target.with_name(target.name + TMP_SUFFIX)
        digests: list[str] = []

        def write(file: BinaryIO) -> None:
            _write(checkpoint, file)
            file.flush()
            digests.append(file_sha256(tmp))
            previous = _recorded_digest(target) if target.is_file() else ""
            # Before the rename: the list holds both digests, so the old file or the new one verifies.
            write_text_atomic(checksum_path(target), f"{digests[0]} {previous}".strip() + "\n")

        write_atomic(target, write)
        write_text_atomic(checksum_path(target), digests[0] + "\n")

    @override
    def remove_checkpoint(self, path: _PATH) -> None:
        super().remove_checkpoint(path)
        if isinstance(get_filesystem(path), LocalFileSystem):
            Path(str(path) + CHECKSUM_SUFFIX).unlink(missing_ok=True)

    @override
    def load_checkpoint(
        self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # map_location None keeps Lightning's default (tensors stay on the CPU until the strategy moves them).
        kwargs = {} if map_location is None else {"map_location": map_location}
        local = isinstance(get_filesystem(path), LocalFileSystem)
        if local:
            verify_checkpoint(path)
        try:
            with torch.serialization.safe_globals(config_classes()):
                checkpoint = super().load_checkpoint(path, weights_only=weights_only, **kwargs)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
            if not local:
                raise
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointError(f"checkpoint {path} cannot be read ({reason}); it is truncated or not a "
                                  "checkpoint: resume from another one") from error
        check_finite(checkpoint, path)
        return checkpoint


# ---- the default checkpoint of `lampo fit` ------------------------------------------------------


class RunCheckpoint(ModelCheckpoint):
    """``<log_dir>/checkpoints/last.ckpt`` every ``every_n_train_steps`` steps and when training ends.

    ``lampo fit`` adds one unless the config brings its own ``ModelCheckpoint`` or sets
    ``trainer.enable_checkpointing: false``; ``--ckpt_path last`` resumes from it. A checkpoint holds
    the two adapters, λ, the optimiser and scheduler, the loops, the data stream position and the RNG
    states (module docstring): a few times the adapter's size, not the base model's.
    Lightning's own ``save_last`` at train end saves only when nothing was saved before; here the end
    is saved whenever its step was not (step 53 of a run saving every 50).
    """

    def __init__(self, every_n_train_steps: int = 50, dirpath: str | None = None) -> None:
        """Args:
        every_n_train_steps: Save every N training steps (and at the end).
        dirpath: Folder of ``last.ckpt``; null: ``<log_dir>/checkpoints``.
        """
        if every_n_train_steps < 1:
            raise UserError(f"RunCheckpoint.every_n_train_steps={every_n_train_steps}: allowed an integer >= 1")
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, every_n_train_steps=every_n_train_steps)

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
