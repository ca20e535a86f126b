"""Micro-batching of a rollout and per-phase timing for one training step.

Micro-batches group responses of similar length (sorted by prompt + response tokens) and each is
trimmed to its own longest row, so little compute goes to padding (issue 7: "micro-batches are
formed to minimise padding"). Any row order is safe because the loss coefficients are computed
over the whole batch (``losses.sequence_coefficients``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from lampo_pl.rollout import Rollout


class Phases:
    """Wall-clock seconds per named phase of a step: ``with phases("generation"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def micro_batches(rollout: Rollout, size: int) -> list[Tensor]:
    """Row indices of each micro-batch, longest rows first, ``size`` rows each (the last may be short)."""
    prompt_tokens = rollout.attention_mask[:, : rollout.prompt_len].sum(dim=1)  # [N]
    total = prompt_tokens + rollout.response_lengths.to(prompt_tokens.device)  # [N]
    order = torch.argsort(total, descending=True, stable=True)  # [N]
    return [order[i : i + size] for i in range(0, order.numel(), size)]


def slice_rows(rollout: Rollout, rows: Tensor) -> tuple[Tensor, Tensor, int, int]:
    """The rows' ``input_ids`` and ``attention_mask`` trimmed of all-padding columns at both ends.

    Returns:
        ``(input_ids [n, T'], attention_mask [n, T'], response_start, width)`` where the response
        tokens are columns ``response_start .. response_start + width - 1``.
    """
    p = rollout.prompt_len
    width = max(1, int(rollout.response_lengths[rows].max()))
    attn = rollout.attention_mask[rows]  # [n, P+L]
    used = (attn[:, :p].sum(dim=0) > 0).nonzero()
    first = int(used.min()) if used.numel() else 0  # leftmost prompt column any row uses
    ids = rollout.input_ids[rows, first : p + width]  # [n, T']
    return ids, attn[:, first : p + width], p - first, width


def pad_logprobs(parts: list[tuple[Tensor, Tensor]], shape: torch.Size) -> Tensor:
    """Scatter per-micro-batch ``[n, width]`` log-probs back into one zero-padded ``[N, L]`` tensor."""
    first = parts[0][1]
    out = torch.zeros(shape, dtype=first.dtype, device=first.device)  # [N, L]
    for rows, logp in parts:
        out[rows.to(out.device), : logp.shape[1]] = logp
    return out
