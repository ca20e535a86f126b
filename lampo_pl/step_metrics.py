"""What one training step reports: its record (``StepRecord``) and its scalars (``step_metrics``, pure).

Rollout numbers (reward, accuracy, lengths, truncation), reward components and grader diagnostics,
the optimisation phase's numbers (``OptimResult``), the algorithm metrics of ``lampo_pl.metrics``
(advantages, clip fractions, KL, LamPO's pair weights, λ) and the phase timings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lampo_pl.advantages import AdvantageOutput
from lampo_pl.batching import Phases
from lampo_pl.losses import PolicyLossStats
from lampo_pl.metrics import AlgoMetrics, advantage_stats
from lampo_pl.rewards import RewardBatch
from lampo_pl.rollout import Rollout


@dataclass
class StepRecord:
    """What the last training step sampled and how it scored it (read by the rollout-samples callback).

    Attributes:
        step: Global step the record belongs to.
        prompts: The B rendered prompts.
        problem_ids: The B problem ids.
        texts: The N = B·G responses, groups contiguous.
        rewards: N total rewards.
        components: Per reward name, N unweighted values.
        advantages: N advantages.
        pair_weights: LamPO's ``[B][G][G]`` pair weights, else ``None``.
        group_size: G.
        metrics: The step's logged scalars, without the ``train/`` prefix (NaN ones left out).
    """

    step: int
    prompts: list[str]
    problem_ids: list[str]
    texts: list[str]
    rewards: list[float]
    components: dict[str, list[float]]
    advantages: list[float]
    pair_weights: list[list[list[float]]] | None
    group_size: int
    metrics: dict[str, float]


@dataclass
class OptimResult:
    """What the optimisation phase reports (averaged over μ passes and micro-batches).

    Attributes:
        loss_stats: Mean clip fractions and KLs; ``None`` when every pass was skipped.
        loss: Mean full-batch loss over the μ passes.
        entropy: Mean token entropy of the policy over the loss tokens.
        grad_norm: Mean pre-clip global grad-norm over the optimiser steps taken.
        skipped: Whether a non-finite loss or gradient skipped an optimiser step.
        lr: Learning rate of the LoRA parameters.
    """

    loss_stats: PolicyLossStats | None
    loss: float
    entropy: float
    grad_norm: float
    skipped: bool
    lr: float


def algo_metrics(
    rewards: Tensor, adv: AdvantageOutput, result: OptimResult, group_size: int, lam: Tensor | None
) -> AlgoMetrics:
    """The algorithm-level numbers of one step; NaN where they do not apply. rewards: [N]"""
    st, nan = result.loss_stats, math.nan
    return AlgoMetrics(
        loss=result.loss,
        clip_frac_low=float(st.clip_frac_low) if st else nan,
        clip_frac_high=float(st.clip_frac_high) if st else nan,
        clip_frac_region=float(st.clip_frac_region) if st else nan,
        approx_kl_old=float(st.approx_kl_old) if st else nan,
        kl_ref=float(st.kl_ref) if st else nan,
        ratio_mean=float(st.ratio_mean) if st else nan,
        advantages=advantage_stats(rewards, adv.advantages, group_size, adv.pair_weights),
        lam=float(lam.detach()) if lam is not None else nan,
    )


def step_metrics(
    rollout: Rollout, scored: RewardBatch, adv: AdvantageOutput, result: OptimResult, phases: Phases, *,
    group_size: int, skipped_steps: int, lam: Tensor | None,
) -> dict[str, float]:
    """Every scalar of one step, unprefixed; NaN marks one that does not apply (the caller drops those)."""
    rewards = torch.tensor(scored.total)  # [N]
    lengths = rollout.response_lengths.float()  # [N]
    gen_s = phases.seconds.get("generation", math.nan)
    metrics: dict[str, float] = {
        "reward": float(rewards.mean()),
        "reward_std": float(rewards.std(unbiased=False)),
        "acc": float(torch.tensor(scored.correct).mean()),
        "response_len_mean": float(lengths.mean()),
        "response_len_max": float(lengths.max()),
        "truncated_frac": float(rollout.truncated.float().mean()),
        "entropy": result.entropy,
        "grad_norm": result.grad_norm,
        "lr": result.lr,
        "skipped_steps": float(skipped_steps),
        "tokens_per_s": float(lengths.sum()) / gen_s if gen_s > 0 else math.nan,
    }
    metrics |= {f"reward_{k}": float(torch.tensor(v).nanmean()) for k, v in scored.components.items()}  # NaN: None
    metrics |= {f"reward_diag/{k}": float(v) for k, v in scored.diagnostics.items()}
    metrics |= algo_metrics(rewards, adv, result, group_size, lam).as_dict()
    metrics |= {f"time/{k}_s": v for k, v in phases.seconds.items()}
    return metrics
