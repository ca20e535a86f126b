"""DelTA in the training step: hidden states from a pass the step runs anyway, per-token advantages out.

The math is ``delta.py``; this file only collects its inputs. DELTA.md's h_{i,t} is the input of the
output head at the position that predicts token t, and p_{i,t} π_old's probability of token t at the
sampling temperature. The reference captures h with a forward pre-hook on ``lm_head`` (``RUCBM/DelTA``,
``verl-DelTA/verl/workers/actor/dp_actor.py``, ``_forward_micro_batch_with_h``) in K + 3 extra forwards;
here no forward runs for DelTA itself. Where h and p come from:
- μ = 1, native engine (``sampler_gives_delta``): from the sampler. The decode loop computes the head input
  of every sampled token anyway and keeps it (``Rollout.sampled_hidden``, ``decode.head_inputs``), beside
  log π_old (``Rollout.sampled_logprobs``: log softmax(z / T) before top-p / top-k, what a teacher-forced pass
  gives up to float rounding). No π_old pass runs; the loss keeps the μ = 1 identity.
- μ > 1: the same hook sits on the head during the step's own no-grad π_old pass
  (``LamPOModule.logprobs_no_grad``): ``logprobs.token_logprobs`` feeds the head the response positions of one
  micro-batch view, flattened to ``[n·l, H]`` rows in chunks, so the captured chunks, read in the order of
  ``trajectory.micro_batches``, are the views' rows.
- μ = 1 with the ``generate`` or ``vllm`` engine, which cannot hand out head inputs: ``old_policy_logprobs`` runs
  that π_old pass for DelTA (``old_pass_for_delta``), one no-grad forward, said once at set-up (``delta_cost_note``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from lampo_pl.advantages import AdvantageOutput
from lampo_pl.decode import head_inputs
from lampo_pl.delta import delta_advantages
from lampo_pl.rollout import Rollout, SamplingParams
from lampo_pl.settings import MethodArgs
from lampo_pl.trajectory import Trajectory, micro_batches

log = logging.getLogger(__name__)


def place_hidden(chunks: list[Tensor], traj: Trajectory, micro_batch_size: int) -> Tensor:
    """The captured head inputs of one micro-batched pass over ``traj`` as ``[N, L, H]`` (0 past each view's width).

    Each view ``traj.rows(rows)`` sent ``n·l`` rows, in chunks that never straddle two views.
    """
    n_rows, total_width = traj.loss_mask.shape
    if not chunks:
        raise RuntimeError("DelTA: the π_old pass never reached the output head; no hidden states to use")
    hidden = chunks[0].new_zeros(n_rows, total_width, chunks[0].shape[-1])  # [N, L, H]
    queue = list(reversed(chunks))
    for rows in micro_batches(traj, micro_batch_size):
        n, width = traj.rows(rows).loss_mask.shape
        parts, count = [], 0
        while count < n * width and queue:
            parts.append(queue.pop().reshape(-1, hidden.shape[-1]))
            count += parts[-1].shape[0]
        if count != n * width:
            raise RuntimeError(f"DelTA: captured {count} head rows for a micro-batch of {n}×{width} response tokens")
        hidden[rows, :width] = torch.cat(parts).view(n, width, -1)
    if queue:
        raise RuntimeError("DelTA: the output head was called more often than the π_old pass explains")
    return hidden


class DeltaFeatures:
    """Filled by ``DeltaSteps.delta_features``; called with the step's advantages it gives what the loss reads,
    and keeps DelTA's scale c and the spread of ω in ``stats`` for the step's metrics (``train/delta_*``)."""

    def __init__(self, method: MethodArgs, loss_mask: Tensor) -> None:
        self.method = method
        self.loss_mask = loss_mask  # [N, L]
        self.stats: dict[str, float] = {}
        self.hidden: Tensor | None = None  # [N, L, H] once the π_old pass ran, or the sampler's, with DelTA on
        self.sampled_logp: Tensor | None = None  # [N, L] the sampler's log π_old, where h came from the sampler

    def __call__(self, advantages: AdvantageOutput, old_logp: Tensor | None) -> Tensor:
        """The advantages the loss multiplies: ``[N]`` as estimated, or DelTA's ``[N, L]`` when it is on.

        ``old_logp`` ``[N, L]``: the π_old pass's, or None at μ = 1 where h and p came from the sampler."""
        if self.hidden is None:
            return advantages.advantages  # [N]
        old_logp = old_logp if old_logp is not None else self.sampled_logp
        assert old_logp is not None  # the π_old pass ran, or the sampler recorded p (DeltaSteps.delta_features)
        m = self.method
        out = delta_advantages(advantages.advantages, self.hidden, old_logp, self.loss_mask, rounds=m.delta_rounds,
                               weight_min=m.delta_weight_min, weight_max=m.delta_weight_max)  # fmt: skip
        omega = out.weights[self.loss_mask > 0]  # [T]
        spread = float(omega.std()) if omega.numel() > 1 else 0.0
        self.stats = {"delta_scale": float(out.scale), "delta_weight_std": spread}
        self.hidden = None  # [N, L, H] freed before the loss passes
        return out.advantages.to(advantages.advantages.dtype)  # [N, L]


class DeltaSteps:
    """The LightningModule's DelTA hooks (a mixin of ``LamPOModule``)."""

    method: MethodArgs
    sampling: SamplingParams
    policy_model: nn.Module | None
    compute: Any

    @property
    def sampler_gives_delta(self) -> bool:
        """DelTA at μ = 1 takes h and p from the native sampler (``Rollout.sampled_hidden`` / ``sampled_logprobs``)."""
        native = self.sampling.engine == "native" and not self.sampling.logprobs_truncated  # π_old's own p, and h
        return self.method.delta and self.method.num_iterations == 1 and native

    @property
    def old_pass_for_delta(self) -> bool:
        """DelTA at μ = 1 from an engine without head inputs: the step runs the π_old pass the μ = 1 identity skips."""
        return self.method.delta and self.method.num_iterations == 1 and not self.sampler_gives_delta

    def delta_cost_note(self) -> None:
        """One line at set-up when DelTA costs a forward: what it costs and how to avoid it."""
        if self.old_pass_for_delta:
            log.warning("DelTA at μ = 1 with model.sampling.engine: %s runs one extra no-grad π_old forward per step "
                        "for its hidden states (~40%% of the loss pass); model.sampling.engine: native records them "
                        "while sampling, and at μ >= 2 the π_old pass runs anyway", self.sampling.engine)  # fmt: skip

    @contextmanager
    def delta_features(self, traj: Trajectory, rollout: Rollout) -> Iterator[DeltaFeatures]:
        """Around the π_old pass: with ``method.delta`` on, h ``[N, L, H]`` and p from the sampler
        (``sampler_gives_delta``; the rollout hands its ``sampled_hidden`` over, freed before the loss passes), or
        else the head's inputs during the pass, placed as ``[N, L, H]``."""
        features = DeltaFeatures(self.method, traj.loss_mask)
        if not self.method.delta:
            yield features
            return
        if self.sampler_gives_delta:
            if rollout.sampled_hidden is None or rollout.sampled_logprobs is None:
                raise RuntimeError("DelTA: the sampler recorded no hidden states or log-probs (record_hidden)")
            features.hidden, features.sampled_logp = rollout.sampled_hidden, rollout.sampled_logprobs
            rollout.sampled_hidden = None  # [N, L, H] held by `features` alone, freed after the statistics
            yield features
            return
        assert self.policy_model is not None
        with head_inputs(self.policy_model) as chunks:
            yield features
        features.hidden = place_hidden(chunks, traj, self.compute.micro_batch_size)
