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
3. A sampler that reports the log-probs of its top-p / top-k truncated distribution (vLLM's engine) is not
   compared with π_old at all: the difference would be the truncation, not the kernels. Its cut-away mass
   is logged instead (``sampler_truncated_mass_{mean,max}``), and TIS with it is refused
   (lampo_pl/vllm_checks.py).
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


def truncated_mass(old_logp: Tensor, truncated_logp: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """-> (sum, number of tokens, max) over `mask` of the probability mass top-p / top-k cut away at each token.

    A sampler that truncates draws o_t from π(·)/M_t on its kept set (M_t: the kept mass) and reports
    log π_trunc(o_t) = log π(o_t) − log M_t, so 1 − M_t = 1 − exp(log π_old − log π_trunc) (clamped at 0: the
    kernel mismatch, ~1e-6, rides along). [n, l] x3 -> 3 scalars
    """
    cut = (1 - torch.exp(old_logp.detach() - truncated_logp)).clamp(min=0) * mask  # [n, l]
    return cut.sum(), mask.sum(), cut.max() if cut.numel() else cut.new_zeros(())


class MismatchMeter:
    """Accumulates `sampler_mismatch` (or, from a truncating sampler, `truncated_mass`) over a step's
    micro-batches; `pop` returns the step's metrics."""

    def __init__(self) -> None:
        self.total, self.count, self.max = 0.0, 0.0, 0.0
        self.cut_total, self.cut_count, self.cut_max = 0.0, 0.0, 0.0

    def add(self, old_logp: Tensor, sampler_logp: Tensor, mask: Tensor, truncated: bool = False) -> None:
        """`truncated`: the sampler's log-probs are of its top-p / top-k truncated distribution (vLLM's)."""
        if truncated:
            total, count, largest = truncated_mass(old_logp, sampler_logp, mask)
            self.cut_total, self.cut_count = self.cut_total + float(total), self.cut_count + float(count)
            self.cut_max = max(self.cut_max, float(largest))
            return
        total, count, largest = sampler_mismatch(old_logp, sampler_logp, mask)
        self.total, self.count = self.total + float(total), self.count + float(count)
        self.max = max(self.max, float(largest))

    def pop(self) -> dict[str, float]:
        """``sampler_logp_diff_{mean,max}`` (NaN when nothing was measured), ``sampler_truncated_mass_{mean,max}``
        when a truncating sampler was measured, and reset."""
        measured = self.count > 0
        out = {"sampler_logp_diff_mean": self.total / self.count if measured else math.nan,
               "sampler_logp_diff_max": self.max if measured else math.nan}  # fmt: skip
        if self.cut_count > 0:
            out["sampler_truncated_mass_mean"] = self.cut_total / self.cut_count
            out["sampler_truncated_mass_max"] = self.cut_max
        self.total, self.count, self.max = 0.0, 0.0, 0.0
        self.cut_total, self.cut_count, self.cut_max = 0.0, 0.0, 0.0
        return out
