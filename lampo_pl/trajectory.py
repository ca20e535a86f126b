"""The step's tensors as one typed container, its micro-batch views, and the rollout's group selection.

A ``Trajectory`` holds everything the loss reads (like torchtune's ``GRPOTrajectory``,
``torchtune/dev/grpo/types.py``): the token ids and masks, the loss mask, the advantages and the
old and reference log-probs. ``rows`` gives a micro-batch view of any subset of rows, trimmed of
all-padding columns, so the passes over it need no index bookkeeping of their own.

Micro-batches group responses of similar length (sorted by prompt + response tokens) and each is
trimmed to its own longest row, so little compute goes to padding (issue 7: "micro-batches are
formed to minimise padding"). Any row order is safe because the loss coefficients are computed
over the whole batch (``losses.sequence_coefficients``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lampo_pl.rollout import Rollout


@dataclass(frozen=True)
class Trajectory:
    """One step's N = B·G responses (groups contiguous), P padded prompt columns, L response columns.

    Attributes:
        input_ids: ``[N, P+L]`` left-padded prompts, then right-padded responses.
        attention_mask: ``[N, P+L]`` 1 on real prompt tokens and on response tokens.
        prompt_len: P: responses start at column P.
        loss_mask: ``[N, L]`` 1 on the tokens that count in the loss: response tokens, less overlong-masked
            responses and dynamic sampling's dropped groups.
        keep: ``[N]`` bool, False on the rows of dynamic sampling's dropped groups, which leave every
            normaliser (an overlong-masked response stays in N: only its tokens are masked).
        advantages: ``[N]`` one constant per response, or ``[N, L]`` one per token (DelTA, ``delta.py``);
            ``None`` until estimated.
        old_logprobs: ``[N, L]`` log π_old, frozen before the first update (μ > 1); ``None`` at μ = 1,
            where the detached current log-probs *are* π_old's (see :meth:`old_logprobs_for`).
        ref_logprobs: ``[N, L]`` log π_ref; ``None`` when the reference pass is skipped (β = 0).
        sampler_logprobs: ``[N, L]`` the sampler's own log-probs of the tokens it drew (``Rollout.sampled_logprobs``),
            for the sampler–trainer mismatch and TIS (``mismatch.py``); ``None`` when not recorded.
    """

    input_ids: Tensor
    attention_mask: Tensor
    prompt_len: int
    loss_mask: Tensor
    keep: Tensor
    advantages: Tensor | None = None
    old_logprobs: Tensor | None = None
    ref_logprobs: Tensor | None = None
    sampler_logprobs: Tensor | None = None

    @classmethod
    def of(cls, rollout: Rollout, loss_mask: Tensor | None = None, keep: Tensor | None = None) -> Trajectory:
        """The trajectory of a rollout; by default every response token counts and every row is kept."""
        n = rollout.input_ids.shape[0]
        return cls(
            input_ids=rollout.input_ids,
            attention_mask=rollout.attention_mask,
            prompt_len=rollout.prompt_len,
            loss_mask=rollout.response_mask if loss_mask is None else loss_mask,  # [N, L]
            keep=torch.ones(n, dtype=torch.bool, device=rollout.input_ids.device) if keep is None else keep,  # [N]
            sampler_logprobs=rollout.sampled_logprobs,  # [N, L] or None
        )

    @property
    def response_mask(self) -> Tensor:
        """``[N, L]`` 1 on response tokens (EOS included), whether or not they count in the loss."""
        return self.attention_mask[:, self.prompt_len :]

    @property
    def num_rows(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, index: Tensor) -> Trajectory:
        """The rows ``index`` ``[n]`` trimmed of all-padding columns at both ends (a micro-batch view).

        The view's prompt starts at the leftmost column any of its rows uses; its response columns
        stop at its longest response, so every ``[n, L]`` field is cut to that width.
        """
        p = self.prompt_len
        attn = self.attention_mask[index]  # [n, P+L]
        width = max(1, int(attn[:, p:].sum(dim=1).max()))
        used = (attn[:, :p].sum(dim=0) > 0).nonzero()
        first = int(used.min()) if used.numel() else 0  # leftmost prompt column any row uses

        def cut(x: Tensor | None) -> Tensor | None:
            return None if x is None else x[index, :width]  # [n, l]

        def per_row(x: Tensor | None) -> Tensor | None:  # [N] -> [n], a per-token [N, L] -> [n, l]
            return x[index] if x is not None and x.dim() == 1 else cut(x)

        return Trajectory(
            input_ids=self.input_ids[index, first : p + width],  # [n, P'+l]
            attention_mask=attn[:, first : p + width],  # [n, P'+l]
            prompt_len=p - first,
            loss_mask=self.loss_mask[index, :width],  # [n, l]
            keep=self.keep[index],  # [n]
            advantages=per_row(self.advantages),  # [n] or [n, l] (DelTA)
            old_logprobs=cut(self.old_logprobs),
            ref_logprobs=cut(self.ref_logprobs),
            sampler_logprobs=cut(self.sampler_logprobs),
        )

    def old_logprobs_for(self, logp: Tensor) -> Tensor:
        """log π_old of these rows, given their current log-probs ``logp`` ``[n, l]`` (which carry the gradient).

        The μ = 1 identity: with one optimiser step per rollout, the policy being optimised is the
        policy that sampled, so the detached current log-probs equal log π_old (ρ ≡ 1 in value; the
        gradient of ρ is still the policy gradient). No pass is spent computing them again.
        """
        return logp.detach() if self.old_logprobs is None else self.old_logprobs


def micro_batches(trajectory: Trajectory, size: int) -> list[Tensor]:
    """Row indices of each micro-batch, longest rows first, ``size`` rows each (the last may be short)."""
    total = trajectory.attention_mask.sum(dim=1)  # [N] prompt + response tokens
    order = torch.argsort(total, descending=True, stable=True)  # [N]
    return [order[i : i + size] for i in range(0, order.numel(), size)]


def select_groups(rollouts: list[Rollout], groups: list[tuple[int, int]], group_size: int) -> Rollout:
    """One rollout made of the chosen groups of several: ``groups[k] = (rollout index, group index)``.

    Rollouts from different generation rounds differ in prompt width P and response width L: prompts
    are left-padded and responses right-padded to the widest, with zero masks (and zero ids, never
    attended to) on the new padding.
    """
    p = max(r.prompt_len for r in rollouts)
    width = max(r.response_mask.shape[1] for r in rollouts)
    parts: list[Rollout] = []
    for which, g in groups:
        r = rollouts[which]
        rows = slice(g * group_size, (g + 1) * group_size)
        left, right = p - r.prompt_len, width - r.response_mask.shape[1]
        parts.append(Rollout(
            input_ids=_pad(r.input_ids[rows], left, right), attention_mask=_pad(r.attention_mask[rows], left, right),
            response_mask=_pad(r.response_mask[rows], 0, right), prompt_len=p,
            response_lengths=r.response_lengths[rows], truncated=r.truncated[rows], texts=r.texts[rows],
            generation_seconds=r.generation_seconds,
            sampled_logprobs=None if r.sampled_logprobs is None else _pad(r.sampled_logprobs[rows], 0, right),
            sampled_hidden=None if r.sampled_hidden is None else _pad(r.sampled_hidden[rows], 0, right),
        ))  # fmt: skip
    logps, hidden = [q.sampled_logprobs for q in parts], [q.sampled_hidden for q in parts]
    return Rollout(
        input_ids=torch.cat([q.input_ids for q in parts]),  # [N, P+L]
        attention_mask=torch.cat([q.attention_mask for q in parts]),  # [N, P+L]
        response_mask=torch.cat([q.response_mask for q in parts]),  # [N, L]
        prompt_len=p,
        response_lengths=torch.cat([q.response_lengths for q in parts]),  # [N]
        truncated=torch.cat([q.truncated for q in parts]),  # [N]
        texts=[t for q in parts for t in q.texts],
        generation_seconds=sum(r.generation_seconds for r in rollouts),
        sampled_logprobs=None if any(x is None for x in logps) else torch.cat(logps),  # type: ignore[arg-type]
        sampled_hidden=None if any(x is None for x in hidden) else torch.cat(hidden),  # type: ignore[arg-type]
    )


def _pad(x: Tensor, left: int, right: int) -> Tensor:
    """Zero columns on both sides of ``[n, w]`` -> ``[n, left + w + right]`` (of ``[n, w, H]`` likewise)."""
    return torch.nn.functional.pad(x, (0, 0) * (x.dim() - 2) + (left, right))
