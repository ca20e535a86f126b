"""Sampler–trainer mismatch: how far the sampler's log-probs are from the trainer's, and its correction.

A fast sampler (vLLM's kernels, another summation order, bf16) does not compute exactly the
log π_θ the trainer computes for the same tokens, so a rollout is slightly off-policy even at μ = 1.
1. The mismatch is measured every step on the response tokens: mean and max of
   |log π_old − log π_sampler|, where π_old is the trainer's log-prob of the rollout policy (the
   detached current one at μ = 1), as TRL 1.16 logs ``sampling/sampling_logp_difference/{mean,max}``
   (``trl/trainer/grpo_trainer.py``, ``_generate_and_score_completions``).
2. The correction weights each token's policy-gradient loss by a constant importance weight built from
   r = π_old / π_sampler, in one of TRL 1.16's four ``vllm_importance_sampling_mode``s
   (``grpo_trainer.py`` lines 2660-2708; verl's "rollout correction": TIS and MIS):
   - ``token_truncate``: w_t = clamp(r_t, C_min, C_max) (truncated IS, TIS; Yao et al. 2025, "Your
     efficient RL framework secretly brings you off-policy RL training"; verl's ``tis_imp_ratio_cap``);
   - ``token_mask``: w_t = r_t, or 0 where r_t is outside [C_min, C_max] (masked IS, MIS);
   - ``sequence_truncate`` / ``sequence_mask``: the same on one ratio per response,
     r_i = exp(Σ_t m_t (log π_old − log π_sampler)) — the product of its token ratios, as TRL
     (a sum, not GSPO's mean) — broadcast to the response's tokens.
   TRL's default is ``sequence_mask`` with C_max = 3 and no C_min; lampo-pl's is none (docs/algorithms.md).
   As in TRL, the β·KL term is added after the weighting and is not weighted.
3. A sampler that reports the log-probs of its top-p / top-k truncated distribution (vLLM's engine) is not
   compared with π_old at all: the difference would be the truncation, not the kernels. Its cut-away mass
   is logged instead (``sampler_truncated_mass_{mean,max}``), and a correction with it is refused
   (lampo_pl/vllm_checks.py).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

CorrectionMode = Literal["none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]


def sampler_mismatch(old_logp: Tensor, sampler_logp: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """-> (sum of |Δ|, number of tokens, max |Δ|) over `mask` of Δ = old − sampler log-probs. [n, l] x3 -> 3 scalars"""
    diff = (old_logp.detach() - sampler_logp).abs() * mask  # [n, l]
    return diff.sum(), mask.sum(), diff.max() if diff.numel() else diff.new_zeros(())


def truncated_is_weights(old_logp: Tensor, sampler_logp: Tensor, cap: float) -> Tensor:
    """TIS weights w = min(exp(log π_old − log π_sampler), C), constants. [n, l] -> [n, l]"""
    return torch.exp(old_logp.detach() - sampler_logp).clamp(max=cap)  # [n, l]


def sampler_correction_weights(
    old_logp: Tensor,
    sampler_logp: Tensor,
    mask: Tensor,
    mode: CorrectionMode,
    *,
    c_max: float | None = 3.0,
    c_min: float | None = None,
) -> Tensor:
    """Constant importance weights of the policy term: ``[n, l]`` (token modes) or ``[n, 1]`` (sequence modes).

    Args:
        old_logp: ``[n, l]`` the trainer's log π_old of the sampled tokens.
        sampler_logp: ``[n, l]`` the sampler's own log-probs of them.
        mask: ``[n, l]`` loss tokens; the log-ratio is zeroed elsewhere (weight 1, as TRL).
        mode: one of the four modes of the module docstring (``none`` is refused: pass no weights).
        c_max, c_min: C_max and C_min; ``None`` leaves that side unbounded.
    """
    if mode == "none" or mode not in ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask"):
        raise ValueError(f"sampler correction mode {mode!r}: expected token_truncate | token_mask | "
                         "sequence_truncate | sequence_mask")
    log_r = (old_logp.detach() - sampler_logp.detach()) * mask.to(old_logp.dtype)  # [n, l]
    if mode.startswith("sequence"):
        log_r = log_r.sum(dim=1, keepdim=True)  # [n, 1] product of the token ratios
    ratio = torch.exp(log_r)  # [n, l] or [n, 1]
    if mode.endswith("truncate"):
        return ratio.clamp(min=c_min, max=c_max)
    low = -math.inf if c_min is None else c_min
    high = math.inf if c_max is None else c_max
    return ratio.masked_fill((ratio < low) | (ratio > high), 0.0)


def truncated_mass(old_logp: Tensor, truncated_logp: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """-> (sum, number of tokens, max) over `mask` of the probability mass top-p / top-k cut away at each token.

    A sampler that truncates draws o_t from π(·)/M_t on its kept set (M_t: the kept mass) and reports
    log π_trunc(o_t) = log π(o_t) − log M_t, so 1 − M_t = 1 − exp(log π_old − log π_trunc) (clamped at 0: the
    kernel mismatch, ~1e-6, rides along). [n, l] x3 -> 3 scalars
    """
    cut = (1 - torch.exp(old_logp.detach() - truncated_logp)).clamp(min=0) * mask  # [n, l]
    return cut.sum(), mask.sum(), cut.max() if cut.numel() else cut.new_zeros(())


class MismatchMeter:
    """Accumulates `sampler_mismatch` (or, from a truncating sampler, `truncated_mass`) and the correction
    weights over a step's micro-batches; `pop` returns the step's metrics."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total, self.count, self.max = 0.0, 0.0, 0.0
        self.weight_sum, self.zeroed, self.tokens = 0.0, 0.0, 0.0
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

    def add_weights(self, weights: Tensor, mask: Tensor) -> None:
        """Count correction weights (``[n, l]`` or ``[n, 1]``) over the loss tokens ``mask`` ``[n, l]``; a
        sequence's weight counts once per token, so the numbers are shares of the loss tokens."""
        m = mask.to(weights.dtype)  # [n, l]
        w = weights.detach().expand_as(m)  # [n, l]
        self.weight_sum += float((w * m).sum())
        self.zeroed += float(((w == 0).to(m.dtype) * m).sum())
        self.tokens += float(m.sum())

    def pop(self) -> dict[str, float]:
        """``sampler_logp_diff_{mean,max}`` (NaN when nothing was measured), ``sampler_truncated_mass_{mean,max}``
        when a truncating sampler was measured and, when weights were counted, ``sampler_is_weight_mean`` and
        ``sampler_is_zeroed_frac`` (mask modes) over the loss tokens; reset."""
        measured = self.count > 0
        out = {"sampler_logp_diff_mean": self.total / self.count if measured else math.nan,
               "sampler_logp_diff_max": self.max if measured else math.nan}  # fmt: skip
        if self.tokens > 0:
            out |= {"sampler_is_weight_mean": self.weight_sum / self.tokens,
                    "sampler_is_zeroed_frac": self.zeroed / self.tokens}  # fmt: skip
        if self.cut_count > 0:
            out["sampler_truncated_mass_mean"] = self.cut_total / self.cut_count
            out["sampler_truncated_mass_max"] = self.cut_max
        self.reset()
        return out
