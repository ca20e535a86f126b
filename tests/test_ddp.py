"""DDP on CPU (gloo): replicas stay equal, and 2 ranks give the gradient of 1 process over both batches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).parent / "scripts" / "ddp_fit.py"


def test_two_process_ddp_keeps_replicas_equal(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    texts0, texts1 = (torch.load(tmp_path / f"texts{r}.pt", weights_only=True) for r in (0, 1))
    assert texts0 != texts1, "ranks should sample different responses (else the test proves nothing)"
    assert rank0.keys() == rank1.keys()
    assert any(v.abs().max() > 0 for k, v in rank0.items() if "lora_B" in k), "the adapter must have trained"
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"replicas differ at {key}"


GRAD_SCRIPT = Path(__file__).parent / "scripts" / "ddp_grad.py"
MODES = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm", "lambda")


def test_two_ranks_give_the_gradient_of_one_process_over_both_batches(tmp_path: Path) -> None:
    """Issue 12, item 3: every aggregation (λ-GRPO's λ included) normalises by the counts over all ranks, so the
    2-rank DDP gradient equals the 1-process gradient over the union of the ranks' batches (float64, 1e-6)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for devices in ("2", "1"):
        proc = subprocess.run([sys.executable, str(GRAD_SCRIPT), str(tmp_path), devices], env=env,
                              capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-4000:]
    for mode in MODES:
        ddp, single = (torch.load(tmp_path / f"{mode}-{d}.pt", weights_only=True) for d in (2, 1))
        assert ddp.keys() == single.keys() and any("lora_B" in k for k in ddp)
        assert ("lam" in ddp) == (mode == "lambda")
        assert any(v.abs().max() > 0 for k, v in ddp.items() if "lora_B" in k), "the step must have a gradient"
        for key in ddp:
            torch.testing.assert_close(ddp[key], single[key], rtol=1e-6, atol=1e-9, msg=f"{mode}: {key}")
