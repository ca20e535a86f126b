"""Preflight (lampo_pl/preflight.py): the worst step once before the first, out of memory in one line.

The memory tests run ``lampo fit`` in a child process whose address space is capped (``RLIMIT_AS``) at
train start (tests/scripts/memory_limit.py) at 96 MiB above what is in use, with the tiny model at 1,000
response tokens: there the worst micro-batch of 8 does not fit and one of 4 or 2 does (measured).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from lampo_pl.data.datamodule import ProblemDataModule
from lampo_pl.data.record import Problem
from lampo_pl.module import LamPOModule
from lampo_pl.policy import adapter_state
from lampo_pl.preflight import WorstCase, failure_line, is_out_of_memory, requested_bytes
from lampo_pl.rewards import RewardBatch
from lampo_pl.rollout import Rollout, SamplingParams
from lampo_pl.settings import ComputeArgs, LoraArgs, MethodArgs, OptimArgs

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
pytestmark = pytest.mark.usefixtures("one_thread")


class RecordLosses(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: LamPOModule, *args: object) -> None:
        self.losses.append(float(trainer.callback_metrics["train/loss"]))


class LengthReward(LamPOModule):
    """Reward = fraction of the response budget used, + 0.1 on odd rows: every group has a gradient."""

    def score(self, rollout: Rollout, problems: list[Problem]) -> RewardBatch:
        total = (rollout.response_lengths.float() / self.sampling.max_new_tokens).tolist()
        total = [t + 0.1 * (i % 2) for i, t in enumerate(total)]  # differs even when every response is truncated
        return RewardBatch(total=total, components={"length": total}, correct=[0.0] * len(total), diagnostics={})


def _fit(preflight: bool) -> tuple[list[float], dict[str, torch.Tensor]]:
    L.seed_everything(0, verbose=False)
    module = LengthReward(model="tiny:qwen3", group_size=4, prompts_per_step=2,
                         lora=LoraArgs(r=4, alpha=8, dropout=0.1),  # dropout draws from torch's RNG in every pass
                         sampling=SamplingParams(temperature=1.0, max_new_tokens=12),
                         method=MethodArgs(estimator="lampo", beta=0.04), optim=OptimArgs(lr=1e-2),
                         compute=ComputeArgs(micro_batch_size=4, preflight=preflight))  # fmt: skip
    data = ProblemDataModule(train_set="synthetic", eval_sets=[], prompts_per_step=2, synthetic_size=16,
                             synthetic_levels=[1])  # fmt: skip
    losses = RecordLosses()
    trainer = L.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[losses])  # fmt: skip
    trainer.fit(module, datamodule=data)
    return losses.losses, adapter_state(module.policy_model, "policy")


def test_preflight_logs_its_peak_and_leaves_the_run_unchanged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    on_losses, on_adapter = _fit(preflight=True)
    assert "preflight: the worst case (micro-batch 4 × (" in caplog.text and "fits: peak" in caplog.text
    caplog.clear()
    off_losses, off_adapter = _fit(preflight=False)
    assert "preflight" not in caplog.text
    assert len(on_losses) == 2 and on_losses == off_losses  # bit-identical, RNG stream included
    assert any(v.abs().max() > 0 for k, v in on_adapter.items() if "lora_B" in k), "the steps must train"
    assert on_adapter.keys() == off_adapter.keys()
    for key in on_adapter:
        assert torch.equal(on_adapter[key], off_adapter[key]), key


def _fit_under_limit(tmp_path: Path, micro_batch: int) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests' / 'scripts'}",
    }
    args = ["fit", "-c", SMOKE, "--trainer.logger", "false", "--trainer.callbacks", "null",
            "--trainer.enable_model_summary", "false", "--trainer.enable_progress_bar", "false",
            "--model.sampling.max_new_tokens", "1000", "--model.compute.micro_batch_size", str(micro_batch),
            "--trainer.callbacks+=memory_limit.AddressSpaceLimit",
            "--trainer.callbacks.headroom_mib", "96", "--trainer.callbacks.stop_after_preflight", "true"]  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "lampo_pl", *args], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )


def test_a_run_that_does_not_fit_stops_in_one_line_with_settings_that_do(tmp_path: Path) -> None:
    proc = _fit_under_limit(tmp_path, micro_batch=8)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("lampo fit: error: preflight: the worst step (micro-batch 8 × ("), line
    assert "ran out of memory after reaching a peak of" in line and "CPU allocation failed" in line
    assert "model.compute.micro_batch_size: 4" in line or "model.compute.micro_batch_size: 2" in line
    assert "model.lora.gradient_checkpointing: true" in line
    assert "Traceback" not in proc.stderr


def test_a_run_that_fits_under_the_same_limit_logs_its_peak(tmp_path: Path) -> None:
    proc = _fit_under_limit(tmp_path, micro_batch=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "preflight: the worst case (micro-batch 2 × (" in proc.stderr + proc.stdout
    assert "fits: peak" in proc.stderr + proc.stdout


def test_out_of_memory_errors_are_recognised_and_sized() -> None:
    cuda = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total capacity")
    cpu = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
        "you tried to allocate 4194304 bytes. Error code 12 (Cannot allocate memory)"
    )
    assert is_out_of_memory(cuda) and is_out_of_memory(cpu) and is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert requested_bytes(cuda) == int(2.5 * 2**30) and requested_bytes(cpu) == 4194304
    case = WorstCase(prompt=[1] * 10, response_tokens=20, micro_batch=8, generation_rows=8, sequences=8)
    line = failure_line(case, 3 * 2**30, "CUDA out of memory", ["model.compute.micro_batch_size: 4"])
    assert "\n" not in line and "3.00 GiB" in line and "micro-batch 8 × (10 prompt + 20 response)" in line
