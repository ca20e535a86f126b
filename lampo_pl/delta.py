"""DelTA: token-level credit assignment that reshapes any sequence advantage into a per-token one.

DelTA ("Discriminative Token Credit Assignment for RLVR", Zhang, Wu, Lin, arXiv 2605.21467; reference
implementation: GitHub ``RUCBM/DelTA``, ``verl-DelTA/verl/workers/actor/dp_actor.py``,
``compute_log_prob_h``, version "Normal") replaces the sequence advantage a_i by

    Â_{i,t} = c · ω_{i,t} · a_i,

with ω large for tokens whose gradient feature v_{i,t} = (1 − p_{i,t}) · h_{i,t} (the gradient of log p
with respect to the sampled token's output-embedding row) lies nearer the advantage-weighted centroid of
the batch's good responses than of its bad ones. ``/work/shared/docs/DELTA.md`` restates the reference
step by step; the numbered steps below follow it. Nothing here depends on how a_i was estimated: GRPO
(the paper's method), Dr. GRPO, RLOO or LamPO all give an ``[N]`` advantage to reshape.

How this port differs from the reference, and why:
1. One set of hidden states, taken once (from the π_old pass the step already runs), instead of K + 3
   forwards; v and the ``[N, L, H]`` distance tensors are never formed: with g± = h·μ± the score is
   s = (1 − p)(g+ − g−) + b, and each centroid is one hᵀ·weights product (DELTA.md "Cost").
2. γ is the side's population standard deviation computed around its mean, not as E[M²] − E[M]²
   (the same number without float32 cancellation); both are floored at √ε.
3. The reference's dead code (top-20 % mask, ρ-gate, per-dimension variance replaced by 1) is left out.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

EPS = 1e-8  # the reference's ε: centroid denominators and the γ floor (√ε)
SCALE_FLOOR = 1e-8  # c = Σm / max(Σωm, 1e-8) (reference: ``wht_sum.clamp_min(1e-8)``)
ROUNDS = 1  # K, centroid refinement rounds (the paper's run_DelTA.sh)
WEIGHT_MIN = 0.8  # λ_min (run_DelTA.sh)
WEIGHT_MAX = 1.2  # λ_max (run_DelTA.sh)


class DeltaOutput(NamedTuple):
    """DelTA's result for one step batch.

    Attributes:
        advantages: ``[N, L]`` Â = c·ω·a on the masked tokens, 0 elsewhere.
        weights: ``[N, L]`` ω (before the scale c) on the masked tokens, 0 elsewhere.
        scale: scalar c = Σm / Σωm, the self-normalisation.
    """

    advantages: Tensor
    weights: Tensor
    scale: Tensor


def _work_dtype(hidden: Tensor) -> torch.dtype:
    """float64 for a float64 model (exactness tests), float32 otherwise (bf16 features are fine: DELTA.md)."""
    return torch.float64 if hidden.dtype == torch.float64 else torch.float32


def _weighted_sum(h: Tensor, weights: Tensor, chunk: int) -> Tensor:
    """Σ_t weights_t · h_t over token rows, chunked so no float32 copy of all of ``h`` is made. [T, H], [T] -> [H]"""
    total = weights.new_zeros(h.shape[1])  # [H]
    for start in range(0, h.shape[0], chunk):
        total += weights[start : start + chunk] @ h[start : start + chunk].to(weights.dtype)  # [H]
    return total


def _project(h: Tensor, vectors: Tensor, chunk: int) -> Tensor:
    """h · vectors, chunked over token rows. [T, H], [H, k] -> [T, k]"""
    parts = [h[start : start + chunk].to(vectors.dtype) @ vectors for start in range(0, h.shape[0], chunk)]
    return torch.cat(parts) if parts else vectors.new_zeros(0, vectors.shape[1])  # [T, k]


def _side_std(margins: Tensor, side: Tensor) -> Tensor:
    """Population std of ``margins`` over the tokens of one side, floored at √ε (0 tokens: √ε). [T], [T] -> []"""
    count = side.sum().clamp(min=1.0)
    mean = (margins * side).sum() / count
    var = (((margins - mean) * side) ** 2).sum() / count
    return var.clamp(min=EPS).sqrt()


def delta_advantages(
    advantages: Tensor,
    hidden: Tensor,
    logprobs: Tensor,
    mask: Tensor,
    *,
    rounds: int = ROUNDS,
    weight_min: float = WEIGHT_MIN,
    weight_max: float = WEIGHT_MAX,
    chunk: int = 4096,
) -> DeltaOutput:
    """DelTA's per-token advantage ``Â = c·ω·a`` from a per-sequence advantage (DELTA.md steps 1-7).

    Statistics are pooled over every masked token of the batch given (the reference pools the step batch
    of one data-parallel rank); groups enter only through ``advantages``. Responses with a > 0 form the
    good side P, a < 0 the bad side Q, a = 0 (uniform groups) neither: they get ω = λ_min and Â = 0 but
    count in c. An empty side has a zero centroid and γ = √ε; nothing is NaN.

    Args:
        advantages: ``[N]`` one advantage per response, from any estimator (a constant of the step).
        hidden: ``[N, L, H]`` the hidden state fed to the output head at the position that predicts each
            response token (π_old's, no gradient); any float dtype, padding rows arbitrary.
        logprobs: ``[N, L]`` log π_old of the sampled tokens at the sampling temperature.
        mask: ``[N, L]`` 1 on the tokens that count (the loss mask), 0 on padding.
        rounds: K, centroid refinement rounds (0: the initial centroids).
        weight_min, weight_max: λ_min <= λ_max, the range of ω.
        chunk: Token rows per matmul (bounds the float32 copy of ``hidden``).

    Returns:
        ``DeltaOutput`` (Â ``[N, L]``, ω ``[N, L]``, c).
    """
    n, width = mask.shape
    if advantages.shape != (n,) or logprobs.shape != (n, width) or hidden.shape[:2] != (n, width):
        raise ValueError(
            f"DelTA needs advantages [N], hidden [N, L, H], logprobs and mask [N, L]; got "
            f"{tuple(advantages.shape)}, {tuple(hidden.shape)}, {tuple(logprobs.shape)}, {tuple(mask.shape)}"
        )
    if rounds < 0 or not 0 <= weight_min <= weight_max:
        raise ValueError(
            f"DelTA needs rounds >= 0 and 0 <= weight_min <= weight_max; got {rounds}, {weight_min}, {weight_max}"
        )
    work = _work_dtype(hidden)
    valid = mask > 0  # [N, L]
    h = hidden.detach()[valid]  # [T, H] the masked tokens only (storage dtype kept)
    a = advantages.detach().to(work)[:, None].expand(n, width)[valid]  # [T]
    q = 1.0 - logprobs.detach().to(work)[valid].exp()  # [T] 1 − p: v = q·h (step 1)
    good, bad = (a > 0).to(work), (a < 0).to(work)  # [T] P, Q

    def centroid(weights: Tensor) -> Tensor:  # [T] -> [H], μ = Σ w v / max(Σ w, ε)  (steps 2 and 5)
        return _weighted_sum(h, weights * q, chunk) / weights.sum().clamp(min=EPS)

    def margins(mu_good: Tensor, mu_bad: Tensor) -> Tensor:  # -> [T], M = 2s on P, −2s on Q (step 3)
        g = _project(h, torch.stack([mu_good, mu_bad], dim=1), chunk)  # [T, 2] h·μ±
        bias = -0.5 * (mu_good.square().sum() - mu_bad.square().sum())  # b
        score = q * (g[:, 0] - g[:, 1]) + bias  # [T] s = W·v + b with W = μ+ − μ−
        return 2.0 * score * (good - bad)  # [T] (0 on Z, never read there)

    def gammas(m: Tensor) -> Tensor:  # [T] per-token temperature γ+ on P, γ− elsewhere (step 4)
        return torch.where(good > 0, _side_std(m, good), _side_std(m, bad))

    strength = a.abs()  # [T] |a|
    mu_good, mu_bad = centroid(strength * good), centroid(strength * bad)
    m = margins(mu_good, mu_bad)  # [T]
    gamma = gammas(m)  # [T]
    for _ in range(rounds):  # step 5: re-weight by σ(M/γ); γ from the margins before this update (the lag)
        r = torch.sigmoid(m / gamma)  # [T]
        mu_good, mu_bad = centroid(strength * r * good), centroid(strength * r * bad)
        gamma = gammas(m)
        m = margins(mu_good, mu_bad)
    side = good + bad  # [T] 1 on P ∪ Q
    omega = weight_min + (weight_max - weight_min) * torch.sigmoid(m / gamma) * side  # [T] step 6 (λ_min on Z)
    scale = torch.tensor(float(a.numel()), dtype=work, device=a.device) / omega.sum().clamp(min=SCALE_FLOOR)  # c
    weights = torch.zeros(n, width, dtype=work, device=a.device)  # [N, L]
    weights[valid] = omega
    token_adv = torch.zeros_like(weights)  # [N, L]
    token_adv[valid] = scale * omega * a  # step 7
    return DeltaOutput(token_adv, weights, scale)
