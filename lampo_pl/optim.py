"""AdamW over the policy adapter (and λ in its own group) with linear warm-up, constant or cosine after."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from lampo_pl.settings import OptimArgs


def build_optimizer(
    policy_params: Iterable[nn.Parameter], lam: nn.Parameter | None, optim: OptimArgs
) -> torch.optim.AdamW:
    """Only the ``policy`` LoRA parameters and λ are ever given to the optimiser."""
    params = list(policy_params)
    if not params:
        raise ValueError("the policy adapter has no trainable parameters: check lora.target_modules")
    groups = [{"params": params, "lr": optim.lr, "weight_decay": optim.weight_decay, "name": "policy"}]
    if lam is not None:
        groups.append({"params": [lam], "lr": optim.lambda_lr, "weight_decay": 0.0, "name": "lambda"})
    return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas)


def build_scheduler(opt: torch.optim.Optimizer, optim: OptimArgs, total_steps: int | None) -> LambdaLR:
    """Linear warm-up over ``optim.warmup_steps`` (every group), then constant or cosine to 0."""
    warmup = max(0, optim.warmup_steps)
    if optim.schedule == "cosine" and not total_steps:
        raise ValueError("optim.schedule=cosine needs trainer.max_steps > 0 to know where the cosine ends")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if optim.schedule == "constant" or not total_steps:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(opt, factor)
