"""The generation rounds of one training step: B prompts, then DAPO's refill rounds (``dynamic_sampling.py``).

The module supplies what one round does (render, generate, score: ``sample_round``), where refill
prompts come from (the DataModule's ``refill_batch``) and how the DDP ranks agree (``any_rank``);
this file decides how many rounds run and which groups make the batch (``dynamic_sampling.assemble``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from lampo_pl.data.record import Problem
from lampo_pl.dynamic_sampling import Round, Sample, assemble

log = logging.getLogger(__name__)


def sample_rounds(
    batch: list[Problem],
    sample_round: Callable[[list[Problem], int], Round],
    refill: Callable[[], list[Problem]],
    any_rank: Callable[[bool], bool],
    *,
    num_groups: int,
    group_size: int,
    dynamic_sampling: bool,
    max_refill_rounds: int,
) -> Sample:
    """G responses per prompt and their rewards; with DAPO dynamic sampling, refilled to B informative groups.

    Each refill round takes B further prompts (``refill``), at most ``max_refill_rounds`` of them, and
    samples those not already in the step (``fresh``): the same prompt twice in one batch would weigh
    it double, which on a small dataset happens often (issue 21, item 10); a round may so sample
    fewer than B prompts, or none. Under DDP the ranks agree on every round (one more while any rank
    lacks groups), so that each takes the same number of batches from the refill stream.

    Args:
        batch: The step's B problems.
        sample_round: ``(problems, round_index) -> Round``: one generation round.
        refill: B further problems from the refill stream.
        any_rank: Whether a flag holds on any DDP rank.
        num_groups: B, the groups the batch holds.
        group_size: G.
        dynamic_sampling: Refill until B groups are informative (else one round, every group kept).
        max_refill_rounds: At most this many refill rounds.
    """
    rounds = [sample_round(batch, 0)]
    seen = {prompt_key(q) for q in batch}
    extra = 0
    while dynamic_sampling and extra < max_refill_rounds:
        missing = num_groups - sum(int(r.informative.sum()) for r in rounds)
        if not any_rank(missing > 0):
            break
        problems = fresh(refill(), seen)
        extra += 1
        if missing > 0 and problems:
            rounds.append(sample_round(problems, extra))
    sample = assemble(rounds, num_groups, group_size)
    if dynamic_sampling and sample.stats.groups_kept < num_groups:
        log.warning("dynamic sampling: %d of %d groups informative after %d generation rounds; training on them",
                    sample.stats.groups_kept, num_groups, sample.stats.rounds)
    return sample


def prompt_key(problem: Problem) -> tuple[str, str]:
    """What makes two problems the same prompt: their text and chat messages (ids may repeat across files)."""
    return problem.prompt, repr(problem.messages)


def fresh(problems: list[Problem], seen: set[tuple[str, str]]) -> list[Problem]:
    """``problems`` whose prompt is not in ``seen`` (nor earlier in ``problems``); adds them to ``seen``."""
    out = []
    for q in problems:
        if prompt_key(q) not in seen:
            seen.add(prompt_key(q))
            out.append(q)
    return out


def refill_from(datamodule: Any) -> list[Problem]:
    """B further prompts for a refill round, from the DataModule (``ProblemDataModule.refill_batch``)."""
    if datamodule is None or not hasattr(datamodule, "refill_batch"):
        raise ValueError("method.dynamic_sampling refills from the DataModule's refill_batch(): train with a "
                         "ProblemDataModule, or set method.max_refill_rounds: 0")
    return datamodule.refill_batch()


def any_rank(trainer: Any, flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on any DDP rank of ``trainer`` (itself without DDP)."""
    if trainer.world_size == 1:
        return flag
    return bool(trainer.strategy.reduce(torch.tensor(float(flag), device=device), reduce_op="sum") > 0)
