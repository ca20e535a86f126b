"""Advantage estimators: hand-computed values, reductions, a loop reference, edge cases, errors."""

from __future__ import annotations

import math

import pytest
import torch

from lampo_pl.advantages import (
    EPS,
    confidence_scores,
    estimate_advantages,
    lampo,
    lampo_pair_weights,
)

ESTIMATORS = ("grpo", "dr_grpo", "rloo", "lampo")


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def adv(rewards: list[float], g: int, estimator: str, scores: list[float] | None = None, **kw) -> torch.Tensor:
    r = torch.tensor(rewards, dtype=torch.float64)
    s = None if scores is None else torch.tensor(scores, dtype=torch.float64)
    if estimator == "lampo" and s is None:
        s = torch.zeros_like(r)
    return estimate_advantages(r, g, estimator, seq_scores=s, **kw).advantages


# ---- hand-computed values ---------------------------------------------------------------------

def test_grpo_hand_values() -> None:
    # r = [1, 0, 0, 0]: mean 0.25, deviations [0.75, -0.25, -0.25, -0.25]
    # sample var = (0.5625 + 3·0.0625)/3 = 0.25 -> std 0.5; A = dev / (0.5 + 1e-6)
    expected = torch.tensor([0.75, -0.25, -0.25, -0.25], dtype=torch.float64) / (0.5 + EPS)
    torch.testing.assert_close(adv([1, 0, 0, 0], 4, "grpo"), expected, rtol=0, atol=1e-12)


def test_dr_grpo_hand_values() -> None:
    # two groups of 2: [1, 0] -> mean 0.5 -> [0.5, -0.5]; [0.2, 0.6] -> mean 0.4 -> [-0.2, 0.2]
    expected = torch.tensor([0.5, -0.5, -0.2, 0.2], dtype=torch.float64)
    torch.testing.assert_close(adv([1, 0, 0.2, 0.6], 2, "dr_grpo"), expected, rtol=0, atol=1e-12)


def test_rloo_hand_values() -> None:
    # r = [1, 0, 0, 0]: A_0 = 1 − (0+0+0)/3 = 1; A_j = 0 − (1+0+0)/3 = −1/3
    expected = torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3], dtype=torch.float64)
    torch.testing.assert_close(adv([1, 0, 0, 0], 4, "rloo"), expected, rtol=0, atol=1e-12)


def test_lampo_hand_values() -> None:
    # G = 3, r = [1, 0, 0.5], s = [-1, -2, -1.5], τ = 1
    # w_01 = σ(−1·sign(1−0)·(−1−(−2)))     = σ(−1)
    # w_02 = σ(−1·sign(1−0.5)·(−1−(−1.5))) = σ(−0.5)
    # w_12 = σ(−1·sign(0−0.5)·(−2−(−1.5))) = σ(−(−1)(−0.5)) = σ(−0.5)
    # A_0 = (2/3)(w_01·1 + w_02·0.5);  A_1 = (2/3)(−w_01·1 − w_12·0.5);  A_2 = (2/3)(−w_02·0.5 + w_12·0.5) = 0
    a0 = (2 / 3) * (sigmoid(-1) + 0.5 * sigmoid(-0.5))
    expected = torch.tensor([a0, -a0, 0.0], dtype=torch.float64)
    got = adv([1, 0, 0.5], 3, "lampo", [-1, -2, -1.5], tau=1.0)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    # group_std scaling: std([1, 0, 0.5]) = 0.5 (sample), so A / (0.5 + eps)
    scaled = adv([1, 0, 0.5], 3, "lampo", [-1, -2, -1.5], tau=1.0, scale="group_std")
    torch.testing.assert_close(scaled, expected / (0.5 + EPS), rtol=0, atol=1e-12)


def test_confidence_scores_hand_values() -> None:
    logp = torch.tensor([[-1.0, -3.0, -9.0], [-2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # mean: (−1−3)/2 = −2, −2/1 = −2; sum: −4, −2 (the masked −9 never counts)
    torch.testing.assert_close(confidence_scores(logp, mask, "mean"), torch.tensor([-2.0, -2.0]))
    torch.testing.assert_close(confidence_scores(logp, mask, "sum"), torch.tensor([-4.0, -2.0]))


# ---- reductions and invariants ----------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("g", [2, 3, 8])
def test_lampo_tau0_reduces_to_dr_grpo_and_grpo(seed: int, g: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    r = torch.randint(0, 3, (4 * g,), generator=gen).double() / 2  # rewards in {0, .5, 1}: ties too
    s = torch.randn(4 * g, generator=gen, dtype=torch.float64)
    a_none = estimate_advantages(r, g, "lampo", seq_scores=s, tau=0.0, scale="none").advantages
    a_std = estimate_advantages(r, g, "lampo", seq_scores=s, tau=0.0, scale="group_std").advantages
    torch.testing.assert_close(a_none, estimate_advantages(r, g, "dr_grpo").advantages, rtol=0, atol=1e-12)
    torch.testing.assert_close(a_std, estimate_advantages(r, g, "grpo").advantages, rtol=0, atol=1e-9)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("seed", range(3))
def test_advantages_sum_to_zero_per_group(estimator: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    r = torch.rand(6 * 5, generator=gen, dtype=torch.float64)
    s = torch.randn(6 * 5, generator=gen, dtype=torch.float64) * 3
    a = estimate_advantages(r, 5, estimator, seq_scores=s, tau=2.0).advantages
    torch.testing.assert_close(a.view(6, 5).sum(dim=1), torch.zeros(6, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("g", [1, 2, 4])
def test_all_equal_groups_give_zero_without_nan(estimator: str, g: int) -> None:
    r = torch.tensor([1.0] * g + [0.0] * g)
    s = torch.randn(2 * g)
    for scale in ("none", "group_std") if estimator == "lampo" else ("none",):
        a = estimate_advantages(r, g, estimator, seq_scores=s, scale=scale).advantages
        assert torch.isfinite(a).all()
        assert torch.equal(a, torch.zeros_like(a))


def test_group_size_one_gives_zero_everywhere() -> None:
    r = torch.tensor([1.0, 0.0, 0.5])
    for estimator in ESTIMATORS:
        for scale in ("none", "group_std") if estimator == "lampo" else ("none",):
            a = estimate_advantages(r, 1, estimator, seq_scores=torch.randn(3), scale=scale).advantages
            assert torch.equal(a, torch.zeros(3)), estimator


def test_group_size_two_values() -> None:
    # r = [1, 0]: dr_grpo ±0.5; rloo ±1; grpo: std = √0.5 -> ±0.5/(√0.5 + eps)
    torch.testing.assert_close(adv([1, 0], 2, "dr_grpo"), torch.tensor([0.5, -0.5], dtype=torch.float64))
    torch.testing.assert_close(adv([1, 0], 2, "rloo"), torch.tensor([1.0, -1.0], dtype=torch.float64))
    g = 0.5 / (math.sqrt(0.5) + EPS)
    torch.testing.assert_close(adv([1, 0], 2, "grpo"), torch.tensor([g, -g], dtype=torch.float64))
    # lampo with s = [0, -1] (already ordered right): A = (2/2)·σ(−1)·(1−0) = σ(−1)
    w = sigmoid(-1.0)
    torch.testing.assert_close(adv([1, 0], 2, "lampo", [0, -1]), torch.tensor([w, -w], dtype=torch.float64))


def test_confidence_weight_direction() -> None:
    """A pair the policy already orders correctly weighs less than the same pair ordered wrongly."""
    r = torch.tensor([1.0, 0.0])
    right = lampo(r, 2, torch.tensor([-0.5, -1.5]), tau=1.0)  # better response is likelier
    wrong = lampo(r, 2, torch.tensor([-1.5, -0.5]), tau=1.0)  # worse response is likelier
    assert right.pair_weights is not None and wrong.pair_weights is not None
    w_right, w_wrong = right.pair_weights[0, 0, 1].item(), wrong.pair_weights[0, 0, 1].item()
    assert w_right < 0.5 < w_wrong
    assert right.advantages[0] < wrong.advantages[0]
    # symmetric weights, zero diagonal
    torch.testing.assert_close(right.pair_weights, right.pair_weights.transpose(1, 2))
    assert torch.all(right.pair_weights.diagonal(dim1=1, dim2=2) == 0)


def test_larger_tau_sharpens_weights() -> None:
    r, s = torch.tensor([1.0, 0.0]), torch.tensor([-0.5, -1.5])
    w = [lampo_pair_weights(r.view(1, 2), s.view(1, 2), tau)[0, 0, 1].item() for tau in (0.0, 1.0, 4.0)]
    assert w[0] == 0.5 and w[0] > w[1] > w[2]


# ---- loop reference ---------------------------------------------------------------------------

def lampo_loop(r: list[float], s: list[float], g: int, tau: float, scale: str) -> list[float]:
    """Straight transcription of ALGORITHMS.md, one pair at a time."""
    out: list[float] = []
    for b in range(len(r) // g):
        rs, ss = r[b * g:(b + 1) * g], s[b * g:(b + 1) * g]
        mean = sum(rs) / g
        std = math.sqrt(sum((x - mean) ** 2 for x in rs) / (g - 1)) if g > 1 else 0.0
        for i in range(g):
            a = 0.0
            for j in range(g):
                if j == i:
                    continue
                sign = (rs[i] > rs[j]) - (rs[i] < rs[j])
                w = sigmoid(-tau * sign * (ss[i] - ss[j]))
                a += w * (rs[i] - rs[j])
            a *= 2.0 / g
            out.append(a / (std + EPS) if scale == "group_std" else a)
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("g", [1, 2, 3, 5, 8, 16])
def test_vectorized_lampo_matches_loop(seed: int, g: int) -> None:
    gen = torch.Generator().manual_seed(seed * 100 + g)
    n = 3 * g
    r = (torch.randint(0, 4, (n,), generator=gen).double() / 3).tolist()  # ties are common in RLVR
    s = (torch.randn(n, generator=gen, dtype=torch.float64) * 2).tolist()
    tau = float(torch.rand((), generator=gen) * 3)
    for scale in ("none", "group_std"):
        got = estimate_advantages(
            torch.tensor(r, dtype=torch.float64), g, "lampo",
            seq_scores=torch.tensor(s, dtype=torch.float64), tau=tau, scale=scale,
        ).advantages
        torch.testing.assert_close(got, torch.tensor(lampo_loop(r, s, g, tau, scale), dtype=torch.float64),
                                   rtol=1e-12, atol=1e-12)


# ---- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rewards": torch.ones(5), "group_size": 2, "estimator": "grpo"}, "not a positive multiple of group_size=2"),
        ({"rewards": torch.ones(2, 2), "group_size": 2, "estimator": "grpo"}, "flat"),
        ({"rewards": torch.ones(4), "group_size": 0, "estimator": "grpo"}, "group_size must be >= 1"),
        ({"rewards": torch.tensor([1.0, float("nan")]), "group_size": 2, "estimator": "dr_grpo"}, r"rows \[1\]"),
        ({"rewards": torch.ones(4), "group_size": 2, "estimator": "ppo"}, "unknown advantage estimator 'ppo'"),
        ({"rewards": torch.ones(4), "group_size": 2, "estimator": "lampo"}, "needs seq_scores"),
        ({"rewards": torch.ones(4), "group_size": 2, "estimator": "lampo", "seq_scores": torch.ones(3)},
         "seq_scores"),
        ({"rewards": torch.ones(4), "group_size": 2, "estimator": "lampo", "seq_scores": torch.ones(4),
          "scale": "minmax"}, "unknown advantage scale"),
        ({"rewards": torch.ones(4), "group_size": 2, "estimator": "grpo", "scale": "group_std"},
         "applies to .lampo. only"),
        ({"rewards": torch.ones(4), "group_size": 2, "estimator": "lampo", "seq_scores": torch.ones(4),
          "tau": -1.0}, "tau must be >= 0"),
        ({"rewards": torch.ones(2), "group_size": 2, "estimator": "lampo",
          "seq_scores": torch.tensor([0.0, -float("inf")])}, "non-finite"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        estimate_advantages(**kwargs)


def test_confidence_scores_errors() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        confidence_scores(torch.zeros(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="unknown confidence score"):
        confidence_scores(torch.zeros(2, 3), torch.ones(2, 3), "max")  # type: ignore[arg-type]
