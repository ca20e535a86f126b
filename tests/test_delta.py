"""DelTA (lampo_pl/delta.py) against an independent loop over tokens of /work/shared/docs/DELTA.md, in float64.

The loop follows the reference (``RUCBM/DelTA``, ``verl-DelTA/verl/workers/actor/dp_actor.py``,
``compute_log_prob_h``, version "Normal") literally: it forms every v = (1 − p)·h, takes squared Euclidean
distances to the two centroids, margins d− − d+ and d+ − d−, and γ as sqrt(max(E[M²] − E[M]², ε)); the
code under test uses none of these forms (projections h·μ, a centred variance).
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from test_module import ScriptedReward, fit, make  # tests/ is on sys.path under pytest (no package)
from test_rollout import _boost_eos

import lampo_pl.delta_step as delta_step
from lampo_pl.ablation.methods import METHODS, binary_arm, method_preset
from lampo_pl.delta import delta_advantages
from lampo_pl.logprobs import position_ids_from_mask
from lampo_pl.module import LamPOModule
from lampo_pl.policy_losses import policy_loss
from lampo_pl.rollout import stop_token_ids
from lampo_pl.settings import ComputeArgs, MethodArgs, SettingsError
from lampo_pl.trajectory import Trajectory, micro_batches


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


# ---- in the training step ---------------------------------------------------------------------------------------


def count_teacher_forced_passes(module: LamPOModule) -> list[int]:
    """A list that grows by one per decoder call with ``use_cache=False`` (π_old, π_ref and loss micro-batches;
    the sampler's decode steps use the cache and are not counted)."""
    assert module.policy_model is not None
    calls: list[int] = []

    def hook(mod: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if kwargs.get("use_cache") is False:
            calls.append(1)

    module.policy_model.get_base_model().get_decoder().register_forward_pre_hook(hook, with_kwargs=True)
    return calls


@pytest.mark.parametrize(
    ("estimator", "iters", "engine", "extra"),
    [("grpo", 2, "native", 0), ("lampo", 2, "native", 0), ("grpo", 1, "native", 0), ("lampo", 1, "native", 0),
     ("grpo", 1, "generate", 2), ("lampo", 1, "generate", 2)],
)  # fmt: skip
def test_delta_takes_its_features_from_a_pass_the_step_runs(
    estimator: str, iters: int, engine: str, extra: int, caplog: pytest.LogCaptureFixture
) -> None:
    """DelTA on vs off: the same teacher-forced forwards at μ > 1 (π_old runs anyway) and at μ = 1 with the native
    sampler (h and p recorded while decoding). Only a sampler without head inputs (``generate``) at μ = 1 costs the
    one no-grad π_old pass the μ = 1 identity skips (2 micro-batches here), said in one line at set-up."""
    counts = []
    for delta in (False, True):
        module = make(estimator, beta=0.0, iters=iters, delta=delta)
        module.sampling = replace(module.sampling, engine=engine)  # type: ignore[arg-type]
        module.configure_model()
        calls = count_teacher_forced_passes(module)
        caplog.clear()
        fit(module, steps=1)
        counts.append(len(calls))
    assert counts[1] == counts[0] + extra, counts
    assert ("one extra no-grad π_old forward" in caplog.text) == bool(extra), caplog.text


class SpyLoss(ScriptedReward):
    """Keeps the advantages each micro-batch loss received and the step's π_old inputs."""

    def micro_batch_loss(self, view: Trajectory, coefficients: torch.Tensor):  # type: ignore[no-untyped-def]
        self.seen_advantages = [*getattr(self, "seen_advantages", []), (view.advantages, view.loss_mask)]
        return super().micro_batch_loss(view, coefficients)


def test_step_feeds_the_loss_delta_of_the_estimators_advantage(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loss gets, per micro-batch, the rows of delta_advantages(estimator's [N] advantages, h, log π_old), with h
    equal to an independent ``output_hidden_states`` pass: the hook's placement of chunked, micro-batched head
    inputs is right. lr = 0 keeps the policy at π_old, so the pass after the step sees what the step saw."""
    seen: dict[str, torch.Tensor] = {}
    original = delta_step.delta_advantages

    def spy(adv, hidden, logp, mask, **kw):  # type: ignore[no-untyped-def]
        seen.update(adv=adv, hidden=hidden, logp=logp, mask=mask)
        return original(adv, hidden, logp, mask, **kw)

    monkeypatch.setattr(delta_step, "delta_advantages", spy)
    module = make("grpo", beta=0.0, iters=2, lr=0.0, delta=True, cls=SpyLoss)
    # several head chunks per micro-batch; no preflight, whose micro-batch pass would be the first the spy sees
    module.compute = ComputeArgs(micro_batch_size=4, logprob_chunk=5, preflight=False)
    module.configure_model()
    _boost_eos(module.policy_model, stop_token_ids(module.policy_model, module.tokenizer)[0])  # ragged responses
    fit(module, steps=1)
    rollout = module.seen_rollout
    order = torch.cat(micro_batches(Trajectory.of(rollout), 4))
    assert not torch.equal(order, torch.arange(order.numel())), "rows must be reordered for the test to mean much"
    assert module.policy_model is not None
    with torch.no_grad():
        module.policy_model.eval()
        out = module.policy_model(
            input_ids=rollout.input_ids,
            attention_mask=rollout.attention_mask,
            position_ids=position_ids_from_mask(rollout.attention_mask),
            output_hidden_states=True,
        )
    p, width = rollout.prompt_len, rollout.input_ids.shape[1]
    expected_h = out.hidden_states[-1][:, p - 1 : width - 1]  # [N, L, H] the positions that predict the response
    mask = rollout.response_mask > 0
    torch.testing.assert_close(seen["hidden"][mask], expected_h[mask], rtol=1e-5, atol=1e-5)
    assert torch.equal(seen["mask"], rollout.response_mask.to(seen["mask"].dtype))
    expected = original(seen["adv"], seen["hidden"], seen["logp"], seen["mask"]).advantages  # [N, L]
    views = module.seen_advantages[: len(module.seen_advantages) // 2]  # the first of the μ = 2 passes
    for rows, (adv, _) in zip(micro_batches(Trajectory.of(rollout), 4), views, strict=True):
        assert adv.shape == (len(rows), adv.shape[1])  # [n, l]: per token
        torch.testing.assert_close(adv, expected[rows, : adv.shape[1]].to(adv.dtype))
    assert bool((expected[mask] != 0).any())


def test_smoke_fit_with_delta_logs_its_scale() -> None:
    for estimator in ("grpo", "lampo"):
        module = make(estimator, beta=0.0, delta=True)
        trainer = fit(module, steps=2)
        assert trainer.global_step == 2
        scale = float(trainer.callback_metrics["train/delta_scale"])
        assert math.isfinite(scale) and scale > 0
        # the step's record (what the ablation's run files and samples keep) holds them too, not only the logger
        assert module.last_step.metrics["delta_scale"] == scale and "delta_weight_std" in module.last_step.metrics
        assert math.isfinite(float(trainer.callback_metrics["train/loss"]))


def test_delta_settings_are_checked() -> None:
    with pytest.raises(SettingsError, match=r"delta_weight_min=-0\.1"):
        MethodArgs(delta=True, delta_weight_min=-0.1)
    with pytest.raises(SettingsError, match=r"delta_weight_max=0\.5"):
        MethodArgs(delta=True, delta_weight_max=0.5)
    with pytest.raises(SettingsError, match=r"delta_rounds=-1"):
        MethodArgs(delta=True, delta_rounds=-1)


@pytest.mark.parametrize("kind", ["clip", "gspo", "cispo", "sapo"])
def test_every_policy_loss_takes_per_token_advantages(kind: str) -> None:
    """DelTA composes with every surrogate: [N, L] advantages equal along each row reproduce the [N] loss; under
    clip, one token's value moves only that token's loss, by PPO-clip's formula; a wrong shape is refused."""
    gen = torch.Generator().manual_seed(0)
    logp = -torch.rand(3, 4, generator=gen, dtype=torch.float64)
    old = -torch.rand(3, 4, generator=gen, dtype=torch.float64)
    mask, adv = torch.ones(3, 4, dtype=torch.float64), torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    seq, _ = policy_loss(logp, old, adv, mask, kind=kind)  # type: ignore[arg-type]
    tok, _ = policy_loss(logp, old, adv[:, None].expand(3, 4).clone(), mask, kind=kind)  # type: ignore[arg-type]
    torch.testing.assert_close(tok, seq)
    with pytest.raises(ValueError, match=r"must be \[N\] or \[N, L\]"):
        policy_loss(logp, old, adv[:2], mask, kind=kind)  # type: ignore[arg-type]
    if kind != "clip":
        return
    per_token = adv[:, None].expand(3, 4).clone()
    per_token[1, 2] = 3.0
    moved, _ = policy_loss(logp, old, per_token, mask)
    assert (moved != seq).nonzero().tolist() == [[1, 2]]
    ratio = torch.exp(logp - old)[1, 2]
    torch.testing.assert_close(moved[1, 2], -torch.minimum(ratio * 3.0, ratio.clamp(0.8, 1.2) * 3.0))  # A = 3


def test_ablation_arms() -> None:
    """``delta`` is the paper's GRPO + DelTA (configs/qwen3-1.7b-delta.yaml, checked by test_ablation); ``+delta``
    turns DelTA on over any base's advantage."""
    arm = method_preset("lampo+delta")
    assert arm.method == replace(METHODS["lampo"].method, delta=True) and arm.label == "LamPO + DelTA"
    assert arm.base == "lampo" and not arm.density
    both = method_preset("lampo+delta+rouge@tau=2")
    assert both.method == replace(METHODS["lampo"].method, delta=True, tau=2.0) and both.density
    assert both.label == "LamPO + DelTA + ROUGE-L τ=2"
    paper = method_preset("delta")
    assert paper.method.delta and paper.method.estimator == "grpo" and paper.label == "GRPO + DelTA"
    assert binary_arm("lampo+delta+rouge") == "lampo+delta"
    with pytest.raises(ValueError, match="unknown ablation method"):
        method_preset("lampo+rouge+delta")
