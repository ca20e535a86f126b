"""Policy loss, KL estimators and aggregation: hand values, reductions, gradients, errors."""

from __future__ import annotations

import math

import pytest
import torch

from lampo_pl.losses import (
    EPS,
    R_LEN,
    BatchCounts,
    aggregate,
    batch_counts,
    kl_penalty,
    sequence_coefficients,
)
from lampo_pl.policy_losses import policy_loss as clipped_policy_loss

MODES = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm", "lambda")


def log(x: float) -> float:
    return math.log(x)


def agg(loss: torch.Tensor, mask: torch.Tensor, mode: str, **kw: object) -> torch.Tensor:
    """The full-batch loss: coefficients from the mask's own lengths, then the aggregation."""
    return aggregate(loss, mask, sequence_coefficients(mask.sum(1).to(loss.dtype), mode, **kw))  # type: ignore[arg-type]


# ---- the clipped surrogate ---------------------------------------------------------------------

def test_clipped_loss_hand_values() -> None:
    # old log-prob 0, so ρ = exp(logp); ε = 0.2 -> clip range [0.8, 1.2]
    ratios = [1.5, 0.5, 0.5, 1.5, 1.0]
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 2.0])
    logp = torch.tensor([[log(x)] for x in ratios])
    loss, stats = clipped_policy_loss(logp, torch.zeros(5, 1), adv, torch.ones(5, 1))
    # A=+1, ρ=1.5: −min(1.5, 1.2) = −1.2     A=+1, ρ=0.5: −min(0.5, 0.8) = −0.5
    # A=−1, ρ=0.5: −min(−0.5, −0.8) = 0.8    A=−1, ρ=1.5: −min(−1.5, −1.2) = 1.5
    # A=+2, ρ=1:   −2
    torch.testing.assert_close(loss.flatten(), torch.tensor([-1.2, -0.5, 0.8, 1.5, -2.0]))
    # clipped low: ρ < 0.8 and A < 0 -> row 2; high: ρ > 1.2 and A > 0 -> row 0; region: 2 of 5
    assert stats.clip_frac_low.item() == pytest.approx(1 / 5)
    assert stats.clip_frac_high.item() == pytest.approx(1 / 5)
    assert stats.clip_frac_region.item() == pytest.approx(2 / 5)


def test_clip_higher_and_dual_clip() -> None:
    logp = torch.tensor([[log(1.5)], [log(5.0)]])
    adv = torch.tensor([1.0, -1.0])
    # DAPO clip-higher ε_high = 0.28: A=+1, ρ=1.5 -> −min(1.5, 1.28) = −1.28
    # A=−1, ρ=5: −min(−5, −1.28) = 5; dual clip c=3 caps it at −c·A = 3
    loss, _ = clipped_policy_loss(logp, torch.zeros(2, 1), adv, torch.ones(2, 1), eps_high=0.28, dual_clip=3.0)
    torch.testing.assert_close(loss.flatten(), torch.tensor([-1.28, 3.0]))
    loss, _ = clipped_policy_loss(logp, torch.zeros(2, 1), adv, torch.ones(2, 1), eps_high=0.28)
    torch.testing.assert_close(loss.flatten(), torch.tensor([-1.28, 5.0]))


def test_log_ratio_is_clamped() -> None:
    # log ratio 100 would overflow exp in float32; clamped to 20 -> ρ = e^20, A=−1 -> loss e^20
    loss, _ = clipped_policy_loss(torch.tensor([[100.0]]), torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1))
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss, torch.tensor([[math.exp(20.0)]]))


def test_kl_estimators_hand_values() -> None:
    # logp = −1, ref = −2: log ratio = 1 -> k1 = 1, k2 = ½·1² = 0.5, k3 = e^{−1} − (−1) − 1 = e^{−1}
    logp, ref = torch.tensor([[-1.0]]), torch.tensor([[-2.0]])
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(1.0)
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(math.exp(-1.0))
    # k3 is zero when the policies agree and never negative
    assert kl_penalty(ref, ref, "k3").item() == 0.0
    assert (kl_penalty(torch.randn(50, 4), torch.randn(50, 4), "k3") >= 0).all()


def test_approx_kl_old_estimates_kl_from_old_to_new() -> None:
    # KL(π_old ‖ π_θ) from tokens sampled by π_old: k3 = r − 1 − log r with r = π_θ/π_old.
    # old = 0, logp = log 2 -> r = 2: 2 − 1 − log 2 ≈ 0.3069 (the swapped estimator gives ½ − 1 + log 2 ≈ 0.1931)
    _, stats = clipped_policy_loss(torch.tensor([[log(2.0)]]), torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1))
    assert stats.approx_kl_old.item() == pytest.approx(1.0 - math.log(2.0))
    # Monte Carlo over a categorical: the mean of k3 over samples of π_old is KL(π_old ‖ π_θ)
    gen = torch.Generator().manual_seed(0)
    old_p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    new_p = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    tokens = torch.multinomial(old_p, 200_000, replacement=True, generator=gen)  # [M] drawn from π_old
    old, new = old_p.log()[tokens][None], new_p.log()[tokens][None]  # [1, M]
    _, stats = clipped_policy_loss(new, old, torch.ones(1), torch.ones_like(new))
    exact = float((old_p * (old_p / new_p).log()).sum())  # KL(π_old ‖ π_θ) ≈ 0.2749
    assert stats.approx_kl_old.item() == pytest.approx(exact, abs=5e-3)


def test_beta_adds_kl_per_token() -> None:
    # ρ = 1 (logp = old = −1), A = 0 -> surrogate 0; β·k3 with ref = −2: 0.1·e^{−1}
    logp = torch.tensor([[-1.0]])
    loss, stats = clipped_policy_loss(
        logp, logp.clone(), torch.zeros(1), torch.ones(1, 1), ref_logp=torch.tensor([[-2.0]]), beta=0.1
    )
    assert loss.item() == pytest.approx(0.1 * math.exp(-1.0))
    assert stats.kl_ref.item() == pytest.approx(math.exp(-1.0))


# ---- aggregation -------------------------------------------------------------------------------

LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]], dtype=torch.float64)  # the 9s are padding
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


def test_aggregation_hand_values() -> None:
    # seq sums 6 and 4, lengths 3 and 1
    # seq_mean_token_mean: mean(6/3, 4/1) = 3;  token_mean: (6+4)/(3+1) = 2.5
    # seq_mean_token_sum_norm with L_max = 5: (6+4)/(N·L_max) = 10/10 = 1
    assert agg(LOSS, MASK, "seq_mean_token_mean").item() == pytest.approx(3.0)
    assert agg(LOSS, MASK, "token_mean").item() == pytest.approx(2.5)
    assert agg(LOSS, MASK, "seq_mean_token_sum_norm", max_len=5).item() == pytest.approx(1.0)


def test_lambda_aggregation_hand_value() -> None:
    # one group of G = 2, lengths [3, 1]: mean 2, sample std √2 -> z = ±1/(√2 + eps)
    # h = 1 ± r_len·z; λ = 1: f = 2·softmax(h) -> L = (f_0·6 + f_1·4) / (3 + 1)
    z = 1.0 / (math.sqrt(2.0) + EPS)
    h0, h1 = 1 + R_LEN * z, 1 - R_LEN * z
    f0 = 2 * math.exp(h0) / (math.exp(h0) + math.exp(h1))
    f1 = 2 - f0
    expected = (f0 * 6 + f1 * 4) / 4
    lam = torch.tensor(1.0, dtype=torch.float64)
    assert agg(LOSS, MASK, "lambda", group_size=2, lam=lam).item() == pytest.approx(expected, abs=1e-12)
    # λ = 2 raises h to the power 2 first
    f0 = 2 * math.exp(h0**2) / (math.exp(h0**2) + math.exp(h1**2))
    expected2 = (f0 * 6 + (2 - f0) * 4) / 4
    got2 = agg(LOSS, MASK, "lambda", group_size=2, lam=torch.tensor(2.0, dtype=torch.float64))
    assert got2.item() == pytest.approx(expected2, abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_lambda_zero_is_token_mean(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    loss = torch.randn(12, 7, generator=gen, dtype=torch.float64)
    mask = (torch.rand(12, 7, generator=gen) > 0.3).long()
    mask[:, 0] = 1
    lam0 = agg(loss, mask, "lambda", group_size=4, lam=torch.tensor(0.0, dtype=torch.float64))
    torch.testing.assert_close(lam0, agg(loss, mask, "token_mean"), rtol=1e-12, atol=1e-12)


def test_lambda_receives_a_gradient() -> None:
    lam = torch.nn.Parameter(torch.tensor(0.5))
    loss = agg(LOSS.float(), MASK, "lambda", group_size=2, lam=lam)
    loss.backward()
    assert lam.grad is not None and torch.isfinite(lam.grad) and lam.grad.abs() > 0


@pytest.mark.parametrize("mode", MODES)
def test_micro_batches_with_batch_coefficients_equal_full_batch(mode: str) -> None:
    gen = torch.Generator().manual_seed(0)
    loss = torch.randn(8, 5, generator=gen, dtype=torch.float64)
    mask = (torch.rand(8, 5, generator=gen) > 0.4).long()
    mask[:, 0] = 1
    kw = {"group_size": 4, "lam": torch.tensor(0.7, dtype=torch.float64), "max_len": 5}
    full = agg(loss, mask, mode, **kw)
    coef = sequence_coefficients(mask.sum(1).double(), mode, **kw)
    parts = [aggregate(loss[i:i + 3], mask[i:i + 3], coef[i:i + 3]) for i in (0, 3, 6)]
    torch.testing.assert_close(sum(parts), full, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_dropped_groups_leave_every_normaliser(mode: str) -> None:
    """DAPO dynamic sampling: a batch with a dropped group (rows masked, keep False) gives the loss of the
    kept groups alone — the dropped rows count neither in N nor in Σ|o| (issue 12, item 2)."""
    gen = torch.Generator().manual_seed(3)
    loss = torch.randn(12, 5, generator=gen, dtype=torch.float64)
    mask = (torch.rand(12, 5, generator=gen) > 0.3).long()
    mask[:, 0] = 1
    keep = torch.tensor([False] * 4 + [True] * 8)  # groups of 4: the first is dropped
    dropped = mask * keep[:, None]  # [N, L] the loss mask the step builds
    kw = {"group_size": 4, "lam": torch.tensor(0.7, dtype=torch.float64), "max_len": 5}
    lengths = dropped.sum(1).double()
    coef = sequence_coefficients(lengths, mode, counts=batch_counts(lengths, keep), **kw)  # type: ignore[arg-type]
    got = aggregate(loss, dropped, coef)
    torch.testing.assert_close(got, agg(loss[4:], mask[4:], mode, **kw), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_ranks_with_mean_counts_average_to_the_full_batch_gradient(mode: str) -> None:
    """DDP: each rank divides by the counts over all ranks / world size; DDP's mean of the ranks' gradients
    is then the full batch's gradient, for the per-token losses and for λ (issue 12, item 3)."""
    gen = torch.Generator().manual_seed(5)
    logp = torch.randn(8, 6, generator=gen, dtype=torch.float64).requires_grad_()
    mask = (torch.rand(8, 6, generator=gen) > 0.4).long()
    mask[:, 0] = 1
    mask[:4, 3:] = 0  # rank 0 has fewer tokens than rank 1: per-rank normalisers would differ
    lam = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    kw = {"group_size": 2, "lam": lam, "max_len": 6}
    per_token = -logp * torch.linspace(-1, 1, 8, dtype=torch.float64)[:, None]  # [N, L]
    inputs = (logp, lam) if mode == "lambda" else (logp,)
    full = torch.autograd.grad(agg(per_token, mask, mode, **kw), inputs, retain_graph=True)
    ranks = [slice(0, 4), slice(4, 8)]
    counts = [batch_counts(mask[r].sum(1).double()) for r in ranks]
    mean = BatchCounts(*(sum(c[i] for c in counts) / 2 for i in range(2)))
    grads = []
    for r in ranks:
        coef = sequence_coefficients(mask[r].sum(1).double(), mode, counts=mean, **kw)  # type: ignore[arg-type]
        grads.append(torch.autograd.grad(aggregate(per_token[r], mask[r], coef), inputs, retain_graph=True))
    for whole, *parts in zip(full, *grads, strict=True):
        torch.testing.assert_close(sum(parts) / 2, whole, rtol=1e-12, atol=1e-12)


# ---- gradients ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kl", ["k1", "k2", "k3"])
def test_loss_gradient_matches_gradcheck(mode: str, kl: str) -> None:
    gen = torch.Generator().manual_seed(1)
    old = torch.randn(4, 5, generator=gen, dtype=torch.float64) - 1
    # ratios e^{±0.05}: inside the clip range, away from its kinks, so the loss is smooth here
    logp = (old + 0.1 * torch.rand(4, 5, generator=gen, dtype=torch.float64) - 0.05).requires_grad_()
    ref = old - 0.3
    adv = torch.tensor([1.0, -0.5, 0.25, -1.0], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    lam = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)

    def f(lp: torch.Tensor, la: torch.Tensor) -> torch.Tensor:
        per_token, _ = clipped_policy_loss(lp, old, adv, mask, ref_logp=ref, beta=0.04, kl_estimator=kl)
        return agg(per_token, mask, mode, group_size=2, lam=la, max_len=5)

    assert torch.autograd.gradcheck(f, (logp, lam))


def test_policy_gradient_at_ratio_one() -> None:
    """With μ = 1 (logp = old in value) d loss / d logp_{i,t} = −A_i · c_i on unmasked tokens."""
    logp = torch.randn(3, 4, dtype=torch.float64).requires_grad_()
    adv = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    per_token, _ = clipped_policy_loss(logp, logp.detach(), adv, mask)
    agg(per_token, mask, "seq_mean_token_mean").backward()
    lengths = mask.sum(1).double()
    expected = -adv[:, None] / (3 * lengths[:, None]) * mask  # c_i = 1/(N·|o_i|)
    torch.testing.assert_close(logp.grad, expected)


# ---- bad input ---------------------------------------------------------------------------------

def test_errors_are_clear() -> None:
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="same"):
        clipped_policy_loss(z, z, torch.zeros(2), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"advantages \(3,\) must be \[N\]"):
        clipped_policy_loss(z, z, torch.zeros(3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        clipped_policy_loss(z, z, torch.zeros(2), torch.ones(2, 3), dual_clip=0.5)
    with pytest.raises(ValueError, match="needs ref_logp"):
        clipped_policy_loss(z, z, torch.zeros(2), torch.ones(2, 3), beta=0.1)
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_penalty(z, z, "k4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown aggregation mode 'mean'"):
        agg(z, torch.ones(2, 3), "mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="differ"):
        agg(z, torch.ones(2, 4), "token_mean")
    with pytest.raises(ValueError, match="needs group_size and the learnable scalar lam"):
        agg(z, torch.ones(2, 3), "lambda")
    with pytest.raises(ValueError, match="needs max_len"):
        agg(z, torch.ones(2, 3), "seq_mean_token_sum_norm")
