"""Two-process DDP (gloo, CPU) training of the tiny model; each rank dumps its policy adapter.

Run by tests/test_ddp.py as ``python tests/scripts/ddp_fit.py OUT_DIR``; Lightning's launcher
re-runs this script for rank 1. Each rank samples with its own seed, so the rollouts, rewards and
gradients differ between ranks: replicas stay equal only if gradients are synchronised.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch

from lampo_pl.data.datamodule import ProblemDataModule
from lampo_pl.data.record import Problem
from lampo_pl.module import LamPOModule
from lampo_pl.policy import adapter_state
from lampo_pl.rewards import RewardBatch
from lampo_pl.rollout import Rollout, SamplingParams
from lampo_pl.settings import ComputeArgs, MethodArgs, OptimArgs


class LengthReward(LamPOModule):
    """Reward = fraction of the response budget used: differs between samples, so every group has signal."""

    def score(self, rollout: Rollout, problems: list[Problem]) -> RewardBatch:
        total = (rollout.response_lengths.float() / self.sampling.max_new_tokens).tolist()
        total = [t + 0.1 * (i % 2) for i, t in enumerate(total)]
        return RewardBatch(total=total, components={"length": total}, correct=[0.0] * len(total), diagnostics={})


class PerRankSeed(L.Callback):
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.manual_seed(100 + trainer.global_rank)


class DumpAdapter(L.Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_end(self, trainer: L.Trainer, pl_module: LamPOModule) -> None:
        torch.save(adapter_state(pl_module.policy_model, "policy"), self.out / f"rank{trainer.global_rank}.pt")
        torch.save(pl_module.last_step.texts, self.out / f"texts{trainer.global_rank}.pt")


def main(out: Path) -> None:
    L.seed_everything(0, verbose=False)
    module = LengthReward(model="tiny:qwen3", group_size=4, prompts_per_step=2,
                          sampling=SamplingParams(temperature=1.0, max_new_tokens=8),
                          method=MethodArgs(estimator="lampo", beta=0.04), optim=OptimArgs(lr=1e-2),
                          compute=ComputeArgs(micro_batch_size=4))
    data = ProblemDataModule(train_set="synthetic", eval_sets=[], prompts_per_step=2, synthetic_size=16,
                             synthetic_levels=[1])
    trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_steps=2, logger=False,
                        use_distributed_sampler=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[PerRankSeed(), DumpAdapter(out)])
    trainer.fit(module, datamodule=data)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
