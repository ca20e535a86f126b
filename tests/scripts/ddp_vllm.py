"""DDP (gloo, CPU) with one colocated vLLM engine per rank, tiny head_dim-32 Qwen3: issue 24, item B.

Run by tests/test_ddp_vllm.py as ``python tests/scripts/ddp_vllm.py OUT_DIR DEVICES [STEPS]``, or as
``python tests/scripts/ddp_vllm.py OUT_DIR resume TAG SEED [CKPT]`` (`resume_main`); Lightning's launcher
re-runs this script for rank 1. DEVICES 2: each rank samples with its own engine and saves its
step-0 rollout and rewards, the step-0 gradient after DDP's averaging, and the sampler–trainer log-prob
gap of its last step. DEVICES 1: one process replays the union of the two ranks' step-0 rollouts (no
engine) and saves its gradient, which the ranks' averaged gradient must equal.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lampo_pl.checkpointing import AtomicCheckpointIO, RNGStateCheckpoint
from lampo_pl.data.datamodule import ProblemDataModule
from lampo_pl.data.record import Problem
from lampo_pl.module import LamPOModule
from lampo_pl.policy import adapter_state
from lampo_pl.rewards import RewardBatch
from lampo_pl.rollout import Rollout, SamplingParams, left_pad, right_pad
from lampo_pl.settings import ComputeArgs, LoraArgs, MethodArgs, OptimArgs

B, G, MAX_NEW = 2, 4, 12


class LengthReward(LamPOModule):
    """Reward from the response's tokens (differs within every group); rank's step-0 rollout saved for the replay."""

    out: Path

    def collect_rollout(self, batch: list[Problem], prompts: list[str], round_index: int = 0) -> Any:
        rollout, problems = super().collect_rollout(batch, prompts, round_index)
        if self.global_step == 0:
            torch.save(rollout.__dict__, self.out / f"rollout{self.global_rank}.pt")
        return rollout, problems

    def score(self, rollout: Rollout, problems: list[Problem]) -> RewardBatch:
        ids = rollout.response_ids * rollout.response_mask  # [N, L]
        total = ((ids % 7).sum(dim=1) % 5).double().tolist()  # [N]
        return RewardBatch(total=total, components={"tokens": total}, correct=[0.0] * len(total), diagnostics={})


class Replay(LengthReward):
    """One process over the union of the two ranks' saved step-0 rollouts (rank 0's rows, then rank 1's)."""

    def collect_rollout(self, batch: list[Problem], prompts: list[str], round_index: int = 0) -> Any:
        parts = [torch.load(self.out / f"rollout{r}.pt", weights_only=False) for r in (0, 1)]
        prompts_, responses, logps = [], [], []
        for part in parts:
            for ids, mask, resp_mask, lp in zip(part["input_ids"], part["attention_mask"], part["response_mask"],
                                               part["sampled_logprobs"], strict=True):  # fmt: skip
                p = part["prompt_len"]
                prompts_.append(ids[:p][mask[:p].bool()].tolist())
                n = int(resp_mask.sum())
                responses.append(ids[p : p + n].tolist())
                logps.append(lp[:n])
        device = self.device
        prompt_ids, prompt_mask = left_pad(prompts_, 0, device)  # [N, P]
        response_ids, response_mask = right_pad(responses, 0, device)  # [N, L]
        sampled = torch.zeros(response_ids.shape)  # [N, L]
        for i, lp in enumerate(logps):
            sampled[i, : len(lp)] = lp
        lengths = response_mask.sum(dim=1)  # [N]
        rollout = Rollout(input_ids=torch.cat([prompt_ids, response_ids], dim=1),
                          attention_mask=torch.cat([prompt_mask, response_mask], dim=1),
                          response_mask=response_mask, prompt_len=prompt_ids.shape[1], response_lengths=lengths,
                          truncated=torch.cat([part["truncated"] for part in parts]), texts=[""] * len(responses),
                          generation_seconds=0.0, sampled_logprobs=sampled)  # fmt: skip
        return rollout, [q for q in batch for _ in range(G)]


class Save(L.Callback):
    def __init__(self, out: Path, devices: int) -> None:
        self.out, self.devices = out, devices

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
        if trainer.global_step == 0 and trainer.global_rank == 0:  # DDP has averaged: every rank holds the same
            grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}
            torch.save(grads, self.out / f"grads-{self.devices}.pt")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        gap = {k: float(v) for k, v in trainer.callback_metrics.items() if "sampler_logp" in k or k == "train/loss"}
        torch.save({"step": trainer.global_step, **gap}, self.out / f"gap{trainer.global_rank}-{self.devices}.pt")


class RareCorrect(LamPOModule):
    """Tokens reward as `LengthReward`; "correct" for about one response in five, so that many groups are all
    wrong, DAPO refills them, and often one rank needs a refill round while the other does not."""

    def score(self, rollout: Rollout, problems: list[Problem]) -> RewardBatch:
        ids = rollout.response_ids * rollout.response_mask  # [N, L]
        total = ((ids % 7).sum(dim=1) % 5).double().tolist()  # [N]
        correct = [float(t == 0) for t in total]
        return RewardBatch(total=total, components={"tokens": total}, correct=correct, diagnostics={})


class Record(L.Callback):
    """Per step: this rank's texts, loss, generation rounds and refill batches taken; at the end its adapter."""

    def __init__(self, out: Path, tag: str) -> None:
        self.out, self.tag, self.steps = out, tag, {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        last = pl_module.last_step
        self.steps[trainer.global_step] = {"texts": last.texts, "loss": last.metrics["loss"],
                                           "rounds": int(last.metrics["dynamic_sampling/rounds"]),
                                           "refills": trainer.datamodule._refills}  # fmt: skip

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        out = {"steps": self.steps, "adapter": adapter_state(pl_module.policy_model, "policy")}
        torch.save(out, self.out / f"{self.tag}{trainer.global_rank}.pt")


def resume_main(out: Path, tag: str, seed: int, ckpt: str | None, steps: int = 3) -> None:
    """``steps`` DDP steps with the vLLM engine and DAPO dynamic sampling; a checkpoint after every step, or,
    with ``ckpt``, resumed from one. ``seed`` stands for the fresh ``PL_GLOBAL_SEED`` a resumed CLI run may draw:
    the run's seed must come back from the checkpoint (`LamPOModule.seed_of_run`)."""
    L.seed_everything(seed, verbose=False)
    module = RareCorrect(model="tiny:qwen3-hd32", group_size=G, prompts_per_step=B, lora=LoraArgs(r=4, alpha=8),
                         sampling=SamplingParams(temperature=1.0, max_new_tokens=8, engine="vllm"),
                         method=MethodArgs(estimator="grpo", aggregation="token_mean", beta=0.04,
                                           dynamic_sampling=True, filter_signal="correctness", max_refill_rounds=2),
                         optim=OptimArgs(lr=5e-2, grad_clip=0.0), compute=ComputeArgs(micro_batch_size=4))  # fmt: skip
    data = ProblemDataModule(train_set="synthetic", eval_sets=[], prompts_per_step=B, synthetic_size=32,
                             synthetic_levels=[1])  # fmt: skip
    callbacks: list[L.Callback] = [Record(out, tag), RNGStateCheckpoint()]
    if ckpt is None:
        callbacks.append(ModelCheckpoint(dirpath=out / "ck", filename="{step}", every_n_train_steps=1, save_top_k=-1))
    trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_steps=steps, logger=False,
                        use_distributed_sampler=False, plugins=[AtomicCheckpointIO()],
                        enable_checkpointing=ckpt is None, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=callbacks)  # fmt: skip
    trainer.fit(module, datamodule=data, ckpt_path=ckpt)


def main(out: Path, devices: int, steps: int) -> None:
    L.seed_everything(0, verbose=False)
    cls = LengthReward if devices == 2 else Replay
    engine = "vllm" if devices == 2 else "native"
    module = cls(model="tiny:qwen3-hd32", group_size=G, prompts_per_step=B * (2 // devices),
                 lora=LoraArgs(r=4, alpha=8), sampling=SamplingParams(temperature=1.0, max_new_tokens=MAX_NEW,
                                                                      engine=engine),
                 method=MethodArgs(estimator="grpo", aggregation="token_mean", beta=0.04),
                 optim=OptimArgs(lr=5e-2, grad_clip=0.0), compute=ComputeArgs(micro_batch_size=4))  # fmt: skip
    module.out = out
    data = ProblemDataModule(train_set="synthetic", eval_sets=[], prompts_per_step=B * (2 // devices),
                             synthetic_size=32, synthetic_levels=[1])  # fmt: skip
    trainer = L.Trainer(strategy="ddp" if devices > 1 else "auto", accelerator="cpu", devices=devices,
                        max_steps=steps if devices == 2 else 1, logger=False, use_distributed_sampler=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Save(out, devices)])  # fmt: skip
    trainer.fit(module, datamodule=data)


if __name__ == "__main__" and sys.argv[2] == "resume":
    resume_main(Path(sys.argv[1]), sys.argv[3], int(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else None)
elif __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 3)
