"""The sampler seam (``lampo_pl/sampler.py``): the native sampler's shape, truncation and equivalence with rollouts."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from lampo_pl.rollout import SamplingParams, generate_rollout
from lampo_pl.sampler import Completion, NativeSampler, Sampler

pytestmark = pytest.mark.usefixtures("one_thread")


def test_native_sampler_groups_n_per_prompt_and_matches_the_rollout(trained_tiny_policy: Callable) -> None:
    model, tokenizer = trained_tiny_policy(4, 8)
    prompts = ["1 + 1 =", "two plus three is", "7 - 2 ="]
    params = SamplingParams(temperature=1.0, max_new_tokens=6)
    sampler: Sampler = NativeSampler(model, tokenizer)
    torch.manual_seed(3)
    out = sampler(prompts, 2, params)
    torch.manual_seed(3)
    rollout = generate_rollout(model, tokenizer, prompts, 2, params)
    assert [len(group) for group in out] == [2, 2, 2]
    flat = [c for group in out for c in group]
    # Row i·n + j of the rollout is prompt i's sample j: the grouping keeps that order.
    assert [c.text for c in flat] == rollout.texts
    assert [c.truncated for c in flat] == rollout.truncated.tolist()
    assert any(c.truncated for c in flat)  # 6 tokens of a random tiny policy: some run out of length
    assert [c.num_tokens for c in flat] == rollout.response_lengths.tolist()
    assert all(isinstance(c, Completion) and 1 <= c.num_tokens <= 6 for c in flat)

