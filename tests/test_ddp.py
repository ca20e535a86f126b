"""A two-process DDP run on CPU (gloo) completes and keeps the replicas' policy adapters equal."""

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
