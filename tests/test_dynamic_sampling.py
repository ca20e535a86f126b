"""DAPO dynamic sampling's pure parts: which groups are informative, which make the batch, joining rounds, and
the rounds themselves (no prompt twice in a step)."""

from __future__ import annotations

import pytest
import torch

from lampo_pl.data.record import Problem
from lampo_pl.dynamic_sampling import Round, choose_groups, group_filter, informative_groups
from lampo_pl.rewards import RewardBatch
from lampo_pl.rollout import Rollout
from lampo_pl.sampling_rounds import sample_rounds
from lampo_pl.settings import MethodArgs, RewardArgs, SettingsError, filter_signal_of
from lampo_pl.trajectory import select_groups


def test_informative_groups_are_those_with_mixed_correctness() -> None:
    correct = torch.tensor([1, 1, 0, 0, 0, 0, 1, 1, 1])  # G = 3
    # groups [1, 1, 0] mixed, [0, 0, 0] uniform, [1, 1, 1] uniform
    assert informative_groups(correct, 3).tolist() == [True, False, False]


def test_choose_groups_takes_informative_ones_in_round_order_then_fills() -> None:
    rounds = [torch.tensor([False, True, False]), torch.tensor([True, True, False])]
    assert choose_groups(rounds, 2) == ([(0, 1), (1, 0)], [True, True])
    # only 3 informative in all rounds for B = 4: the first uninformative group fills, marked dropped
    assert choose_groups(rounds, 4) == ([(0, 1), (1, 0), (1, 1), (0, 0)], [True, True, True, False])


def _rollout(prompts: list[list[int]], responses: list[list[int]]) -> Rollout:
    p, width = max(map(len, prompts)), max(map(len, responses))
    ids = torch.zeros(len(prompts), p + width, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, (q, r) in enumerate(zip(prompts, responses, strict=True)):
        ids[i, p - len(q) : p], attn[i, p - len(q) : p] = torch.tensor(q), 1
        ids[i, p : p + len(r)], attn[i, p : p + len(r)] = torch.tensor(r), 1
    lengths = attn[:, p:].sum(1)
    return Rollout(input_ids=ids, attention_mask=attn, response_mask=attn[:, p:], prompt_len=p,
                   response_lengths=lengths, truncated=lengths == width, texts=[str(r) for r in responses],
                   generation_seconds=1.0, sampled_logprobs=-attn[:, p:].float())


def test_select_groups_pads_rounds_of_different_widths() -> None:
    first = _rollout([[5, 6], [5, 6], [7], [7]], [[1], [2, 3], [4, 4, 4], [9]])  # G = 2, P = 2, L = 3
    second = _rollout([[8, 8, 8], [8, 8, 8], [2], [2]], [[1, 1, 1, 1, 1], [3], [6], [6, 6]])  # P = 3, L = 5
    joined = select_groups([first, second], [(1, 0), (0, 1)], group_size=2)
    assert joined.prompt_len == 3 and joined.response_mask.shape == (4, 5)
    assert joined.texts == [str([1, 1, 1, 1, 1]), str([3]), str([4, 4, 4]), str([9])]
    for row, (source, src_row) in enumerate([(second, 0), (second, 1), (first, 2), (first, 3)]):
        keep = joined.attention_mask[row].bool()
        src_keep = source.attention_mask[src_row].bool()
        assert joined.input_ids[row][keep].tolist() == source.input_ids[src_row][src_keep].tolist()
        assert torch.equal(joined.response_lengths[row], source.response_lengths[src_row])
        n = int(source.response_lengths[src_row])  # responses start at the joined P, prompts end there
        assert joined.response_ids[row, :n].tolist() == source.response_ids[src_row, :n].tolist()
        assert joined.input_ids[row, joined.prompt_len - 1] == source.input_ids[src_row, source.prompt_len - 1]
    assert joined.sampled_logprobs is not None
    assert torch.equal(joined.sampled_logprobs, -joined.response_mask.float())
    assert joined.generation_seconds == 2.0


def _problem(prompt: str) -> Problem:
    return Problem(id=prompt, prompt=prompt, answer="1")


def test_refill_rounds_never_draw_a_prompt_already_in_the_step() -> None:
    """Issue 21, item 10: a refill batch that repeats the step's prompts (or an earlier round's) samples only
    the new ones; a round with nothing new samples nothing, yet counts (the ranks agree on rounds)."""
    refills = iter([["a", "c", "c"], ["c", "b"], ["d", "e"]])
    sampled: list[list[str]] = []

    def sample_round(problems: list[Problem], index: int) -> Round:
        sampled.append([q.prompt for q in problems])
        n = len(problems) * 2  # G = 2, every group uninformative: refill until the bound
        rollout = _rollout([[1]] * n, [[2]] * n)
        scored = RewardBatch(total=[0.0] * n, components={}, correct=[0.0] * n, diagnostics={})
        return Round([q.prompt for q in problems], rollout, [q for q in problems for _ in range(2)], scored,
                     torch.zeros(len(problems), dtype=torch.bool))

    sample = sample_rounds([_problem("a"), _problem("b")], sample_round,
                           lambda: [_problem(p) for p in next(refills)], lambda flag: flag, num_groups=2,
                           group_size=2, dynamic_sampling=True, max_refill_rounds=3)
    assert sampled == [["a", "b"], ["c"], ["d", "e"]]  # round 2 drew only prompts of the step: nothing sampled
    assert sample.stats.groups_sampled == 5 and sample.stats.rounds == 3


def test_filter_signal_auto_is_correctness_when_it_weighs_else_total_and_refuses_correctness_at_weight_0() -> None:
    """Issue 21, item 9 (verl's ``algorithm.filter_groups.metric``)."""
    on = MethodArgs(dynamic_sampling=True)
    assert filter_signal_of(on, RewardArgs(correctness=1.0)) == "correctness"
    assert filter_signal_of(on, RewardArgs(correctness=0.0, density=1.0)) == "total"
    assert filter_signal_of(MethodArgs(), RewardArgs(correctness=0.0, density=1.0)) is None
    with pytest.raises(SettingsError, match=r"^model\.method\.filter_signal='correctness': allowed .*correctness is 0"):
        filter_signal_of(MethodArgs(dynamic_sampling=True, filter_signal="correctness"),
                         RewardArgs(correctness=0.0, format=1.0))
    scored = RewardBatch(total=[0.5, 0.0, 1.0, 1.0], components={}, correct=[0.0] * 4, diagnostics={})
    assert group_filter(scored, 2, "total").tolist() == [True, False]
    assert group_filter(scored, 2, "correctness").tolist() == [False, False]
    assert group_filter(scored, 2, None).tolist() == [True, True]
