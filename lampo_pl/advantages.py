"""Group advantage estimators: GRPO, Dr. GRPO, RLOO and LamPO's pairwise decomposed advantage.

Every function here is pure: tensors in, tensors out, no module state. The contract is
``docs/ALGORITHMS.md`` of the shared specification ("Advantage estimators"); the equations are
repeated next to the code that implements them.

How LamPO differs from GRPO (the reconstruction of arXiv 2605.21235 that this project uses):

1. GRPO compares each response with the *group mean*; LamPO compares it with *every peer*:
   ``A_i = (2/G) Σ_{j≠i} w_ij (r_i − r_j)``. With all ``w_ij = ½`` this is exactly ``r_i − mean(r)``,
   so LamPO at temperature τ = 0 *is* Dr. GRPO (and, divided by the group std, GRPO).
2. Each pair is weighted by the policy's own confidence in it, LambdaRank-style
   (Burges 2010, "From RankNet to LambdaRank to LambdaMART", §4):
   ``w_ij = σ(−τ · sign(r_i − r_j) · (s_i − s_j))`` with ``s_i`` the rollout policy's mean token
   log-prob of response i. A pair the policy already orders correctly (the better response is
   the likelier one) gets ``w < ½``: little left to learn. A pair it orders wrongly gets ``w > ½``.
3. ``w_ij = w_ji``, so the advantages of a group still sum to zero (no baseline drift), and a
   group whose rewards are all equal still gets zero advantage (no NaN, no signal).
4. No critic, no value baseline: like GRPO the advantage is a per-response constant that
   multiplies every token's ratio in the clipped surrogate (see ``losses.py``).

Layout: rewards arrive as a flat ``[B*G]`` tensor with each prompt's G responses contiguous
(rows ``b*G .. b*G+G-1``); functions reshape to ``[B, G]`` internally.

NaN policy: a NaN or infinite reward is a bug upstream (every reward function returns finite
floats, failing graders give 0), so it raises ``ValueError`` naming the offending rows instead of
silently poisoning a whole group's advantages.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

import torch
from torch import Tensor

Estimator = Literal["grpo", "dr_grpo", "rloo", "lampo"]
ConfidenceScore = Literal["mean", "sum"]
AdvantageScale = Literal["none", "group_std"]

EPS = 1e-6  # ALGORITHMS.md: eps = 1e-6 in every std normaliser


class AdvantageOutput(NamedTuple):
    """Advantages of a flat batch and, for LamPO, the pair weights behind them.

    Attributes:
        advantages: ``[B*G]`` one constant per response, groups contiguous.
        pair_weights: ``[B, G, G]`` the LamPO weights ``w_ij`` (diagonal zero), else ``None``.
    """

    advantages: Tensor
    pair_weights: Tensor | None


def _check_choice(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")


def group_rewards(rewards: Tensor, group_size: int) -> Tensor:
    """Validate a flat reward vector and view it as ``[B, G]`` groups."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be a flat [B*G] tensor, got shape {tuple(rewards.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.numel() == 0 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards has {rewards.numel()} entries, not a positive multiple of group_size={group_size}: "
            "each prompt needs exactly G responses"
        )
    bad = (~torch.isfinite(rewards)).nonzero().flatten()
    if bad.numel() > 0:
        raise ValueError(f"rewards must be finite; non-finite at rows {bad.tolist()[:16]}")
    return rewards.view(-1, group_size)  # [B, G]


def _work_dtype(device: torch.device) -> torch.dtype:
    """float64 for the group statistics, except on MPS, which has no float64 (float32 there)."""
    return torch.float32 if device.type == "mps" else torch.float64


def group_centred(grouped: Tensor) -> Tensor:
    """``r_i − mean(r)`` per group, ``[B, G] -> [B, G]`` in float64 (float32 on MPS).

    Exactly 0 for a group whose rewards are all equal, whatever their value and dtype (issue 12
    item 1). A float32 mean of G equal non-round rewards can be off by one unit in the last place,
    leaving every response a common ±1e-7 that GRPO's ~1e-8 std blows up into an advantage of
    ~0.1. Two steps rule that out: (1) float64 sums of float32/bfloat16/float16 values are exact;
    (2) the group is shifted by its first reward before averaging (the shifted-data algorithm for
    the variance, Chan, Golub & LeVeque 1983), so an all-equal group averages exact zeros in any
    dtype, float64 included. Algebraically ``(r − r_0) − mean(r − r_0) = r − mean(r)``.
    """
    x = grouped.to(_work_dtype(grouped.device))  # [B, G]
    shifted = x - x[:, :1]  # [B, G] exactly 0 where r_i == r_0
    return shifted - shifted.mean(dim=1, keepdim=True)  # [B, G]


def group_std(grouped: Tensor) -> Tensor:
    """Sample std (Bessel-corrected, as TRL and verl use) per group, ``[B, G] -> [B, 1]`` in float64.

    From :func:`group_centred`, so an all-equal group has std exactly 0. A group of one response
    has no spread; its std is defined as 0 (not NaN) so that every estimator gives it a zero
    advantage.
    """
    centred = group_centred(grouped)  # [B, G]
    g = centred.shape[1]
    if g == 1:
        return torch.zeros_like(centred)  # [B, 1]
    return (centred.square().sum(dim=1, keepdim=True) / (g - 1)).sqrt()  # [B, 1]


def grpo(rewards: Tensor, group_size: int) -> Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath §4.1.2): ``A_i = (r_i − mean(r)) / (std(r) + eps)``."""
    r = group_rewards(rewards, group_size)  # [B, G]
    return (group_centred(r) / (group_std(r) + EPS)).flatten().to(rewards.dtype)  # [B*G]


def dr_grpo(rewards: Tensor, group_size: int) -> Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training" §3.2): ``A_i = r_i − mean(r)``."""
    return group_centred(group_rewards(rewards, group_size)).flatten().to(rewards.dtype)  # [B*G]


def rloo(rewards: Tensor, group_size: int) -> Tensor:
    """RLOO (Ahmadian et al. 2024): ``A_i = r_i − mean_{j≠i} r_j = G/(G−1) · (r_i − mean(r))``.

    The right-hand form (verl's ``compute_rloo_outcome_advantage`` writes it so too) keeps an
    all-equal group at exactly 0. With G = 1 there is no peer to leave out; the advantage is 0.
    """
    centred = group_centred(group_rewards(rewards, group_size))  # [B, G] float64
    if group_size == 1:
        return torch.zeros_like(rewards)  # [B*G]
    return (centred * (group_size / (group_size - 1))).flatten().to(rewards.dtype)  # [B*G]


def confidence_scores(logprobs: Tensor, mask: Tensor, mode: ConfidenceScore = "mean") -> Tensor:
    """LamPO's confidence score ``s_i`` from the rollout policy's token log-probs.

    ``mean``: ``s_i = (1/|o_i|) Σ_t log π_old(o_i,t)`` (length-neutral, the default);
    ``sum``: the sequence log-probability ``Σ_t log π_old(o_i,t)``.

    Args:
        logprobs: ``[N, L]`` per-token log-probs of the sampled responses under π_old.
        mask: ``[N, L]`` 1 on response tokens, 0 on padding.
        mode: ``"mean"`` or ``"sum"``.
    """
    _check_choice(mode, get_args(ConfidenceScore), "confidence score")
    if logprobs.shape != mask.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} and mask {tuple(mask.shape)} differ in shape")
    m = mask.to(logprobs.dtype)  # [N, L]
    total = (logprobs * m).sum(dim=1)  # [N]
    if mode == "sum":
        return total
    return total / m.sum(dim=1).clamp(min=1.0)  # [N]


def lampo_pair_weights(grouped_rewards: Tensor, grouped_scores: Tensor, tau: float) -> Tensor:
    """``w_ij = σ(−τ · sign(r_i − r_j) · (s_i − s_j))`` for every pair of a group; diagonal 0.

    Args:
        grouped_rewards: ``[B, G]``.
        grouped_scores: ``[B, G]`` confidence scores ``s``.
        tau: confidence temperature τ ≥ 0 (τ = 0 gives ``w ≡ ½``).

    Returns:
        ``[B, G, G]`` weights, symmetric in (i, j).
    """
    reward_gap = grouped_rewards[:, :, None] - grouped_rewards[:, None, :]  # [B, G, G] r_i − r_j
    score_gap = grouped_scores[:, :, None] - grouped_scores[:, None, :]  # [B, G, G] s_i − s_j
    w = torch.sigmoid(-tau * torch.sign(reward_gap) * score_gap)  # [B, G, G]
    off_diagonal = 1.0 - torch.eye(w.shape[-1], dtype=w.dtype, device=w.device)  # [G, G]
    return w * off_diagonal  # [B, G, G]


def lampo(
    rewards: Tensor,
    group_size: int,
    seq_scores: Tensor,
    *,
    tau: float = 1.0,
    scale: AdvantageScale = "none",
) -> AdvantageOutput:
    """LamPO's pairwise decomposed advantage ``A_i = (2/G) Σ_{j≠i} w_ij (r_i − r_j)``.

    Args:
        rewards: ``[B*G]`` scalar rewards, groups contiguous.
        group_size: G.
        seq_scores: ``[B*G]`` confidence scores ``s_i`` (see :func:`confidence_scores`).
        tau: confidence temperature τ ≥ 0.
        scale: ``"none"`` or ``"group_std"`` (divide by ``std(r) + eps`` as GRPO does).
    """
    _check_choice(scale, get_args(AdvantageScale), "advantage scale")
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    r = group_rewards(rewards, group_size)  # [B, G]
    if seq_scores.shape != rewards.shape:
        raise ValueError(
            f"seq_scores {tuple(seq_scores.shape)} must have the shape of rewards {tuple(rewards.shape)}"
        )
    if not torch.isfinite(seq_scores).all():
        bad = (~torch.isfinite(seq_scores)).nonzero().flatten().tolist()[:16]
        raise ValueError(f"seq_scores must be finite; non-finite at rows {bad}")
    # Gaps and weights in float64 (as group_centred): a bfloat16 r_i − r_j or score gap would round.
    r64 = r.to(_work_dtype(r.device))  # [B, G]
    s = seq_scores.to(r64.dtype).view_as(r64)  # [B, G]
    w = lampo_pair_weights(r64, s, tau)  # [B, G, G]
    reward_gap = r64[:, :, None] - r64[:, None, :]  # [B, G, G] exactly 0 between equal rewards
    adv = (2.0 / group_size) * (w * reward_gap).sum(dim=2)  # [B, G]
    if scale == "group_std":
        adv = adv / (group_std(r) + EPS)  # [B, G]
    return AdvantageOutput(adv.flatten().to(rewards.dtype), w.to(rewards.dtype))  # [B*G], [B, G, G]


def estimate_advantages(
    rewards: Tensor,
    group_size: int,
    estimator: Estimator,
    *,
    seq_scores: Tensor | None = None,
    tau: float = 1.0,
    scale: AdvantageScale = "none",
) -> AdvantageOutput:
    """Advantages of a flat batch of ``B*G`` rewards by one estimator (the public entry point).

    Args:
        rewards: ``[B*G]`` rewards, each prompt's G responses contiguous.
        group_size: G, the number of responses per prompt.
        estimator: ``"grpo" | "dr_grpo" | "rloo" | "lampo"``.
        seq_scores: ``[B*G]`` confidence scores ``s_i`` (required for ``"lampo"``, see :func:`confidence_scores`).
        tau: LamPO's confidence temperature τ.
        scale: LamPO's scaling, ``"none"`` or ``"group_std"``.

    Returns:
        ``AdvantageOutput``: ``[B*G]`` advantages and, for LamPO only, the ``[B, G, G]`` pair weights.
    """
    _check_choice(estimator, get_args(Estimator), "advantage estimator")
    if estimator == "lampo":
        if seq_scores is None:
            raise ValueError("estimator 'lampo' needs seq_scores (the rollout policy's confidence scores)")
        return lampo(rewards, group_size, seq_scores, tau=tau, scale=scale)
    if scale != "none":
        raise ValueError(f"scale={scale!r} applies to 'lampo' only; use estimator 'grpo' for std scaling")
    simple = {"grpo": grpo, "dr_grpo": dr_grpo, "rloo": rloo}[estimator]
    return AdvantageOutput(simple(rewards, group_size), None)

