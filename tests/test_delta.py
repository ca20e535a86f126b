"""DelTA (lampo_pl/delta.py) against an independent loop over tokens of /work/shared/docs/DELTA.md, in float64.

The loop follows the reference (``RUCBM/DelTA``, ``verl-DelTA/verl/workers/actor/dp_actor.py``,
``compute_log_prob_h``, version "Normal") literally: it forms every v = (1 − p)·h, takes squared Euclidean
distances to the two centroids, margins d− − d+ and d+ − d−, and γ as sqrt(max(E[M²] − E[M]², ε)); the
code under test uses none of these forms (projections h·μ, a centred variance).
"""

from __future__ import annotations

import math

import pytest
import torch

from lampo_pl.delta import delta_advantages


def loop_delta(
    adv: list[float],
    hidden: list[list[list[float]]],
    logp: list[list[float]],
    mask: list[list[float]],
    rounds: int = 1,
    lo: float = 0.8,
    hi: float = 1.2,
) -> list[list[float]]:
    """DELTA.md steps 1-7, plain Python over tokens."""
    eps = 1e-8
    tokens = [(i, t) for i in range(len(adv)) for t in range(len(mask[i])) if mask[i][t] > 0]
    dim = len(hidden[0][0])
    v = {(i, t): [(1.0 - math.exp(logp[i][t])) * x for x in hidden[i][t]] for i, t in tokens}

    def centroid(weight: dict[tuple[int, int], float]) -> list[float]:
        total = sum(weight.values())
        sums = [sum(weight[k] * v[k][d] for k in tokens) for d in range(dim)]
        return [s / max(total, eps) for s in sums]

    def dist(x: list[float], mu: list[float]) -> float:
        return sum((a - b) ** 2 for a, b in zip(x, mu, strict=True))

    def margin(k: tuple[int, int], mu_p: list[float], mu_n: list[float]) -> float:
        d_pos, d_neg = dist(v[k], mu_p), dist(v[k], mu_n)
        return d_neg - d_pos if adv[k[0]] > 0 else d_pos - d_neg

    def gamma(sign: int, mu_p: list[float], mu_n: list[float]) -> float:
        ms = [margin(k, mu_p, mu_n) for k in tokens if (adv[k[0]] > 0 if sign > 0 else adv[k[0]] < 0)]
        count = max(len(ms), 1)
        mean = sum(ms) / count
        return math.sqrt(max(sum(m * m for m in ms) / count - mean**2, eps))

    def sigmoid(x: float) -> float:  # stable for the huge M/γ of an empty side's γ = √ε
        return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))

    mu_p = centroid({k: max(adv[k[0]], 0.0) for k in tokens})
    mu_n = centroid({k: max(-adv[k[0]], 0.0) for k in tokens})
    g_p, g_n = gamma(1, mu_p, mu_n), gamma(-1, mu_p, mu_n)
    for _ in range(rounds):
        r = {k: sigmoid(margin(k, mu_p, mu_n) / (g_p if adv[k[0]] > 0 else g_n)) for k in tokens}
        new_p = centroid({k: max(adv[k[0]], 0.0) * r[k] for k in tokens})
        new_n = centroid({k: max(-adv[k[0]], 0.0) * r[k] for k in tokens})
        g_p, g_n = gamma(1, mu_p, mu_n), gamma(-1, mu_p, mu_n)  # margins before this update
        mu_p, mu_n = new_p, new_n
    omega = {}
    for k in tokens:
        a = adv[k[0]]
        if a == 0:
            omega[k] = lo
        else:
            omega[k] = lo + (hi - lo) * sigmoid(margin(k, mu_p, mu_n) / (g_p if a > 0 else g_n))
    c = len(tokens) / max(sum(omega.values()), 1e-8)
    out = [[0.0] * len(mask[i]) for i in range(len(adv))]
    for i, t in tokens:
        out[i][t] = c * omega[(i, t)] * adv[i]
    return out


def batch(adv: list[float], width: int = 5, dim: int = 4, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Ragged random batch: advantages [N], hidden [N, L, H], log-probs [N, L] (<= 0), mask [N, L] (padding right)."""
    gen = torch.Generator().manual_seed(seed)
    n = len(adv)
    lengths = torch.randint(1, width + 1, (n,), generator=gen)  # [N]
    mask = (torch.arange(width)[None, :] < lengths[:, None]).double()  # [N, L]
    hidden = torch.randn(n, width, dim, generator=gen, dtype=torch.float64)  # [N, L, H]
    hidden = hidden + 9.0 * (1 - mask)[..., None]  # garbage on padding: must not leak in
    logp = -torch.rand(n, width, generator=gen, dtype=torch.float64) * 3  # [N, L]
    return torch.tensor(adv, dtype=torch.float64), hidden, logp, mask


CASES = {
    # two groups of 4, GRPO-like advantages: both sides present
    "mixed": [1.2, -0.4, -0.4, -0.4, 0.9, 0.9, -0.9, -0.9],
    # a uniform group (a = 0) beside an informative one: zero advantages enter c only
    "uniform_group": [0.0, 0.0, 0.0, 0.0, 1.5, -0.5, -0.5, -0.5],
    # every group all-correct-but-one-better: no bad response at all (empty Q)
    "no_bad_side": [0.3, 0.7, 0.0, 1.1, 0.2, 0.0],
    # only negative advantages (empty P)
    "no_good_side": [-0.3, -1.0, 0.0, -0.2, -0.6, -0.1],
    # every group uniform: Â = 0 everywhere
    "all_uniform": [0.0] * 6,
    # LamPO-like unnormalised, unequal magnitudes
    "lampo_like": [0.05, -0.02, 0.31, -0.34, 0.7, -0.1, -0.3, -0.3],
}


@pytest.mark.parametrize("rounds", [0, 1, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_the_loop_over_tokens(case: str, rounds: int) -> None:
    adv, hidden, logp, mask = batch(CASES[case], seed=len(case) + rounds)
    out = delta_advantages(adv, hidden, logp, mask, rounds=rounds)
    expected = loop_delta(adv.tolist(), hidden.tolist(), logp.tolist(), mask.tolist(), rounds=rounds)
    torch.testing.assert_close(out.advantages, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    assert torch.isfinite(out.advantages).all()


def test_other_weight_range_matches_the_loop() -> None:
    adv, hidden, logp, mask = batch(CASES["mixed"], seed=3)
    out = delta_advantages(adv, hidden, logp, mask, rounds=2, weight_min=0.5, weight_max=2.0)
    expected = loop_delta(adv.tolist(), hidden.tolist(), logp.tolist(), mask.tolist(), rounds=2, lo=0.5, hi=2.0)
    torch.testing.assert_close(out.advantages, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-12)


def test_properties_sign_padding_and_self_normalisation() -> None:
    adv, hidden, logp, mask = batch(CASES["uniform_group"], seed=7)
    out = delta_advantages(adv, hidden, logp, mask)
    assert (out.advantages * (1 - mask)).abs().max() == 0  # padding stays 0
    signs = torch.sign(out.advantages)[mask > 0]
    assert torch.equal(signs, torch.sign(adv[:, None].expand_as(mask))[mask > 0])  # sign of a kept, 0 on a = 0
    omega = out.weights[mask > 0]
    assert float(omega.min()) >= 0.8 - 1e-12 and float(omega.max()) <= 1.2 + 1e-12
    # mean of c·ω over the tokens is 1 (step 7), uniform-group tokens included at ω = λ_min
    assert math.isclose(float((out.scale * omega).mean()), 1.0, rel_tol=1e-12)
    assert torch.all(out.weights[:4][mask[:4] > 0] == 0.8)


def test_float32_bf16_features_stay_close() -> None:
    """The step passes bf16 hidden states on a GPU (DELTA.md: bf16 is fine); the result stays near float64's."""
    adv, hidden, logp, mask = batch(CASES["mixed"], width=6, dim=8, seed=11)
    exact = delta_advantages(adv, hidden, logp, mask).advantages
    low = delta_advantages(adv.float(), hidden.to(torch.bfloat16), logp.float(), mask.float()).advantages
    assert low.dtype == torch.float32
    torch.testing.assert_close(low.double(), exact, rtol=0.05, atol=0.02)


def test_bad_shapes_are_refused() -> None:
    adv, hidden, logp, mask = batch(CASES["mixed"])
    with pytest.raises(ValueError, match="DelTA needs advantages"):
        delta_advantages(adv[:-1], hidden, logp, mask)
    with pytest.raises(ValueError, match="weight_min <= weight_max"):
        delta_advantages(adv, hidden, logp, mask, weight_min=1.3, weight_max=1.2)
