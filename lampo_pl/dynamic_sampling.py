"""DAPO dynamic sampling (Yu et al. 2025, "DAPO", §3.2): train only on groups whose outcomes differ.

A group whose G responses all succeed or all fail has zero advantage under every estimator: it
carries no gradient, yet it would still count in the loss's normalisers and shrink the step. DAPO
drops such groups and samples further prompts until the batch holds B informative groups (verl's
DAPO recipe, ``recipe/dapo/dapo_ray_trainer.py``: ``max_num_gen_batches`` bounds the rounds).

How this project does it, and why:
1. A group is informative when its *filter signal* varies (``method.filter_signal``, as verl's
   ``algorithm.filter_groups.metric``; its DAPO recipe keeps a group whose metric has std > 0,
   ``recipe/dapo/dapo_ray_trainer.py``): by default (``auto``) the correctness (0/1 outcome), as in
   DAPO, when correctness weighs in the reward, else the total reward (with correctness at weight 0
   every group might be uniform in it while the reward trained on varies).
2. The rounds are bounded (``method.max_refill_rounds``); when the bound is hit the step trains on
   the informative groups it has and says so in the log.
3. The batch always has B groups: when fewer than B are informative, uninformative ones fill it as
   *dropped* groups (``keep`` False), out of the loss and out of every normaliser. The rows stay so
   that every DDP rank runs the same number of micro-batches.
Pure functions here; the module runs the rounds (``LamPOModule.sample_batch``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from lampo_pl.data.record import Problem
from lampo_pl.rewards import RewardBatch
from lampo_pl.rollout import Rollout
from lampo_pl.trajectory import select_groups


@dataclass(frozen=True)
class SamplingRounds:
    """What DAPO dynamic sampling did in one step (Yu et al. 2025, §3.2).

    Attributes:
        groups_sampled: Groups generated, over every round.
        groups_kept: Informative groups in the batch (all B when dynamic sampling is off).
        rounds: Generation rounds, the first included.
        tokens_sampled: Response tokens generated, over every round.
        first_round_accuracy: Fraction correct of the first round's B·G responses: the on-policy accuracy
            on the step's own prompts, before any group is dropped. The trained batch's accuracy is biased
            under dynamic sampling (all-wrong and all-right groups are gone), so this is the one that
            compares across methods (the ablation's training accuracy).
    """

    groups_sampled: int
    groups_kept: int
    rounds: int
    tokens_sampled: int
    first_round_accuracy: float

class Round(NamedTuple):
    """One generation round of B prompts.

    Attributes:
        prompts: The B rendered prompts.
        rollout: Their B·G responses, groups contiguous.
        problems: B·G, the problem of each row.
        scored: The responses' rewards.
        informative: ``[B]`` bool, groups that carry signal (all True without dynamic sampling).
    """

    prompts: list[str]
    rollout: Rollout
    problems: list[Problem]
    scored: RewardBatch
    informative: Tensor


@dataclass(frozen=True)
class Sample:
    """The step's sampled batch: B groups (G rows each, contiguous), possibly from several rounds.

    Attributes:
        prompts: The B rendered prompts.
        rollout: N = B·G responses.
        problems: N, the problem of each row.
        scored: The N responses' rewards (diagnostics counted over every round).
        keep: ``[N]`` bool, False on dynamic sampling's dropped groups.
        stats: What dynamic sampling did (groups sampled and kept, rounds).
    """

    prompts: list[str]
    rollout: Rollout
    problems: list[Problem]
    scored: RewardBatch
    keep: Tensor
    stats: SamplingRounds


def informative_groups(signal: Tensor, group_size: int) -> Tensor:
    """Groups whose signal varies. signal: ``[B*G]`` (0/1 correctness or total reward), groups contiguous -> ``[B]``."""
    grouped = signal.view(-1, group_size)  # [B, G]
    return grouped.max(dim=1).values != grouped.min(dim=1).values  # [B]


def group_filter(scored: RewardBatch, group_size: int, signal: str | None) -> Tensor:
    """``[B]`` bool, the informative groups of a round by ``signal`` (``correctness`` | ``total``; ``None``: all).

    ``signal`` comes from ``settings.filter_signal_of`` (``method.filter_signal``).
    """
    if signal is None:
        return torch.ones(len(scored.total) // group_size, dtype=torch.bool)  # every group counts
    values = scored.correct if signal == "correctness" else scored.total
    return informative_groups(torch.tensor(values, dtype=torch.float64), group_size)  # [B]


def choose_groups(informative: list[Tensor], target: int) -> tuple[list[tuple[int, int]], list[bool]]:
    """The batch's ``target`` groups from several rounds' groups.

    Args:
        informative: per round, ``[B_r]`` bool, which of its groups are informative.
        target: B, the groups the batch holds.

    Returns:
        ``(groups, keep)``: ``groups[k] = (round, group)``, the first ``target`` informative groups in
        round order, then, when there are fewer, the first uninformative ones; ``keep[k]`` says
        whether group k is informative (else it is a dropped group that only fills the batch).
    """
    found = [(r, g) for r, flags in enumerate(informative) for g, ok in enumerate(flags.tolist()) if ok]
    filler = [(r, g) for r, flags in enumerate(informative) for g, ok in enumerate(flags.tolist()) if not ok]
    chosen = found[:target]
    keep = [True] * len(chosen)
    missing = target - len(chosen)
    return chosen + filler[:missing], keep + [False] * missing


def assemble(rounds: list[Round], num_groups: int, group_size: int) -> Sample:
    """The step's batch of ``num_groups`` (B) groups of ``group_size`` (G) from the rounds (:func:`choose_groups`)."""
    groups, keep = choose_groups([r.informative for r in rounds], num_groups)
    rows = [(r, k * group_size + i) for r, k in groups for i in range(group_size)]  # (round, row) of each row
    sc = [r.scored for r in rounds]
    diagnostics: dict[str, float] = {}
    for s in sc:
        for key, value in s.diagnostics.items():
            diagnostics[key] = diagnostics.get(key, 0.0) + value
    scored = RewardBatch(
        total=[sc[r].total[i] for r, i in rows],
        components={name: [sc[r].components[name][i] for r, i in rows] for name in sc[0].components},
        correct=[sc[r].correct[i] for r, i in rows],
        diagnostics=diagnostics,
    )
    device = rounds[0].rollout.input_ids.device
    return Sample(
        prompts=[rounds[r].prompts[k] for r, k in groups],
        rollout=select_groups([r.rollout for r in rounds], groups, group_size),
        problems=[rounds[r].problems[i] for r, i in rows],
        scored=scored,
        keep=torch.tensor(keep, device=device).repeat_interleave(group_size),  # [N]
        stats=SamplingRounds(groups_sampled=sum(len(r.informative) for r in rounds), groups_kept=sum(keep),
                             rounds=len(rounds),
                             tokens_sampled=sum(int(r.rollout.response_lengths.sum()) for r in rounds),
                             first_round_accuracy=sum(sc[0].correct) / len(sc[0].correct)),
    )
