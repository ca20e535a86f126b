"""GSPO, CISPO, SAPO, the four sampler-correction modes and high-entropy token selection, against TRL 1.16.

TRL's formulas are transcribed below from its installed source, ``trl/trainer/grpo_trainer.py`` of TRL 1.16.0
(line numbers of that file), and compared with ours in float64 on random ragged batches: loss values and
the gradients with respect to log π_θ. Then each new setting trains for one step on the tiny model.
"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch import Tensor

from lampo_pl.data.datamodule import ProblemDataModule
from lampo_pl.data.record import Problem
from lampo_pl.losses import aggregate, sequence_coefficients
from lampo_pl.mismatch import MismatchMeter, sampler_correction_weights
from lampo_pl.module import LamPOModule
from lampo_pl.policy_losses import high_entropy_mask, policy_loss
from lampo_pl.rewards import RewardBatch
from lampo_pl.rollout import Rollout, SamplingParams
from lampo_pl.settings import ComputeArgs, MethodArgs, OptimArgs, SettingsError

N, L_MAX = 7, 9
MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


# ---- TRL 1.16, transcribed ------------------------------------------------------------------------


def trl_compute_loss(
    per_token_logps: Tensor,
    old_per_token_logps: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    loss_type: str,
    importance_sampling_level: str = "token",
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
    entropy_mask: Tensor | None = None,
    importance_sampling_ratio: Tensor | None = None,
    beta: float = 0.0,
    ref_per_token_logps: Tensor | None = None,
) -> Tensor:
    """``GRPOTrainer._compute_loss`` (grpo_trainer.py 3053-3175) on one process without gradient accumulation.

    ``use_bias_correction_kl=False`` (ours adds plain k3; docs/algorithms.md), no ``delta``, no off-policy mask.
    """
    if advantages.dim() == 1:  # 3055-3056
        advantages = advantages.unsqueeze(1)
    log_ratio = per_token_logps - old_per_token_logps  # 3083
    if importance_sampling_level == "token":  # 3084-3085
        log_importance_weights = log_ratio
    else:  # 3086-3088
        log_importance_weights = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        log_importance_weights = log_importance_weights.unsqueeze(-1)
    coef_1 = torch.exp(log_importance_weights)  # 3095
    if beta != 0.0:  # 3098-3102
        per_token_kl = torch.exp(ref_per_token_logps - per_token_logps) - (ref_per_token_logps - per_token_logps) - 1
    if loss_type == "cispo":  # 3109-3111
        clamped_ratios = torch.clamp(coef_1, max=epsilon_high).detach()
        per_token_loss = -clamped_ratios * advantages * per_token_logps
    elif loss_type in ["grpo", "bnpo", "dr_grpo", "dapo", "luspo"]:  # 3112-3120
        coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
        per_token_loss1 = coef_1 * advantages
        per_token_loss2 = coef_2 * advantages
        per_token_loss = -torch.min(per_token_loss1, per_token_loss2)
    elif loss_type == "sapo":  # 3121-3124
        temperatures = torch.where(advantages > 0, sapo_temperature_pos, sapo_temperature_neg)
        soft_coef_1 = torch.sigmoid(temperatures * (coef_1 - 1)) * 4 / temperatures
        per_token_loss = -soft_coef_1 * advantages
    if entropy_mask is not None:  # 3143-3144
        per_token_loss = per_token_loss * entropy_mask
    if importance_sampling_ratio is not None:  # 3146-3147
        per_token_loss = per_token_loss * importance_sampling_ratio
    if beta != 0.0:  # 3149-3150
        per_token_loss = per_token_loss + beta * per_token_kl
    if loss_type in ["grpo", "sapo"]:  # 3153-3154
        return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    # cispo, dapo: 3168-3174; num_items_in_batch is the batch's token count, one process, no accumulation
    return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)


def trl_importance_sampling_ratio(
    old_per_token_logps: Tensor,
    sampling_per_token_logps: Tensor,
    mask: Tensor,
    mode: str,
    clip_min: float | None,
    clip_max: float | None,
) -> Tensor:
    """``_generate_and_score_completions``, grpo_trainer.py 2660-2708 (the vLLM importance-sampling ratio)."""
    per_token_logps_diff = (old_per_token_logps - sampling_per_token_logps) * mask  # 2662
    per_token_logps_diff = torch.nan_to_num(per_token_logps_diff, nan=0.0)  # 2665
    sequence_level_is = mode in ["sequence_mask", "sequence_truncate"]  # 2667
    if sequence_level_is:  # 2668-2672
        logps_diff = per_token_logps_diff.sum(dim=-1, keepdim=True)
    else:
        logps_diff = per_token_logps_diff
    ratio = torch.exp(logps_diff)  # 2674
    if mode in ["sequence_truncate", "token_truncate"]:  # 2680-2685
        return torch.clamp(ratio, min=clip_min, max=clip_max)
    min_val = clip_min if clip_min is not None else -math.inf  # 2687-2696
    max_val = clip_max if clip_max is not None else math.inf
    invalid_mis_mask = (ratio < min_val) | (ratio > max_val)  # 2698-2700
    return ratio.masked_fill(invalid_mis_mask, value=0.0)  # 2701-2703


def trl_high_entropy_mask(entropies: Tensor, mask: Tensor, threshold: float) -> Tensor:
    """``get_high_entropy_mask``, grpo_trainer.py 1396-1418, one process (gather and padding are identities);
    called with ``threshold = 1 - top_entropy_quantile`` (3049-3050)."""
    local = entropies[mask.bool()].float()
    if local.numel() == 0:
        return torch.zeros_like(entropies, dtype=torch.bool)
    entropy_threshold = torch.quantile(local, threshold)
    masked_entropies = entropies * mask.float()
    entropy_mask = masked_entropies >= entropy_threshold
    return entropy_mask & mask.bool()


# ---- random ragged batches ----------------------------------------------------------------------


def batch(seed: int, *, drift: float = 0.3, token_adv: bool = False) -> dict[str, Tensor]:
    """Log-probs of a ragged float64 batch: one row with no loss tokens, some zero advantages, ratios that clip."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, L_MAX + 1, (N,), generator=gen)
    lengths[2] = 0  # a row with no loss tokens (an overlong-masked or dropped response)
    mask = (torch.arange(L_MAX)[None, :] < lengths[:, None]).double()  # [N, L]
    logp = -torch.rand(N, L_MAX, generator=gen, dtype=torch.float64) * 3  # [N, L]
    old = logp + drift * torch.randn(N, L_MAX, generator=gen, dtype=torch.float64)  # [N, L]
    shape = (N, L_MAX) if token_adv else (N,)
    adv = torch.randn(shape, generator=gen, dtype=torch.float64)
    if not token_adv:  # both signs on several rows, and a zero advantage (SAPO's τ_neg side)
        adv = adv.abs() * torch.tensor([1.0, 0.0, -1.0, 1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    sampler = old + 0.8 * torch.randn(N, L_MAX, generator=gen, dtype=torch.float64)  # [N, L]
    sampler[0, 0], sampler[3, 0] = old[0, 0] - 6, old[3, 0] + 6  # ratios e^±6: outside every bound, token or row
    return {"logp": logp, "old": old, "adv": adv, "mask": mask, "sampler": sampler,
            "entropy": torch.rand(N, L_MAX, generator=gen, dtype=torch.float64) * 4,
            "ref": logp + 0.2 * torch.randn(N, L_MAX, generator=gen, dtype=torch.float64)}  # fmt: skip


def ours(b: dict[str, Tensor], aggregation: str, **kw: object) -> tuple[Tensor, Tensor]:
    """Our loss (``policy_loss`` then ``aggregate``) and its gradient with respect to log π_θ."""
    logp = b["logp"].clone().requires_grad_(True)
    per_token, _ = policy_loss(logp, b["old"], b["adv"], b["mask"], **kw)  # type: ignore[arg-type]
    loss = aggregate(per_token, b["mask"], sequence_coefficients(b["mask"].sum(1), aggregation))  # type: ignore[arg-type]
    (grad,) = torch.autograd.grad(loss, logp)
    return loss.detach(), grad


def trl(b: dict[str, Tensor], **kw: object) -> tuple[Tensor, Tensor]:
    logp = b["logp"].clone().requires_grad_(True)
    loss = trl_compute_loss(logp, b["old"], b["adv"], b["mask"], **kw)  # type: ignore[arg-type]
    (grad,) = torch.autograd.grad(loss, logp)
    return loss.detach(), grad


def assert_same(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> None:
    torch.testing.assert_close(a[0], b[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a[1], b[1], rtol=1e-12, atol=1e-12)


# ---- the surrogates against TRL ------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("eps_low", "eps_high"), [(3e-4, 4e-4), (0.2, 0.28)])
def test_gspo_equals_trl_sequence_level_importance_sampling(seed: int, eps_low: float, eps_high: float) -> None:
    b = batch(seed, drift=0.002 if eps_low < 0.01 else 1.5)  # ratios on both sides of the clip range
    for aggregation, loss_type in (("seq_mean_token_mean", "grpo"), ("token_mean", "dapo")):
        mine = ours(b, aggregation, kind="gspo", eps_low=eps_low, eps_high=eps_high)
        theirs = trl(b, loss_type=loss_type, importance_sampling_level="sequence", epsilon_low=eps_low,
                     epsilon_high=eps_high)  # fmt: skip
        assert_same(mine, theirs)
    _, stats = policy_loss(b["logp"], b["old"], b["adv"], b["mask"], kind="gspo", eps_low=eps_low, eps_high=eps_high)
    assert 0 < float(stats.clip_frac_region) < 1  # the batch exercises both the clipped and the unclipped branch


@pytest.mark.parametrize("token_weights", [False, True])
def test_gspo_token_gradient_is_the_papers(token_weights: bool) -> None:
    """GSPO-token (Zheng et al. 2025, eqs. 13-14), with per-token advantages, a high-entropy selection and
    token-level correction weights w: inside the clip range ∂L/∂log π_t = −s_i·w_t·sel_t·A_{i,t}·m_t/(N·|o_i|)
    under the sequence mean, s_i the geometric mean of the row's token ratios. Only the selected tokens get a
    gradient (TRL's sequence ratio, a function of every token, would spread it over the whole row)."""
    b = batch(5, drift=0.05, token_adv=True)
    select = high_entropy_mask(b["entropy"], b["mask"], 0.5)
    w = sampler_correction_weights(b["old"], b["sampler"], b["mask"], "token_truncate") if token_weights else None
    _, grad = ours(b, "seq_mean_token_mean", kind="gspo", eps_low=1.0 - 1e-9, eps_high=10.0, token_select=select,
                   is_weights=w)  # fmt: skip  # ε so wide that nothing clips
    m, n = b["mask"], b["mask"].shape[0]
    s = torch.exp(((b["logp"] - b["old"]) * m).sum(1) / m.sum(1).clamp(min=1))  # [N]
    weight = select.double() * (w if w is not None else 1.0)  # [N, L]
    expected = -s[:, None] * weight * b["adv"] * m / (n * m.sum(1).clamp(min=1)[:, None])  # [N, L]
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("token_adv", [False, True])
def test_cispo_equals_trl(seed: int, token_adv: bool) -> None:
    b = batch(seed, drift=0.8, token_adv=token_adv)  # ratios up to e^2: some above the cap
    for cap in (1.5, 5.0):
        assert_same(ours(b, "token_mean", kind="cispo", cispo_cap=cap), trl(b, loss_type="cispo", epsilon_high=cap))
    _, stats = policy_loss(b["logp"], b["old"], b["adv"], b["mask"], kind="cispo", cispo_cap=1.5)
    assert float(stats.clip_frac_high) > 0  # TRL's cispo_clip_ratio: capped tokens with A > 0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("token_adv", [False, True])
def test_sapo_equals_trl(seed: int, token_adv: bool) -> None:
    b = batch(seed, drift=0.5, token_adv=token_adv)
    for tau_pos, tau_neg in ((1.0, 1.05), (0.5, 3.0)):
        mine = ours(b, "seq_mean_token_mean", kind="sapo", sapo_tau_pos=tau_pos, sapo_tau_neg=tau_neg)
        assert_same(mine, trl(b, loss_type="sapo", sapo_temperature_pos=tau_pos, sapo_temperature_neg=tau_neg))


@pytest.mark.parametrize("seed", range(3))
def test_clip_with_per_token_advantages_and_kl_equals_trl(seed: int) -> None:
    b = batch(seed, token_adv=True)
    mine = ours(b, "token_mean", kind="clip", eps_low=0.2, eps_high=0.28, ref_logp=b["ref"], beta=0.04)
    theirs = trl(b, loss_type="dapo", epsilon_low=0.2, epsilon_high=0.28, beta=0.04, ref_per_token_logps=b["ref"])
    assert_same(mine, theirs)


def test_every_surrogate_has_the_clip_gradient_at_ratio_one() -> None:
    """Why the settings ask for μ >= 2 with gspo, cispo and sapo: at π_old = sg(π_θ) all give A·∇log π."""
    b = batch(7)
    b["old"] = b["logp"]
    grads = [ours(b, "seq_mean_token_mean", kind=k)[1] for k in ("clip", "gspo", "cispo", "sapo")]
    for g in grads[1:]:
        torch.testing.assert_close(g, grads[0], rtol=1e-12, atol=1e-12)


# ---- sampler correction against TRL ----------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("c_min", "c_max"), [(None, 3.0), (0.5, 2.0), (0.8, None)])
def test_sampler_correction_weights_equal_trl(seed: int, mode: str, c_min: float | None, c_max: float | None) -> None:
    b = batch(seed)
    sampler = b["sampler"]
    mine = sampler_correction_weights(b["old"], sampler, b["mask"], mode, c_max=c_max, c_min=c_min)  # type: ignore[arg-type]
    theirs = trl_importance_sampling_ratio(b["old"], sampler, b["mask"], mode, c_min, c_max)
    assert mine.shape == theirs.shape
    torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)
    outside = (theirs == 0).any() if mode.endswith("mask") else (theirs != torch.exp(
        ((b["old"] - sampler) * b["mask"]).sum(-1, keepdim=True) if mode.startswith("sequence")
        else (b["old"] - sampler) * b["mask"])).any()  # fmt: skip
    assert outside  # the batch has weights that the bounds change


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("kind", "loss_type"), [("clip", "dapo"), ("cispo", "cispo"), ("sapo", "sapo")])
def test_corrected_losses_equal_trl(mode: str, kind: str, loss_type: str) -> None:
    b = batch(11, drift=0.6)
    weights = sampler_correction_weights(b["old"], b["sampler"], b["mask"], mode, c_max=2.0, c_min=0.5)  # type: ignore[arg-type]
    ratio = trl_importance_sampling_ratio(b["old"], b["sampler"], b["mask"], mode, 0.5, 2.0)
    aggregation = "seq_mean_token_mean" if loss_type == "sapo" else "token_mean"
    mine = ours(b, aggregation, kind=kind, is_weights=weights, ref_logp=b["ref"], beta=0.1, cispo_cap=2.0)
    theirs = trl(b, loss_type=loss_type, importance_sampling_ratio=ratio, beta=0.1, ref_per_token_logps=b["ref"],
                 epsilon_high=2.0 if kind == "cispo" else 0.2)  # fmt: skip
    assert_same(mine, theirs)


def test_meter_counts_mean_weight_and_zeroed_share_of_loss_tokens() -> None:
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    meter = MismatchMeter()
    meter.add_weights(torch.tensor([[0.0], [2.0]]), mask)  # sequence weights: row 0 (2 tokens) zeroed, row 1 w = 2
    out = meter.pop()
    assert out["sampler_is_weight_mean"] == pytest.approx(2.0 / 3)  # (0 + 0 + 2) / 3 loss tokens
    assert out["sampler_is_zeroed_frac"] == pytest.approx(2.0 / 3)


# ---- high-entropy token selection against TRL ------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("quantile", [0.2, 0.5, 0.9, 1.0])
def test_high_entropy_mask_equals_trl(seed: int, quantile: float) -> None:
    b = batch(seed)
    mine = high_entropy_mask(b["entropy"], b["mask"], quantile)
    theirs = trl_high_entropy_mask(b["entropy"], b["mask"], 1 - quantile)
    assert torch.equal(mine, theirs)
    kept = float(mine.sum() / b["mask"].sum())
    assert kept == pytest.approx(quantile, abs=1.5 / float(b["mask"].sum()))  # ~q of the valid tokens


@pytest.mark.parametrize(("kind", "loss_type"), [("clip", "dapo"), ("cispo", "cispo"), ("sapo", "sapo")])
def test_selected_losses_equal_trl(kind: str, loss_type: str) -> None:
    b = batch(3)
    select = high_entropy_mask(b["entropy"], b["mask"], 0.2)
    aggregation = "seq_mean_token_mean" if loss_type == "sapo" else "token_mean"
    mine = ours(b, aggregation, kind=kind, token_select=select, ref_logp=b["ref"], beta=0.05)
    theirs = trl(b, loss_type=loss_type, entropy_mask=trl_high_entropy_mask(b["entropy"], b["mask"], 0.8), beta=0.05,
                 ref_per_token_logps=b["ref"], epsilon_high=5.0 if kind == "cispo" else 0.2)  # fmt: skip
    assert_same(mine, theirs)
    assert float(mine[1].abs().sum()) > 0 and bool((mine[1][~select & b["mask"].bool()] != 0).any())  # KL only


# ---- settings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"policy_loss": "gspo"}, "model.method.num_iterations=1: allowed num_iterations >= 2 with policy_loss: gspo"),
        ({"policy_loss": "ppo"}, "model.method.policy_loss='ppo': allowed clip | gspo | cispo | sapo"),
        ({"policy_loss": "cispo", "num_iterations": 2, "dual_clip": 3.0}, "model.method.dual_clip=3.0: allowed null"),
        ({"tis_cap": 2.0, "sampler_correction": "sequence_mask"}, "model.method.tis_cap=2.0: allowed null with"),
        ({"top_entropy_quantile": 0.0}, "model.method.top_entropy_quantile=0.0: allowed 0 < top_entropy_quantile"),
        ({"top_entropy_quantile": 1.5}, "top_entropy_quantile=1.5"),
        ({"sampler_correction": "token_mask", "correction_max": None}, "correction_max=None: allowed a number"),
        ({"correction_max": 0.5}, "correction_max=0.5: allowed null or correction_max >= 1"),
        ({"correction_min": 2.0}, "correction_min=2.0: allowed null or 0 <= correction_min <= 1"),
        ({"cispo_cap": 0.5}, "cispo_cap=0.5: allowed cispo_cap >= 1"),
        ({"sapo_tau_neg": 0.0}, "sapo_tau_neg=0.0: allowed sapo_tau_neg > 0"),
        ({"sampler_correction": "sequence"}, "sampler_correction='sequence': allowed none | token_truncate"),
    ],
)
def test_nonsense_combinations_are_refused_in_one_line(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        MethodArgs(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


def test_tis_cap_is_token_truncate() -> None:
    assert MethodArgs(tis_cap=2.0).correction == ("token_truncate", 2.0, None)
    assert MethodArgs(sampler_correction="sequence_mask").correction == ("sequence_mask", 3.0, None)


# ---- one training step per new setting --------------------------------------------------------------

SMOKE = {
    "gspo": {"policy_loss": "gspo", "eps_low": 3e-4, "eps_high": 4e-4, "aggregation": "seq_mean_token_mean"},
    "cispo": {"policy_loss": "cispo", "cispo_cap": 1.0},  # the second pass's ratios above 1 are capped
    "sapo": {"policy_loss": "sapo", "estimator": "rloo"},
    "token_truncate": {"sampler_correction": "token_truncate"},
    "token_mask": {"sampler_correction": "token_mask", "correction_min": 0.5, "estimator": "dr_grpo"},
    "sequence_truncate": {"sampler_correction": "sequence_truncate", "aggregation": "lambda"},
    "sequence_mask": {"sampler_correction": "sequence_mask", "policy_loss": "gspo"},
    "top_entropy": {"top_entropy_quantile": 0.2, "aggregation": "seq_mean_token_sum_norm"},
}


class ParityReward(LamPOModule):
    """Rewards by row parity, so every group has signal (the tiny model solves nothing)."""

    def score(self, rollout: Rollout, problems: list[Problem]) -> RewardBatch:
        total = [float(i % 2) for i in range(len(rollout.texts))]
        return RewardBatch(total=total, components={"parity": total}, correct=total, diagnostics={})


@pytest.mark.parametrize("name", SMOKE)
def test_one_training_step_per_setting(name: str) -> None:
    settings: dict = {"estimator": "lampo", "aggregation": "token_mean", "beta": 0.04, **SMOKE[name]}
    if settings.get("policy_loss", "clip") != "clip":
        settings["num_iterations"] = 2
    module = ParityReward(model="tiny:qwen3", group_size=4, prompts_per_step=2,
                         sampling=SamplingParams(temperature=1.0, max_new_tokens=8), method=MethodArgs(**settings),
                         optim=OptimArgs(lr=1e-2), compute=ComputeArgs(micro_batch_size=4))  # fmt: skip
    data = ProblemDataModule(train_set="synthetic", eval_sets=[], prompts_per_step=2, synthetic_size=8,
                             synthetic_levels=[1])  # fmt: skip
    trainer = L.Trainer(max_steps=settings.get("num_iterations", 1), accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)  # fmt: skip
    L.seed_everything(0, verbose=False)
    trainer.fit(module, datamodule=data)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["train/grad_norm"])
    if "sampler_correction" in settings:  # the sampler's log-probs were recorded and weighted
        assert 0 <= metrics["train/sampler_is_zeroed_frac"] <= 1 and metrics["train/sampler_is_weight_mean"] > 0
    if name == "top_entropy":
        assert 0.1 < metrics["train/entropy_selected_frac"] < 0.5
    if name == "gspo":  # the second pass moved some sequence ratios out of [1 − 3e-4, 1 + 4e-4]
        assert metrics["train/clip_frac_region"] > 0
    if name == "cispo":  # capped tokens count as high; CISPO has no low clip
        assert metrics["train/clip_frac_high"] > 0 and metrics["train/clip_frac_low"] == 0
    if settings.get("policy_loss") == "sapo":
        assert "train/clip_frac_region" not in metrics  # SAPO clips nothing: NaN, not logged
