"""DelTA in the training step: hidden states from the π_old pass the step runs, per-token advantages out.

The math is ``delta.py``; this file only collects its inputs. DELTA.md's h_{i,t} is the input of the
output head at the position that predicts token t, which the reference captures with a forward pre-hook
on ``lm_head`` (``RUCBM/DelTA``, ``verl-DelTA/verl/workers/actor/dp_actor.py``,
``_forward_micro_batch_with_h``). Here the same hook sits on the head during the step's own no-grad π_old
pass (``LamPOModule.logprobs_no_grad``): ``logprobs.token_logprobs`` feeds the head the response positions
of one micro-batch view, flattened to ``[n·l, H]`` rows in chunks, so the captured chunks, read in the
order of ``trajectory.micro_batches``, are the views' rows. No forward runs for DelTA itself; at μ = 1,
where the μ = 1 identity otherwise skips the π_old pass, ``old_policy_logprobs`` runs it when DelTA is on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from peft import PeftModel
from torch import Tensor, nn

from lampo_pl.advantages import AdvantageOutput
from lampo_pl.delta import delta_advantages
from lampo_pl.settings import MethodArgs
from lampo_pl.trajectory import Trajectory, micro_batches


@contextmanager
def head_inputs(model: nn.Module) -> Iterator[list[Tensor]]:
    """Every input the model's output head receives in the body, detached, in call order."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    captured: list[Tensor] = []
    handle = base.get_output_embeddings().register_forward_pre_hook(
        lambda module, args: captured.append(args[0].detach())
    )
    try:
        yield captured
    finally:
        handle.remove()


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
    """Filled by ``DeltaSteps.delta_features``; called with the step's advantages it gives what the loss reads."""

    def __init__(self, method: MethodArgs, loss_mask: Tensor, log: Callable[[dict[str, float]], Any]) -> None:
        self.method = method
        self.loss_mask = loss_mask  # [N, L]
        self.log = log
        self.hidden: Tensor | None = None  # [N, L, H] once the π_old pass ran with DelTA on

    def __call__(self, advantages: AdvantageOutput, old_logp: Tensor | None) -> Tensor:
        """The advantages the loss multiplies: ``[N]`` as estimated, or DelTA's ``[N, L]`` when it is on."""
        if self.hidden is None:
            return advantages.advantages  # [N]
        assert old_logp is not None  # old_policy_logprobs runs the π_old pass whenever DelTA is on
        m = self.method
        out = delta_advantages(advantages.advantages, self.hidden, old_logp, self.loss_mask, rounds=m.delta_rounds,
                               weight_min=m.delta_weight_min, weight_max=m.delta_weight_max)  # fmt: skip
        omega = out.weights[self.loss_mask > 0]  # [T]
        spread = float(omega.std()) if omega.numel() > 1 else 0.0
        self.log({"delta_scale": float(out.scale), "delta_weight_std": spread})
        self.hidden = None  # [N, L, H] freed before the loss passes
        return out.advantages.to(advantages.advantages.dtype)  # [N, L]


class DeltaSteps:
    """The LightningModule's DelTA hooks (a mixin of ``LamPOModule``)."""

    method: MethodArgs
    policy_model: nn.Module | None
    compute: Any

    @contextmanager
    def delta_features(self, traj: Trajectory) -> Iterator[DeltaFeatures]:
        """Around the π_old pass: with ``method.delta`` on, keep the head's inputs and place them as ``[N, L, H]``."""
        features = DeltaFeatures(self.method, traj.loss_mask, self.log_delta)
        if not self.method.delta:
            yield features
            return
        assert self.policy_model is not None
        with head_inputs(self.policy_model) as chunks:
            yield features
        features.hidden = place_hidden(chunks, traj, self.compute.micro_batch_size)

    def log_delta(self, values: dict[str, float]) -> None:
        """DelTA's scale c and the spread of ω, logged as ``train/delta_*``."""
        self.log_dict({f"train/{k}": v for k, v in values.items()}, on_step=True, batch_size=1)  # type: ignore[attr-defined]
