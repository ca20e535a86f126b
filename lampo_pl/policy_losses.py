"""The policy-gradient surrogates: PPO's clip, GSPO, CISPO, SAPO; high-entropy token selection; their dispatcher.

Pure functions over tensors. Shapes: ``N`` responses (rows), ``L`` response positions (padded). Every
surrogate takes the advantage as ``[N]`` (one per response, what every estimator gives) or ``[N, L]``
(one per token, what a token-level reshaping such as DelTA gives); ``[N]`` is broadcast over tokens.
How each differs from GRPO's clipped token ratio (ρ = π_θ / π_old per token):

1. **GSPO** (Zheng et al. 2025, arXiv 2507.18071, eqs. 5-7): one ratio per *sequence*, the geometric
   mean of its token ratios s_i = exp(mean_t log ρ_{i,t}), clipped at sequence level with a tiny ε
   (3e-4 / 4e-4 in its §5.1). Written in GSPO-token's stop-gradient form (its eqs. 13-14),
   s_{i,t} = sg(s_i) · π_θ(o_t)/sg(π_θ(o_t)): its value is s_i and, with a per-sequence advantage, its
   gradient equals that of TRL 1.16's ``importance_sampling_level="sequence"`` (``grpo_trainer.py``
   lines 3086-3088, a ``[N, 1]`` ratio broadcast over tokens); with a per-token advantage it is GSPO-token.
2. **CISPO** (MiniMax-M1, arXiv 2506.13585, eq. 4): ℓ = −sg(min(ρ, ε_max)) · A · log π_θ. The importance
   weight is capped and detached, so no token's gradient is dropped (the clip zeroes the gradient of
   clipped tokens). TRL ``loss_type="cispo"`` (lines 3109-3111), whose cap is its ``epsilon_high``.
3. **SAPO** (Gao et al. 2025, arXiv 2511.20347): a smooth gate instead of the hard clip,
   ℓ = −(4/τ)·σ(τ(ρ − 1))·A, with τ = τ_pos where A > 0 and τ_neg elsewhere (TRL lines 3121-3124).
   Its slope at ρ = 1 is 1, as the ratio's.
4. **High-entropy token selection** (Wang et al. 2025, "Beyond the 80/20 rule", arXiv 2506.01939): the
   policy term is kept only on tokens whose entropy is at least the (1 − q)-quantile of the valid
   tokens' entropies (TRL ``get_high_entropy_mask``, lines 1380-1418, applied at 3049-3050 and 3143-3144).

At ρ ≡ 1 (μ = 1, where π_old is the detached current policy) all four have the clip's gradient A·∇log π;
they differ once the policy moves away from π_old, which is why the settings ask for μ ≥ 2 with them.
The sampler-correction weights (``mismatch.sampler_correction_weights``) and the token selection multiply
the policy term only; β·KL is added after them, unweighted, as in TRL (lines 3140-3150).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

from lampo_pl.losses import LOG_RATIO_CLAMP, KLEstimator, PolicyLossStats, kl_penalty, masked_mean

PolicyLossKind = Literal["clip", "gspo", "cispo", "sapo"]


def _per_token(advantages: Tensor, like: Tensor) -> Tensor:
    """Advantages ``[N]`` or ``[N, L]`` as a detached tensor that broadcasts against ``like`` ``[N, L]``."""
    adv = advantages.detach()
    if adv.dim() == 1:
        adv = adv[:, None]  # [N, 1]
    if adv.shape[0] != like.shape[0] or adv.shape[1] not in (1, like.shape[1]):
        shape = tuple(like.shape)
        raise ValueError(f"advantages {tuple(advantages.shape)} must be [N] or [N, L] with [N, L] = {shape}")
    return adv  # [N, 1] or [N, L]


def token_ratio(logp: Tensor, old_logp: Tensor) -> Tensor:
    """``[N, L]`` ρ = exp(log π_θ − log π_old), log-ratio clamped to ±20 (ALGORITHMS.md)."""
    return torch.exp((logp - old_logp.detach()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # [N, L]


def sequence_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """GSPO-token's ratio ``[N, L]``: sg(s_i) · π_θ/sg(π_θ), s_i = exp(Σ_t m·log ρ / max(Σ_t m, 1)).

    The mean is over the row's masked tokens (TRL ``(log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)``);
    a row without loss tokens gets s_i = 1. Every token of a row has the value s_i.
    """
    m = mask.to(logp.dtype)
    log_s = ((logp - old_logp.detach()) * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)  # [N]
    log_s = log_s.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [N]
    return torch.exp(log_s.detach())[:, None] * torch.exp(logp - logp.detach())  # [N, L]


def clip_surrogate(
    ratio: Tensor, adv: Tensor, eps_low: float, eps_high: float, dual_clip: float | None = None
) -> Tensor:
    """PPO's ``−min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A)`` per token ``[N, L]``; optional dual clip for A < 0.

    Dual clip (Ye et al. 2020, arXiv 1912.09729, eq. 5; verl ``compute_policy_loss``): the loss of a
    token with A < 0 is capped at −c·A.
    """
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high))  # [N, L]
    if dual_clip is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * dual_clip), loss)  # [N, L]
    return loss


def cispo_surrogate(logp: Tensor, ratio: Tensor, adv: Tensor, cap: float) -> Tensor:
    """CISPO ``−sg(min(ρ, ε_max))·A·log π_θ`` per token ``[N, L]`` (TRL ``grpo_trainer.py`` 3110-3111)."""
    return -ratio.clamp(max=cap).detach() * adv * logp  # [N, L]


def sapo_surrogate(ratio: Tensor, adv: Tensor, tau_pos: float, tau_neg: float) -> Tensor:
    """SAPO ``−(4/τ)·σ(τ(ρ−1))·A`` per token ``[N, L]``; τ = τ_pos where A > 0, else τ_neg (TRL 3122-3124)."""
    tau = torch.where(adv > 0, tau_pos, tau_neg).to(ratio.dtype)  # [N, 1] or [N, L]
    return -torch.sigmoid(tau * (ratio - 1.0)) * 4.0 / tau * adv  # [N, L]


def high_entropy_mask(entropy: Tensor, mask: Tensor, quantile: float) -> Tensor:
    """``[N, L]`` bool: valid tokens whose entropy is ≥ the (1 − q)-quantile of the valid tokens' entropies.

    ``quantile`` is q, the fraction kept (TRL's ``top_entropy_quantile``; 0.2 in Wang et al. 2025). The
    quantile interpolates linearly (``torch.quantile``) as TRL's ``get_high_entropy_mask``; ties at the
    threshold are kept, so slightly more than q may be. No valid token: nothing selected.
    """
    valid = mask.bool()  # [N, L]
    values = entropy.detach()[valid].float()  # [T]
    if values.numel() == 0:
        return torch.zeros_like(valid)
    threshold = torch.quantile(values, 1.0 - quantile)
    return (entropy.detach() >= threshold.to(entropy.dtype)) & valid  # [N, L]


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    kind: PolicyLossKind = "clip",
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = None,
    cispo_cap: float = 5.0,
    sapo_tau_pos: float = 1.0,
    sapo_tau_neg: float = 1.05,
    ref_logp: Tensor | None = None,
    beta: float = 0.0,
    kl_estimator: KLEstimator = "k3",
    is_weights: Tensor | None = None,
    token_select: Tensor | None = None,
) -> tuple[Tensor, PolicyLossStats]:
    """Per-token policy loss of the chosen surrogate, times the weights, plus β·KL: ``ℓ = w·sel·ℓ_kind + β·KL``.

    Args:
        logp: ``[N, L]`` log π_θ of the sampled tokens (carries the gradient).
        old_logp: ``[N, L]`` log π_old (rollout policy), a constant.
        advantages: ``[N]`` one advantage per response, or ``[N, L]`` one per token; constants.
        mask: ``[N, L]`` 1 on tokens that count (the statistics, GSPO's mean; apply it in ``aggregate``).
        kind: clip (PPO/GRPO) | gspo | cispo | sapo (module docstring).
        eps_low, eps_high: clip range ``[1−ε_low, 1+ε_high]`` of clip and gspo (gspo's ratio is per sequence).
        dual_clip: ``c > 1`` bounds the loss of tokens with ``A < 0`` at ``−c·A`` (clip, gspo); ``None`` is off.
        cispo_cap: CISPO's ε_max, the cap of the detached ratio (TRL's ``epsilon_high`` under cispo; 5.0).
        sapo_tau_pos, sapo_tau_neg: SAPO's gate temperatures for A > 0 and A ≤ 0 (TRL's 1.0 and 1.05).
        ref_logp: ``[N, L]`` log π_ref; required when ``beta > 0``. With ``beta == 0`` it is only
            measured (``kl_ref`` statistic, no gradient); without it ``kl_ref`` is NaN.
        beta, kl_estimator: KL coefficient β and estimator (``losses.kl_penalty``).
        is_weights: ``[N, L]`` or ``[N, 1]`` constant sampler-correction weights of the policy term
            (``mismatch.sampler_correction_weights``); ``None``: w ≡ 1.
        token_select: ``[N, L]`` bool tokens that keep the policy term (:func:`high_entropy_mask`); ``None``: all.

    Returns:
        ``([N, L]`` per-token loss, unmasked``, PolicyLossStats)``. Clip fractions follow TRL: clip and gspo
        count ``ρ < 1−ε_low ∧ A < 0`` (low) and ``ρ > 1+ε_high ∧ A > 0`` (high); cispo counts its capped
        tokens ``ρ > ε_max ∧ A > 0`` as high (TRL's ``cispo_clip_ratio``); sapo clips nothing (NaN).
    """
    if not (logp.shape == old_logp.shape == mask.shape):
        raise ValueError(
            f"logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)} and mask {tuple(mask.shape)} "
            "must have the same [N, L] shape"
        )
    if kind not in get_args(PolicyLossKind):
        raise ValueError(f"unknown policy loss {kind!r}; expected one of {', '.join(get_args(PolicyLossKind))}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (e.g. 3.0), got {dual_clip}")
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logp (the reference policy's log-probs)")
    if ref_logp is not None and ref_logp.shape != logp.shape:
        raise ValueError(f"ref_logp {tuple(ref_logp.shape)} must match logp {tuple(logp.shape)}")
    adv = _per_token(advantages, logp)  # [N, 1] or [N, L]

    ratio = sequence_ratio(logp, old_logp, mask) if kind == "gspo" else token_ratio(logp, old_logp)  # [N, L]
    if kind in ("clip", "gspo"):
        loss = clip_surrogate(ratio, adv, eps_low, eps_high, dual_clip)  # [N, L]
    elif kind == "cispo":
        loss = cispo_surrogate(logp, ratio, adv, cispo_cap)  # [N, L]
    else:
        loss = sapo_surrogate(ratio, adv, sapo_tau_pos, sapo_tau_neg)  # [N, L]
    if token_select is not None:
        loss = loss * token_select.to(loss.dtype)  # [N, L] high-entropy tokens only
    if is_weights is not None:
        loss = loss * is_weights.detach()  # [N, L] the policy term only, before β·KL is added

    kl_ref = torch.full((), math.nan, dtype=logp.dtype, device=logp.device)  # NaN: not measured
    if ref_logp is not None and beta > 0:
        kl = kl_penalty(logp, ref_logp.detach(), kl_estimator)  # [N, L]
        loss = loss + beta * kl  # [N, L]
        kl_ref = masked_mean(kl.detach(), mask)
    elif ref_logp is not None:  # β = 0 with a reference: measured for monitoring only, outside the graph
        with torch.no_grad():
            kl_ref = masked_mean(kl_penalty(logp, ref_logp, kl_estimator), mask)
    return loss, _stats(kind, ratio.detach(), adv, mask, logp, old_logp, kl_ref, token_select,
                        eps_low, eps_high, cispo_cap)  # fmt: skip


def _stats(
    kind: PolicyLossKind,
    ratio: Tensor,
    adv: Tensor,
    mask: Tensor,
    logp: Tensor,
    old_logp: Tensor,
    kl_ref: Tensor,
    token_select: Tensor | None,
    eps_low: float,
    eps_high: float,
    cispo_cap: float,
) -> PolicyLossStats:
    """The detached statistics of :func:`policy_loss` (means over the masked tokens)."""
    with torch.no_grad():
        nan = torch.full((), math.nan, dtype=logp.dtype, device=logp.device)

        def frac(flags: Tensor) -> Tensor:
            return masked_mean(flags.to(logp.dtype), mask)

        if kind in ("clip", "gspo"):
            low = (ratio < 1.0 - eps_low) & (adv < 0)  # [N, L]
            high = (ratio > 1.0 + eps_high) & (adv > 0)  # [N, L]
            clip_fracs = (frac(low), frac(high), frac(low | high))
        elif kind == "cispo":
            capped = frac((ratio > cispo_cap) & (adv > 0))  # the tokens whose weight the cap lowered
            clip_fracs = (frac(torch.zeros_like(ratio)), capped, capped)
        else:  # sapo has no clip
            clip_fracs = (nan, nan, nan)
        return PolicyLossStats(
            *clip_fracs,
            # KL(π_old ‖ π_θ) from tokens sampled by π_old: k3 = r − 1 − log r with r = π_θ/π_old.
            approx_kl_old=masked_mean(kl_penalty(old_logp, logp, "k3"), mask),
            kl_ref=kl_ref,
            ratio_mean=masked_mean(ratio, mask),
            selected_frac=nan if token_select is None else frac(token_select),
        )
