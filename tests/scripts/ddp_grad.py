"""The first step's gradient of every aggregation, on 1 process or on 2 DDP ranks (gloo, CPU).

Run by tests/test_ddp.py as ``python tests/scripts/ddp_grad.py OUT_DIR DEVICES [NUM_NODES [MODE ...]]``
(tests/test_multinode.py: 1 device on each of 2 "nodes", two processes with torchrun's variables). The rollouts are
fixed functions of the problems (no sampling), so 2 ranks with B prompts each and 1 process with
the union of their 2B prompts (the data module cuts one seeded order the same way) see the same
responses; each run saves the gradients its optimiser would apply, after DDP's averaging.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lampo_pl.data.datamodule import ProblemDataModule, epoch_permutation
from lampo_pl.data.record import Problem
from lampo_pl.module import LamPOModule
from lampo_pl.rewards import RewardBatch
from lampo_pl.rollout import Rollout, SamplingParams, left_pad, right_pad
from lampo_pl.settings import ComputeArgs, LoraArgs, MethodArgs, OptimArgs

MODES = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm", "lambda")
B, G, MAX_NEW = 2, 4, 8


class FixedRollouts(LamPOModule):
    """Responses drawn from a generator seeded by the problem, of varied lengths; reward from the tokens."""

    def collect_rollout(
        self, batch: list[Problem], prompts: list[str], round_index: int = 0
    ) -> tuple[Rollout, list[Problem]]:
        encoded = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        rows, responses = [], []
        for q, ids in zip(batch, encoded, strict=True):
            gen = torch.Generator().manual_seed(sum(map(ord, q.id)))
            for i in range(G):
                length = 2 + (i * 3 + len(q.id)) % (MAX_NEW - 1)  # 2..8 tokens
                rows.append(ids)
                responses.append(torch.randint(3, 200, (length,), generator=gen).tolist())
        device = self.device
        prompt_ids, prompt_mask = left_pad(rows, 0, device)  # [N, P]
        response_ids, response_mask = right_pad(responses, 0, device)  # [N, L]
        lengths = response_mask.sum(dim=1)  # [N]
        rollout = Rollout(
            input_ids=torch.cat([prompt_ids, response_ids], dim=1),
            attention_mask=torch.cat([prompt_mask, response_mask], dim=1),
            response_mask=response_mask, prompt_len=prompt_ids.shape[1], response_lengths=lengths,
            truncated=lengths == MAX_NEW, texts=[str(r) for r in responses], generation_seconds=0.0,
        )  # fmt: skip
        return rollout, [q for q in batch for _ in range(G)]

    def score(self, rollout: Rollout, problems: list[Problem]) -> RewardBatch:
        total = (((rollout.response_ids % 3) * rollout.response_mask).sum(dim=1) % 4).double().tolist()  # [N]
        # Dynamic sampling drops one group: the first of the shared order, which only rank 0 holds. The ranks
        # then keep 1 and 2 groups, so per-rank counts would differ from the global ones in every mode.
        train = self.trainer.datamodule.train_problems
        dropped = train[epoch_permutation(len(train), 0, 0)[0]].id
        correct = [0.0 if q.id == dropped else float(i % 2) for i, q in enumerate(problems)]
        return RewardBatch(total=total, components={"fixed": total}, correct=correct, diagnostics={})


class SaveGrads(L.Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
        if trainer.global_rank == 0:  # DDP has averaged the ranks' gradients: every rank holds the same
            grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}
            torch.save(grads, self.out)


def main(out: Path, devices: int, num_nodes: int = 1, modes: tuple[str, ...] = MODES) -> None:
    world = devices * num_nodes
    for mode in modes:
        L.seed_everything(0, verbose=False)
        module = FixedRollouts(
            model="tiny:qwen3",
            group_size=G,
            prompts_per_step=B * (2 // world),
            lora=LoraArgs(r=4, alpha=8, dtype="float64"),
            sampling=SamplingParams(max_new_tokens=MAX_NEW),
            method=MethodArgs(
                estimator="grpo",
                aggregation=mode,
                beta=0.04,
                lambda_init=0.5,
                dynamic_sampling=True,
                max_refill_rounds=0,
            ),
            optim=OptimArgs(lr=1e-2, grad_clip=0.0),
            compute=ComputeArgs(micro_batch_size=4),
        )
        data = ProblemDataModule(
            train_set="synthetic",
            eval_sets=[],
            prompts_per_step=B * (2 // world),
            synthetic_size=16,
            synthetic_levels=[1, 2],
        )
        trainer = L.Trainer(
            strategy="ddp" if world > 1 else "auto",
            accelerator="cpu",
            devices=devices,
            num_nodes=num_nodes,
            max_steps=1,
            logger=False,
            use_distributed_sampler=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[SaveGrads(out / f"{mode}-{world}.pt")],
        )
        trainer.fit(module, datamodule=data)


if __name__ == "__main__":
    nodes = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    main(Path(sys.argv[1]), int(sys.argv[2]), nodes, tuple(sys.argv[4:]) or MODES)
