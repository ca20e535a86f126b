"""The loss of one micro-batch, assembled from the pure pieces in the order of the algorithm.

    log π_θ (and entropies) of the view -> π_old -> sampler mismatch and its correction weights
        -> high-entropy token selection -> the chosen surrogate + β·KL -> aggregate with the batch's c_i

The training step (``module.py``) runs the forward pass and passes its log-probs here; everything else
that decides the loss of a micro-batch lives in this one function, so a new axis of the method is one
argument of ``policy_losses.policy_loss`` and one line here, not a branch in the LightningModule.
"""

from __future__ import annotations

from torch import Tensor

from lampo_pl.losses import PolicyLossStats, aggregate, masked_mean
from lampo_pl.mismatch import MismatchMeter, sampler_correction_weights
from lampo_pl.policy_losses import high_entropy_mask, policy_loss
from lampo_pl.settings import MethodArgs
from lampo_pl.trajectory import Trajectory


def micro_batch_loss(
    logp: Tensor,
    entropy: Tensor | None,
    view: Trajectory,
    coefficients: Tensor,
    method: MethodArgs,
    meter: MismatchMeter,
    truncated: bool = False,
) -> tuple[Tensor, PolicyLossStats, Tensor]:
    """-> (scalar loss, statistics, mean entropy over the loss tokens) of one micro-batch view.

    Args:
        logp: ``[n, l]`` log π_θ of the view's response tokens (carries the gradient).
        entropy: ``[n, l]`` entropies of the same positions (needed by ``top_entropy_quantile``), or ``None``.
        view: the micro-batch (``Trajectory.rows``); its advantages are ``[n]`` or ``[n, l]`` (token-level).
        coefficients: ``[n]`` the rows' aggregation coefficients, computed over the whole batch.
        method: the method settings.
        meter: where the sampler mismatch and the correction weights are counted for the step's metrics.
        truncated: the sampler's log-probs are of its top-p / top-k truncated distribution
            (``SamplingParams.logprobs_truncated``): the meter counts the truncated mass, not a mismatch.
    """
    m, mask = method, view.loss_mask
    assert view.advantages is not None
    old = view.old_logprobs_for(logp)  # [n, l]
    sampled = view.sampler_logprobs  # [n, l] or None
    weights = None
    if sampled is not None:  # the sampler–trainer mismatch, logged every step
        meter.add(old, sampled, mask, truncated=truncated)
        mode, c_max, c_min = m.correction
        if mode != "none":
            weights = sampler_correction_weights(old, sampled, mask, mode, c_max=c_max, c_min=c_min)  # [n, l|1]
            meter.add_weights(weights, mask)
    select = None
    if m.top_entropy_quantile < 1.0:
        if entropy is None:
            raise ValueError("model.method.top_entropy_quantile < 1 needs the loss pass's entropies")
        select = high_entropy_mask(entropy, mask, m.top_entropy_quantile)  # [n, l]
    per_token, stats = policy_loss(
        logp,
        old,
        view.advantages,
        mask,
        kind=m.policy_loss,
        eps_low=m.eps_low,
        eps_high=m.eps_high,
        dual_clip=m.dual_clip,
        cispo_cap=m.cispo_cap,
        sapo_tau_pos=m.sapo_tau_pos,
        sapo_tau_neg=m.sapo_tau_neg,
        ref_logp=view.ref_logprobs,
        beta=m.beta,
        kl_estimator=m.kl_estimator,
        is_weights=weights,
        token_select=select,
    )  # [n, l]
    loss = aggregate(per_token, mask, coefficients)
    mean_entropy = masked_mean(entropy.detach(), mask) if entropy is not None else logp.new_zeros(())
    return loss, stats, mean_entropy
