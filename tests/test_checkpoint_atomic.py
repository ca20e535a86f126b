"""A process killed while saving never leaves a checkpoint that loads half-written; the CLI uses that writer."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lampo_pl.atomic as checkpointing_atomic
import lampo_pl.checkpointing as checkpointing
from lampo_pl.checkpointing import (
    TMP_SUFFIX,
    AtomicCheckpointIO,
    CheckpointError,
    RNGStateCheckpoint,
    capture_rng,
    restore_rng,
)
from lampo_pl.cli import build_cli

SMOKE = str(Path(__file__).parents[1] / "configs" / "smoke.yaml")

# Saves version 1 completely, then starts saving version 2 but stops halfway through the bytes and waits.
CHILD = """
import io, sys, time
import torch
import lampo_pl.atomic as checkpointing_atomic
import lampo_pl.checkpointing as checkpointing

path = sys.argv[1]
plugin = checkpointing.AtomicCheckpointIO()
plugin.save_checkpoint({"version": 1, "weights": torch.arange(1000)}, path)

def stall_halfway(checkpoint, file):
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    data = buffer.getvalue()
    file.write(data[: len(data) // 2])
    file.flush()
    print("HALF", flush=True)
    time.sleep(120)

checkpointing._write = stall_halfway
plugin.save_checkpoint({"version": 2, "weights": torch.arange(1_000_000)}, path)
"""


def test_kill_during_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "HALF", "the child never reached the middle of its second save"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    loaded = AtomicCheckpointIO().load_checkpoint(path)
    assert loaded["version"] == 1 and torch.equal(loaded["weights"], torch.arange(1000))
    assert [p.name for p in tmp_path.glob("*.ckpt")] == ["last.ckpt"]  # the partial file is not a *.ckpt
    partial = path.with_name(path.name + TMP_SUFFIX)
    assert partial.exists()
    with pytest.raises(Exception):  # noqa: B017  (torch raises RuntimeError or pickle errors, by version)
        torch.load(partial, weights_only=True)


def test_failed_save_leaves_neither_a_new_file_nor_a_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "step=1.ckpt"
    plugin = AtomicCheckpointIO()
    plugin.save_checkpoint({"version": 1}, path)

    def fail(checkpoint: dict, file: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(checkpointing, "_write", fail)
    with pytest.raises(OSError, match="disk full"):
        plugin.save_checkpoint({"version": 2}, path)
    assert plugin.load_checkpoint(path)["version"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step=1.ckpt", "step=1.ckpt.sha256"]


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    import random

    import numpy as np

    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    state = capture_rng()
    expected = (torch.rand(3), random.random(), np.random.rand())
    AtomicCheckpointIO().save_checkpoint({"rng": state}, tmp_path / "rng.ckpt")
    torch.manual_seed(9), random.seed(9), np.random.seed(9)
    restore_rng(AtomicCheckpointIO().load_checkpoint(tmp_path / "rng.ckpt", weights_only=True)["rng"])
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(again[0], expected[0]) and again[1:] == expected[1:]


def test_cli_defaults_use_the_atomic_writer_and_the_rng_callback(tmp_path: Path) -> None:
    cli = build_cli(["-c", SMOKE, "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert sum(isinstance(c, RNGStateCheckpoint) for c in cli.trainer.callbacks) == 1


# ---- damaged checkpoints are refused by name (issue 13) ---------------------------------------------


def saved(tmp_path: Path) -> Path:
    """A checkpoint shaped like Lightning's: weights and Adam state (the bytes of the moments are what flips)."""
    path = tmp_path / "step=3.ckpt"
    state = {"exp_avg": torch.full((256,), 0.5), "exp_avg_sq": torch.full((256,), 0.25), "step": torch.tensor(3.0)}
    AtomicCheckpointIO().save_checkpoint(
        {"state_dict": {"lora_A": torch.ones(256)}, "optimizer_states": [{"state": {0: state}}]}, path
    )
    return path


def test_truncated_and_empty_checkpoints_are_refused_naming_the_file(tmp_path: Path) -> None:
    path = saved(tmp_path)
    data = path.read_bytes()
    for damaged in (data[: len(data) // 2], b""):
        path.write_bytes(damaged)
        path.with_name(path.name + ".sha256").unlink(missing_ok=True)  # as if written by other code: no checksum
        with pytest.raises(CheckpointError, match=f"checkpoint {path}"):
            AtomicCheckpointIO().load_checkpoint(path)


def test_flipped_bytes_are_detected_by_the_checksum(tmp_path: Path) -> None:
    path = saved(tmp_path)
    data = bytearray(path.read_bytes())
    offset = bytes(data).index(torch.full((1,), 0.25).numpy().tobytes())  # inside Adam's second moment
    data[offset + 3] ^= 0xFF  # 0.25 becomes another finite float: loading alone would not notice
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="changed since it was written"):
        AtomicCheckpointIO().load_checkpoint(path)


def test_non_finite_state_is_refused_on_load(tmp_path: Path) -> None:
    path = tmp_path / "nan.ckpt"
    state = {"exp_avg": torch.tensor([1.0, math.nan])}
    AtomicCheckpointIO().save_checkpoint({"optimizer_states": [{"state": {0: state}}]}, path)
    with pytest.raises(CheckpointError, match=r"non-finite values in optimizer_states\.0\.state\.0\.exp_avg"):
        AtomicCheckpointIO().load_checkpoint(path)


def test_checksum_survives_a_kill_between_its_update_and_the_rename(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The checksum file is updated before the checkpoint is renamed into place: it lists both digests then.

    Only the checkpoint's own rename is killed (issue 21, item 13): the checksum file's rename goes through,
    so a writer that recorded only the new digest before the rename leaves an old file that fails to verify.
    """
    path = saved(tmp_path)
    old_digest = checkpointing.file_sha256(path)
    real_replace = os.replace

    def killed_before_rename(src: object, dst: object) -> None:
        if Path(str(dst)) == path:
            raise KeyboardInterrupt  # stands for SIGKILL between the checksum update and os.replace
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(checkpointing_atomic.os, "replace", killed_before_rename)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"lora_A": torch.zeros(4)}}, path)
    monkeypatch.undo()
    listed = checkpointing.checksum_path(path).read_text().split()
    assert len(listed) == 2 and listed[1] == old_digest, "the checksum file was updated, listing new and old"
    assert torch.equal(AtomicCheckpointIO().load_checkpoint(path)["state_dict"]["lora_A"], torch.ones(256))
