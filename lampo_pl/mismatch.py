"""Sampler–trainer mismatch: how far the sampler's log-probs are from the trainer's, and a correction.

A fast sampler (vLLM's kernels, another summation order, bf16) does not compute exactly the
log π_θ the trainer computes for the same tokens, so a rollout is slightly off-policy even at μ = 1.
1. The mismatch is measured every step on the response tokens: mean and max of
   |log π_old − log π_sampler|, where π_old is the trainer's log-prob of the rollout policy (the
   detached current one at μ = 1), as TRL 1.16 logs ``sampling/sampling_logp_difference/{mean,max}``
   (``trl/trainer/grpo_trainer.py``, ``_generate_and_score_completions``).
2. Truncated importance sampling (TIS; Yao et al. 2025, "Your efficient RL framework secretly brings
   you off-policy RL training"): each token's policy-gradient loss is weighted by
   w = min(π_old / π_sampler, C), a constant. TRL's ``vllm_importance_sampling_mode="token_truncate"``
   (``vllm_importance_sampling_clip_max``) and verl's ``tis_imp_ratio_cap`` (``dp_actor.py``) weight it
   the same way; as in TRL, the β·KL term is added after the weighting and is not weighted.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sampler_mismatch(old_logp: Tensor, sampler_logp: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """-> (sum of |Δ|, number of tokens, max |Δ|) over `mask` of Δ = old − sampler log-probs. [n, l] x3 -> 3 scalars"""
    diff = (old_logp.detach() - sampler_logp).abs() * mask  # [n, l]
    return diff.sum(), mask.sum(), diff.max() if diff.numel() else diff.new_zeros(())


def truncated_is_weights(old_logp: Tensor, sampler_logp: Tensor, cap: float) -> Tensor:
    """TIS weights w = min(exp(log π_old − log π_sampler), C), constants. [n, l] -> [n, l]"""
    return torch.exp(old_logp.detach() - sampler_logp).clamp(max=cap)  # [n, l]


class MismatchMeter:
    """Accumulates `sampler_mismatch` over a step's micro-batches; `pop` returns the step's metrics."""

    def __init__(self) -> None:
        self.total, self.count, self.max = 0.0, 0.0, 0.0

    def add(self, old_logp: Tensor, sampler_logp: Tensor, mask: Tensor) -> None:
        total, count, largest = sampler_mismatch(old_logp, sampler_logp, mask)
        self.total, self.count = self.total + float(total), self.count + float(count)
        self.max = max(self.max, float(largest))

    def pop(self) -> dict[str, float]:
        """``sampler_logp_diff_{mean,max}`` (NaN when nothing was measured), and reset."""
        measured = self.count > 0
        out = {"sampler_logp_diff_mean": self.total / self.count if measured else math.nan,
               "sampler_logp_diff_max": self.max if measured else math.nan}  # fmt: skip
        self.total, self.count, self.max = 0.0, 0.0, 0.0
        return out
