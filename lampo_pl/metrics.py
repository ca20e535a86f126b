"""What a practitioner watches during RL fine-tuning, as typed containers of plain floats.

``AlgoMetrics`` gathers the algorithm-level numbers of one optimisation step (advantages, clip
fractions, KL, LamPO's pair weights, λ); the LightningModule adds rollout and timing numbers and
logs everything through ``as_dict``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from lampo_pl.advantages import group_rewards
from lampo_pl.losses import PolicyLossStats


@dataclass(frozen=True)
class AdvantageStats:
    """Statistics of one batch's advantages and groups.

    Attributes:
        mean, std, min, max: over all ``B*G`` advantages (std: population, 0 for one value).
        zero_variance_frac: fraction of groups whose rewards are all equal (they carry no signal).
        mean_pair_weight: LamPO's mean ``w_ij`` over pairs with different rewards (the pairs that
            carry signal; ½ means "no confidence adjustment"); NaN without LamPO or such pairs.
    """

    mean: float
    std: float
    min: float
    max: float
    zero_variance_frac: float
    mean_pair_weight: float


def advantage_stats(
    rewards: Tensor, advantages: Tensor, group_size: int, pair_weights: Tensor | None = None
) -> AdvantageStats:
    """Summarise advantages ``[B*G]`` of rewards ``[B*G]`` (and LamPO's ``[B, G, G]`` weights)."""
    r = group_rewards(rewards, group_size)  # [B, G]
    a = advantages.detach().float()  # [B*G]
    zero_var = (r.max(dim=1).values == r.min(dim=1).values).float().mean()
    mean_w = math.nan
    if pair_weights is not None:
        informative = r[:, :, None] != r[:, None, :]  # [B, G, G] pairs with a reward gap
        if informative.any():
            mean_w = pair_weights.detach()[informative].float().mean().item()
    return AdvantageStats(
        mean=a.mean().item(),
        std=a.std(unbiased=False).item(),
        min=a.min().item(),
        max=a.max().item(),
        zero_variance_frac=zero_var.item(),
        mean_pair_weight=mean_w,
    )


@dataclass(frozen=True)
class AlgoMetrics:
    """One optimisation step's algorithm metrics (loss statistics averaged over micro-batches)."""

    loss: float
    clip_frac_low: float
    clip_frac_high: float
    clip_frac_region: float
    approx_kl_old: float
    kl_ref: float
    ratio_mean: float
    advantages: AdvantageStats
    entropy_selected_frac: float = math.nan
    lam: float = math.nan

    @classmethod
    def of_step(
        cls, loss: float, stats: PolicyLossStats | None, advantages: AdvantageStats, lam: Tensor | None
    ) -> AlgoMetrics:
        """One step's metrics from its mean loss, its averaged loss statistics (``None``: every pass was
        skipped, so NaN) and its advantage statistics."""
        nan = math.nan
        return cls(
            loss=loss,
            clip_frac_low=float(stats.clip_frac_low) if stats else nan,
            clip_frac_high=float(stats.clip_frac_high) if stats else nan,
            clip_frac_region=float(stats.clip_frac_region) if stats else nan,
            approx_kl_old=float(stats.approx_kl_old) if stats else nan,
            kl_ref=float(stats.kl_ref) if stats else nan,
            ratio_mean=float(stats.ratio_mean) if stats else nan,
            entropy_selected_frac=float(stats.selected_frac) if stats else nan,
            advantages=advantages,
            lam=float(lam.detach()) if lam is not None else nan,
        )

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """Flat ``{name: value}`` for loggers; NaN entries (metrics that do not apply) are left out."""
        flat = {k: v for k, v in asdict(self).items() if k != "advantages"}
        flat |= {f"adv_{k}" if k not in ("zero_variance_frac", "mean_pair_weight") else k: v
                 for k, v in asdict(self.advantages).items()}
        return {f"{prefix}{k}": float(v) for k, v in flat.items() if not math.isnan(v)}


def mean_loss_stats(stats: list[PolicyLossStats]) -> PolicyLossStats:
    """Average per-micro-batch statistics (each a scalar tensor) into one ``PolicyLossStats``."""
    if not stats:
        raise ValueError("no loss statistics to average")
    return PolicyLossStats(*(torch.stack([s[i].float() for s in stats]).mean() for i in range(len(stats[0]))))
