"""The sampler–trainer mismatch metrics and truncated importance sampling (lampo_pl/mismatch.py)."""

from __future__ import annotations

import math

import torch

from lampo_pl.mismatch import MismatchMeter, sampler_mismatch, truncated_is_weights
from lampo_pl.policy_losses import policy_loss as clipped_policy_loss
from lampo_pl.vllm_engine import request_seeds, step_seed


def test_mismatch_is_mean_and_max_of_absolute_differences_on_masked_tokens() -> None:
    old = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    sampler = torch.tensor([[-1.5, -1.0, -3.0], [-0.5, -0.25, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # the 9.0 gap is after the response: not counted
    total, count, largest = sampler_mismatch(old, sampler, mask)
    assert (float(total), float(count), float(largest)) == (0.5 + 1.0 + 0.0 + 0.0 + 0.25, 5.0, 1.0)
    meter = MismatchMeter()
    meter.add(old[:1], sampler[:1], mask[:1])
    meter.add(old[1:], sampler[1:], mask[1:])
    assert meter.pop() == {"sampler_logp_diff_mean": 1.75 / 5, "sampler_logp_diff_max": 1.0}
    assert all(math.isnan(v) for v in meter.pop().values())  # reset: nothing measured since


def test_truncated_is_weights_are_the_capped_ratio_and_weight_only_the_policy_term() -> None:
    old = torch.log(torch.tensor([[0.5, 0.2, 0.9]]))
    sampler = torch.log(torch.tensor([[0.25, 0.4, 0.1]]))
    weights = truncated_is_weights(old, sampler, cap=3.0)  # ratios 2, 0.5, 9 -> capped at 3
    assert torch.allclose(weights, torch.tensor([[2.0, 0.5, 3.0]]))
    # μ = 1 (ρ = 1), A = −2: policy term 2 per token; β = 1 with ref = logp + log(2): k1 KL = −log 2 per token
    logp = torch.zeros(1, 3)
    per_token, _ = clipped_policy_loss(logp, logp, torch.tensor([-2.0]), torch.ones(1, 3), ref_logp=logp + math.log(2),
                                       beta=1.0, kl_estimator="k1", is_weights=weights)
    assert torch.allclose(per_token, torch.tensor([[2.0, 0.5, 3.0]]) * 2.0 - math.log(2))


def test_tis_gradient_flows_through_the_policy_term_only_scaled_by_the_constant_weight() -> None:
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    weights = truncated_is_weights(logp, torch.tensor([[-1.0, -1.0]]), cap=10.0)  # [[1, e^-1]], no grad
    assert not weights.requires_grad
    # μ = 1, A = 2: PG term −2·ρ (gradient −2 per token); β = 0.5, k1 KL = logp − ref (gradient 0.5 per token)
    per_token, _ = clipped_policy_loss(logp, logp.detach(), torch.tensor([2.0]), torch.ones(1, 2),
                                       ref_logp=torch.zeros(1, 2), beta=0.5, kl_estimator="k1", is_weights=weights)
    per_token.sum().backward()
    assert torch.allclose(logp.grad, torch.tensor([[-2.0 + 0.5, -2.0 * math.exp(-1) + 0.5]]))


def test_request_seeds_depend_on_the_step_seed_and_row_only() -> None:
    a, b = step_seed(0, 5, 0), step_seed(0, 5, 1)
    assert a != b and step_seed(0, 5, 0) == a != step_seed(0, 6, 0) != step_seed(1, 5, 0)
    seeds = request_seeds(a, 16)
    assert seeds[:4] == request_seeds(a, 4) and len(set(seeds)) == 16
    assert all(0 <= s < 2**31 for s in seeds)
