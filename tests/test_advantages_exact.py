"""A group whose rewards are all equal has exactly zero advantage, whatever the value and dtype (issue 12 item 1).

Shaped rewards (correctness + α·density) are non-round floats. The old float32 statistics left
such a group a common advantage of up to ~0.12 under GRPO (the float32 mean off by one ulp, the
std ~1e-8) and ~1e-7 under Dr. GRPO and RLOO: a phantom gradient. Every test here fails on that
code. The last block keeps the non-uniform values equal to verl's and TRL's formulas.
"""

from __future__ import annotations

import pytest
import torch

from lampo_pl.advantages import EPS, estimate_advantages

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
GROUP_SIZES = (2, 3, 4, 5, 7, 8, 12, 16, 32, 64)
# (estimator, LamPO scale): every estimator and both LamPO scales
METHODS = (("grpo", "none"), ("dr_grpo", "none"), ("rloo", "none"), ("lampo", "none"), ("lampo", "group_std"))


def advantages(rewards: torch.Tensor, g: int, estimator: str, scale: str, seed: int = 0) -> torch.Tensor:
    scores = torch.randn(rewards.numel(), generator=torch.Generator().manual_seed(seed)) * 2
    return estimate_advantages(
        rewards, g, estimator, seq_scores=scores if estimator == "lampo" else None, tau=1.5, scale=scale
    ).advantages


def shaped_values(n: int, seed: int) -> torch.Tensor:
    """``n`` rewards as the paper's setting makes them: correctness ∈ {0, 1} + α·ROUGE-L density."""
    gen = torch.Generator().manual_seed(seed)
    correct = torch.randint(0, 2, (n,), generator=gen).double()
    density = torch.rand(n, generator=gen, dtype=torch.float64)
    return correct + 0.2 * density  # [n]


@pytest.mark.parametrize(("estimator", "scale"), METHODS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_uniform_groups_of_shaped_rewards_are_exactly_zero(estimator: str, scale: str, dtype: torch.dtype) -> None:
    for g in GROUP_SIZES:
        values = shaped_values(64, seed=g).to(dtype)  # [64] one value per group
        rewards = values.repeat_interleave(g)  # [64*g] every group uniform
        a = advantages(rewards, g, estimator, scale)
        assert a.dtype == dtype
        nonzero = (a.view(-1, g) != 0).any(dim=1)  # [64]
        assert not nonzero.any(), (
            f"G={g}: {int(nonzero.sum())}/64 uniform groups got a non-zero advantage, "
            f"max |A| = {a.abs().max().item():.3g}"
        )


@pytest.mark.parametrize(("estimator", "scale"), METHODS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("value", [1 + 0.2 * 0.37, 0.2 * 0.37, 0.1 + 0.2, 1 / 3, 0.7 + 0.2 * 0.9137, 1e-3, 123.456])
def test_named_non_round_values(estimator: str, scale: str, dtype: torch.dtype, value: float) -> None:
    for g in (8, 16, 24, 48):
        a = advantages(torch.full((g,), value, dtype=dtype), g, estimator, scale)
        assert torch.equal(a, torch.zeros_like(a)), f"r ≡ {value} (G={g}) gives A = {a[0].item():.3g}"


@pytest.mark.parametrize(("estimator", "scale"), METHODS)
def test_uniform_groups_beside_informative_ones(estimator: str, scale: str) -> None:
    """In a mixed batch only the uniform groups are exactly zero; the others keep their signal."""
    g = 8
    uniform = shaped_values(16, seed=1).float().repeat_interleave(g)  # [16*g]
    spread = shaped_values(16 * g, seed=2).float()  # [16*g] informative groups
    rewards = torch.stack([uniform.view(16, g), spread.view(16, g)], dim=1).flatten()  # alternate kinds
    a = advantages(rewards, g, estimator, scale).view(16, 2, g)  # [16, kind, G]
    assert torch.equal(a[:, 0], torch.zeros_like(a[:, 0]))
    assert (a[:, 1].abs().amax(dim=1) > 1e-3).all()


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
def test_low_precision_pair_gaps_are_not_rounded(dtype: torch.dtype) -> None:
    """LamPO's r_i − r_j and s_i − s_j are taken in float64, not in the rewards' 8/11-bit mantissa.

    The advantages of half-precision rewards equal the float64 result on the same (representable)
    values, rounded once at the end.
    """
    gen = torch.Generator().manual_seed(3)
    r = shaped_values(8 * 6, seed=4).to(dtype)  # [48]
    s = torch.randn(48, generator=gen, dtype=torch.float64) * 3
    for scale in ("none", "group_std"):
        low = estimate_advantages(r, 8, "lampo", seq_scores=s.to(dtype), tau=2.0, scale=scale).advantages
        exact = estimate_advantages(r.double(), 8, "lampo", seq_scores=s.to(dtype).double(), tau=2.0, scale=scale)
        assert torch.equal(low, exact.advantages.to(dtype)), scale


# ---- non-uniform groups: still verl's and TRL's formulas -----------------------------------------

def verl_grpo(r: torch.Tensor, g: int, eps: float) -> torch.Tensor:
    """verl ``core_algos.compute_grpo_outcome_advantage``: (score − mean) / (std + eps), torch.std (Bessel)."""
    groups = r.view(-1, g)
    return ((groups - groups.mean(dim=1, keepdim=True)) / (groups.std(dim=1, keepdim=True) + eps)).flatten()


def verl_rloo(r: torch.Tensor, g: int) -> torch.Tensor:
    """verl ``core_algos.compute_rloo_outcome_advantage``: r·G/(G−1) − mean·G/(G−1)."""
    groups = r.view(-1, g)
    return (groups * g / (g - 1) - groups.mean(dim=1, keepdim=True) * g / (g - 1)).flatten()


def trl_rloo(r: torch.Tensor, g: int) -> torch.Tensor:
    """TRL's leave-one-out baseline: r_i − (Σ_j r_j − r_i) / (G − 1)."""
    groups = r.view(-1, g)
    return (groups - (groups.sum(dim=1, keepdim=True) - groups) / (g - 1)).flatten()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("g", (2, 3, 8, 16))
def test_non_uniform_groups_match_verl_and_trl(seed: int, g: int) -> None:
    r = shaped_values(10 * g, seed=100 + seed)  # [10*g] float64
    got = {est: estimate_advantages(r, g, est).advantages for est in ("grpo", "dr_grpo", "rloo")}
    torch.testing.assert_close(got["grpo"], verl_grpo(r, g, EPS), rtol=0, atol=1e-12)
    torch.testing.assert_close(got["dr_grpo"], r - r.view(-1, g).mean(dim=1).repeat_interleave(g), rtol=0, atol=1e-12)
    torch.testing.assert_close(got["rloo"], verl_rloo(r, g), rtol=0, atol=1e-12)
    torch.testing.assert_close(got["rloo"], trl_rloo(r, g), rtol=0, atol=1e-12)
    # float32 rewards: the float64 statistics agree with the float32 formulas to float32 rounding
    r32 = r.float()
    torch.testing.assert_close(estimate_advantages(r32, g, "grpo").advantages, verl_grpo(r32, g, EPS),
                               rtol=1e-5, atol=1e-5)
