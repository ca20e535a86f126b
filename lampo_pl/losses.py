"""KL estimators, the policy-loss statistics, and the one function that aggregates tokens.

Pure functions over tensors, following ``docs/ALGORITHMS.md`` ("Policy loss" and "Token
aggregation"). Shapes: ``N`` responses (rows), ``L`` response positions (padded).

How the pieces relate to GRPO:

1. The surrogates live in ``policy_losses.py``: PPO's clipped objective per token,
   ``−min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A)`` (Schulman et al. 2017, eq. 7), with asymmetric bounds so
   that DAPO's clip-higher (Yu et al. 2025, §3.1, ε_high = 0.28) is one argument and an optional dual
   clip, and beside it GSPO's sequence ratio, CISPO and SAPO.
2. The KL to the frozen reference is added per token with coefficient β; ``k3`` is Schulman's
   unbiased, always-positive estimator (http://joschu.net/blog/kl-approx.html), GRPO's default.
3. How per-token losses become one number is a separate axis, so any advantage estimator
   composes with any aggregation. Every mode is a per-sequence coefficient ``c_i`` times the
   sequence's token sum, ``L = Σ_i c_i Σ_t ℓ_{i,t}``: ``sequence_coefficients`` holds every
   normaliser (N, Σ|o|, L_max, λ's weights) and ``aggregate`` only applies them. Writing it that
   way lets the coefficients be computed over the whole batch (all ranks under DDP, without
   dynamic sampling's dropped groups) and applied to micro-batches, so gradient accumulation
   reproduces the full-batch loss exactly.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, get_args

import torch
from torch import Tensor

KLEstimator = Literal["k1", "k2", "k3"]
AggregationMode = Literal["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm", "lambda"]

EPS = 1e-6
LOG_RATIO_CLAMP = 20.0  # ALGORITHMS.md: log-ratio clamped to ±20 before exp (no overflow in float32)
R_LEN = 1.0 / 9.0  # λ-GRPO's default length sensitivity r_len
# Floor on h_i so that h^λ stays finite for any λ. With r_len = 1/9 it only binds for responses
# more than 8.1 group standard deviations shorter than their group's mean.
H_MIN = 0.1


class PolicyLossStats(NamedTuple):
    """Detached scalars over the masked tokens of one policy-loss call.

    Clip fractions follow TRL's definitions (``GRPOTrainer._compute_loss``): a token counts as
    clipped low when ``ρ < 1−ε_low`` and ``A < 0``, high when ``ρ > 1+ε_high`` and ``A > 0``
    (exactly the tokens whose gradient the clip removes); region is either. CISPO counts its capped
    tokens as high; SAPO clips nothing (NaN) — ``policy_losses.policy_loss``.
    """

    clip_frac_low: Tensor
    clip_frac_high: Tensor
    clip_frac_region: Tensor
    approx_kl_old: Tensor  # mean k3 estimate of KL(π_old ‖ π_θ): how far the update moved
    kl_ref: Tensor  # mean of the chosen estimator of KL(π_θ ‖ π_ref); 0 when β = 0
    ratio_mean: Tensor
    selected_frac: Tensor  # fraction of loss tokens the high-entropy selection kept; NaN when it is off


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over the tokens of ``mask`` (0 when there are none)."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: KLEstimator = "k3") -> Tensor:
    """Per-token estimate of KL(π_θ ‖ π_ref) from the sampled tokens' log-probs, ``[N, L]``.

    k1 = log π_θ − log π_ref; k2 = ½ (log π_θ − log π_ref)²;
    k3 = e^{ref − logp} − (ref − logp) − 1 (≥ 0, unbiased for samples from π_θ).
    """
    if estimator not in get_args(KLEstimator):
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {', '.join(get_args(KLEstimator))}")
    log_ratio = logp - ref_logp  # [N, L] log π_θ/π_ref
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    ref_minus = (-log_ratio).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [N, L]
    return torch.exp(ref_minus) - ref_minus - 1.0  # [N, L]


def clipped_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, **kwargs: Any
) -> tuple[Tensor, PolicyLossStats]:
    """PPO's clipped loss, ``policy_losses.policy_loss(kind="clip")`` (the name before the other surrogates came)."""
    from lampo_pl.policy_losses import policy_loss  # imported here: policy_losses imports this module

    return policy_loss(logp, old_logp, advantages, mask, kind="clip", **kwargs)


def lambda_weights(
    lengths: Tensor, group_size: int, lam: Tensor, *, r_len: float = R_LEN, h_min: float = H_MIN
) -> Tensor:
    """λ-GRPO's per-response weights ``f_i = G · softmax_i(h_i^λ)`` within each group.

    ``z_i = (|o_i| − mean|o|)/(std|o| + eps)``, ``h_i = max(1 + r_len·z_i, h_min)``
    (λ-GRPO, arXiv 2510.06870, §3). λ = 0 gives ``f ≡ 1`` (DAPO's token mean).

    Args:
        lengths: ``[N]`` response lengths ``|o_i|`` (float), groups contiguous.
        group_size: G.
        lam: scalar learnable λ (gradient flows into it).

    Returns:
        ``[N]`` weights, each group's summing to G.
    """
    if lengths.dim() != 1 or lengths.numel() % group_size != 0:
        raise ValueError(f"lengths {tuple(lengths.shape)} is not a flat multiple of group_size={group_size}")
    g = lengths.view(-1, group_size)  # [B, G]
    spread = g.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(g)  # [B, 1]
    z = (g - g.mean(dim=1, keepdim=True)) / (spread + EPS)  # [B, G]
    h = (1.0 + r_len * z).clamp(min=h_min)  # [B, G]
    f = group_size * torch.softmax(torch.pow(h, lam.to(h.dtype)), dim=1)  # [B, G]
    return f.flatten()  # [N]


class BatchCounts(NamedTuple):
    """The batch-wide normalisers of the aggregation: what a single process over the whole batch divides by.

    Attributes:
        sequences: N, the responses that count. DAPO dynamic sampling's dropped groups are not in it
            (Yu et al. 2025, §3.2: they leave the batch); overlong-masked responses are (they are
            part of the batch, only their tokens are masked), as before.
        tokens: Σ_i |o_i|, the loss tokens (the loss mask's sum).
    """

    sequences: float
    tokens: float


def batch_counts(lengths: Tensor, keep: Tensor | None = None) -> BatchCounts:
    """N and Σ|o| of one batch. lengths: ``[N]`` loss tokens per response; keep: ``[N]`` bool, ``None`` = all."""
    sequences = lengths.numel() if keep is None else int(keep.sum())
    return BatchCounts(float(sequences), float(lengths.sum()))


def sequence_coefficients(
    lengths: Tensor,
    mode: AggregationMode,
    *,
    counts: BatchCounts | None = None,
    group_size: int | None = None,
    lam: Tensor | None = None,
    r_len: float = R_LEN,
    h_min: float = H_MIN,
    max_len: int | None = None,
) -> Tensor:
    """Per-sequence coefficients ``c_i`` with ``L = Σ_i c_i Σ_t ℓ_{i,t}``: every normaliser lives here.

    seq_mean_token_mean: ``1/(N·|o_i|)``; token_mean: ``1/Σ|o|``;
    seq_mean_token_sum_norm: ``1/(N·L_max)``; lambda: ``f_i/Σ|o|``.

    Args:
        lengths: ``[N]`` tokens that count per response (the loss mask's row sums).
        mode: the aggregation mode.
        counts: N and Σ|o| to divide by; ``None``: those of ``lengths`` (every row counts). The
            training step passes the counts without dynamic sampling's dropped groups and, under
            DDP, the counts over all ranks divided by the world size: each rank's loss then
            carries its share of the global normaliser, and DDP's mean of the ranks' gradients
            is the gradient of the loss over the union of their batches (TRL 1.16 GRPOTrainer
            normalises ``token_mean`` by the global token count the same way).
        group_size: G (``lambda`` only).
        lam: scalar λ (``lambda`` only).
        r_len, h_min: λ-GRPO's length sensitivity and floor (``lambda`` only, see :func:`lambda_weights`).
        max_len: L_max, the max new tokens (``seq_mean_token_sum_norm`` only).
    """
    if mode not in get_args(AggregationMode):
        raise ValueError(f"unknown aggregation mode {mode!r}; expected one of {', '.join(get_args(AggregationMode))}")
    lengths = lengths.to(torch.float32 if not lengths.is_floating_point() else lengths.dtype)  # [N]
    n, total_tokens = counts if counts is not None else batch_counts(lengths)
    n, total_tokens = max(n, 1.0), max(total_tokens, 1.0)
    if mode == "seq_mean_token_mean":
        return 1.0 / (n * lengths.clamp(min=1.0))  # [N]
    if mode == "token_mean":
        return torch.full_like(lengths, 1.0 / total_tokens)  # [N]
    if mode == "seq_mean_token_sum_norm":
        if max_len is None or max_len < 1:
            raise ValueError("seq_mean_token_sum_norm needs max_len = the max new tokens (L_max) >= 1")
        return torch.full_like(lengths, 1.0 / (n * max_len))  # [N]
    if group_size is None or lam is None:
        raise ValueError("aggregation 'lambda' needs group_size and the learnable scalar lam")
    f = lambda_weights(lengths, group_size, lam, r_len=r_len, h_min=h_min)  # [N]
    return f / total_tokens  # [N]


def aggregate(per_token_loss: Tensor, mask: Tensor, coefficients: Tensor) -> Tensor:
    """Reduce ``[N, L]`` per-token losses to a scalar: ``Σ_i c_i Σ_t mask·ℓ`` (verl's ``agg_loss``, three arguments).

    Args:
        per_token_loss: ``[N, L]``.
        mask: ``[N, L]`` 1 on tokens that count.
        coefficients: ``[N]`` the rows' ``c_i`` from :func:`sequence_coefficients`, computed over the
            whole batch, so that micro-batch losses summed equal the full-batch loss exactly.
    """
    if per_token_loss.shape != mask.shape:
        raise ValueError(f"per_token_loss {tuple(per_token_loss.shape)} and mask {tuple(mask.shape)} differ")
    if coefficients.shape != per_token_loss.shape[:1]:
        raise ValueError(f"coefficients {tuple(coefficients.shape)} must be [N] with N = {per_token_loss.shape[0]}")
    seq_sums = (per_token_loss * mask.to(per_token_loss.dtype)).sum(dim=1)  # [N]
    return (coefficients.to(seq_sums.dtype) * seq_sums).sum()
