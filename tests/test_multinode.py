"""Two "nodes" on one machine (issue 24, item C): two processes over the loopback address, one device each,
with torchrun's variables (MASTER_ADDR / MASTER_PORT, RANK, NODE_RANK / GROUP_RANK, LOCAL_RANK, WORLD_SIZE),
``trainer.num_nodes: 2``. Lightning picks its TorchElastic environment from them, as under ``torchrun`` or
``srun`` on two machines. Their first step's gradient equals one process's over both nodes' batches.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "ddp_grad.py"
MODES = ("token_mean", "lambda")  # a global token count, and λ-GRPO's own parameter


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_nodes_give_the_gradient_of_one_process_over_both_batches(tmp_path: Path) -> None:
    base = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    port = str(free_port())
    nodes = []
    for node in (0, 1):
        env = {**base, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2", "RANK": str(node),
               "NODE_RANK": str(node), "GROUP_RANK": str(node), "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
               "TORCHELASTIC_RUN_ID": "lampo-test"}  # fmt: skip
        command = [sys.executable, str(SCRIPT), str(tmp_path), "1", "2", *MODES]
        nodes.append(subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))  # fmt: skip
    for proc in nodes:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-4000:]
    single = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "1", "1", *MODES], env=base,
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)  # fmt: skip
    assert single.returncode == 0, single.stderr[-4000:]
    for mode in MODES:
        two, one = (torch.load(tmp_path / f"{mode}-{w}.pt", weights_only=True) for w in (2, 1))
        assert two.keys() == one.keys() and any("lora_B" in k for k in two)
        assert any(v.abs().max() > 0 for k, v in two.items() if "lora_B" in k), "the step must have a gradient"
        for key in two:
            torch.testing.assert_close(two[key], one[key], rtol=1e-6, atol=1e-9, msg=f"{mode}: {key}")
