"""What one training step reports: its record (``StepRecord``) and its scalars (``step_metrics``, pure).

Rollout numbers (reward, accuracy, lengths, truncation), reward components and grader diagnostics,
what DAPO dynamic sampling did (groups sampled and kept, rounds), the optimisation phase's numbers
(``OptimResult``), the algorithm metrics of ``lampo_pl.metrics`` (advantages, clip fractions, KL,
LamPO's pair weights, λ) and the phase timings (``Phases``, timed by the training step).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor

from lampo_pl.advantages import AdvantageOutput
from lampo_pl.dynamic_sampling import Sample, SamplingRounds
from lampo_pl.losses import PolicyLossStats
from lampo_pl.metrics import AdvantageStats, AlgoMetrics, advantage_stats
from lampo_pl.rewards import RewardBatch
from lampo_pl.rollout import Rollout


class Phases:
    """Wall-clock seconds per named phase of a step: ``with phases("generation"): ...`` (logged as ``time/*_s``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


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

    @classmethod
    def of_step(cls, step: int, sample: Sample, adv: AdvantageOutput, metrics: dict[str, float]) -> StepRecord:
        g = sample.rollout.input_ids.shape[0] // len(sample.prompts)
        return cls(
            step=step, prompts=sample.prompts, problem_ids=[q.id for q in sample.problems[::g]],
            texts=sample.rollout.texts, rewards=sample.scored.total, components=sample.scored.components,
            advantages=adv.advantages.tolist(),
            pair_weights=None if adv.pair_weights is None else adv.pair_weights.tolist(), group_size=g,
            metrics=metrics,
        )


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


def step_metrics(
    rollout: Rollout, scored: RewardBatch, adv: AdvantageOutput, result: OptimResult, phases: Phases,
    rounds: SamplingRounds, *, group_size: int, skipped_steps: int, lam: Tensor | None, keep: Tensor | None = None,
) -> dict[str, float]:
    """Every scalar of one step, unprefixed; NaN marks one that does not apply (the caller drops those).

    The batch's numbers (reward, ``acc_trained``, components, lengths, truncation, advantages) cover the
    rows trained on, ``keep`` (``[N]`` bool; ``None``: all): dynamic sampling's filler groups ride in the
    batch outside the loss and would otherwise be counted. ``acc`` is the first round's (``SamplingRounds``).
    """
    kept = torch.ones(len(scored.total), dtype=torch.bool) if keep is None else keep.detach().bool().cpu()  # [N]
    gen_s = phases.seconds.get("generation", math.nan)
    metrics: dict[str, float] = {
        "acc": rounds.first_round_accuracy,  # on-policy, on the step's own prompts: comparable across methods
        "entropy": result.entropy,
        "grad_norm": result.grad_norm,
        "lr": result.lr,
        "skipped_steps": float(skipped_steps),
        "tokens_per_s": rounds.tokens_sampled / gen_s if gen_s > 0 else math.nan,  # every round's tokens
    }
    metrics |= trained_metrics(rollout, scored, adv, kept, group_size)
    metrics |= {f"reward_diag/{k}": float(v) for k, v in scored.diagnostics.items()}
    metrics |= {f"dynamic_sampling/{k}": float(v) for k, v in asdict(rounds).items() if k != "first_round_accuracy"}
    metrics |= {f"time/{k}_s": v for k, v in phases.seconds.items()}
    advantages = trained_advantage_stats(scored, adv, kept, group_size)
    metrics |= AlgoMetrics.of_step(result.loss, result.loss_stats, advantages, lam).as_dict()
    return metrics


def trained_metrics(
    rollout: Rollout, scored: RewardBatch, adv: AdvantageOutput, kept: Tensor, group_size: int
) -> dict[str, float]:
    """Reward, accuracy, components, lengths and truncation of the kept rows ``kept`` ``[N]`` (NaN: none kept)."""
    rewards = torch.tensor(scored.total)[kept]  # [n]
    lengths = rollout.response_lengths.float().cpu()[kept]  # [n]
    nan = math.nan
    any_kept = bool(kept.any())
    metrics = {
        "reward": float(rewards.mean()) if any_kept else nan,
        "reward_std": float(rewards.std(unbiased=False)) if any_kept else nan,
        "acc_trained": float(torch.tensor(scored.correct)[kept].mean()) if any_kept else nan,
        "response_len_mean": float(lengths.mean()) if any_kept else nan,
        "response_len_max": float(lengths.max()) if any_kept else nan,
        "truncated_frac": float(rollout.truncated.float().cpu()[kept].mean()) if any_kept else nan,
    }
    # NaN marks None; a component with no kept value is NaN too (nanmean of nothing).
    return metrics | {f"reward_{k}": float(torch.tensor(v)[kept].nanmean()) for k, v in scored.components.items()}


def trained_advantage_stats(scored: RewardBatch, adv: AdvantageOutput, kept: Tensor, group_size: int) -> AdvantageStats:
    """``advantage_stats`` of the kept groups (all NaN when none is kept)."""
    if not kept.any():
        return AdvantageStats(*([math.nan] * len(fields(AdvantageStats))))
    groups = kept.view(-1, group_size)[:, 0]  # [B] the kept groups (a group is kept whole)
    weights = None if adv.pair_weights is None else adv.pair_weights[groups.to(adv.pair_weights.device)]
    return advantage_stats(torch.tensor(scored.total)[kept], adv.advantages.detach().cpu()[kept], group_size,
                           weights)
