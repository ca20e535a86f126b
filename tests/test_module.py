"""The training loop on the tiny model: every estimator × aggregation, adapters, passes, sign, guards."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

import lampo_pl.module as module_mod
from lampo_pl.data.datamodule import ProblemDataModule
from lampo_pl.data.record import Problem
from lampo_pl.logprobs import token_logprobs
from lampo_pl.module import LamPOModule, check_batch_shape
from lampo_pl.policy import adapter_state
from lampo_pl.rewards import RewardBatch
from lampo_pl.rollout import Rollout, SamplingParams
from lampo_pl.settings import MethodArgs, OptimArgs

ESTIMATORS = ("grpo", "dr_grpo", "rloo", "lampo")
AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm", "lambda")


class ScriptedReward(LamPOModule):
    """Rewards by row position (``rewards_by_row``), so every group has signal; keeps the last rollout."""

    rewards_by_row: list[float] | None = None

    def collect_rollout(self, batch: list[Problem], prompts: list[str]) -> tuple[Rollout, list[Problem]]:
        rollout, problems = super().collect_rollout(batch, prompts)
        self.seen_rollout = rollout
        return rollout, problems

    def score(self, rollout: Rollout, problems: list[Problem]) -> RewardBatch:
        n = len(rollout.texts)
        total = self.rewards_by_row or [float(i % 2) for i in range(n)]
        return RewardBatch(total=list(total), components={"scripted": list(total)}, correct=list(total),
                           diagnostics={})


def make(estimator: str = "lampo", aggregation: str = "token_mean", beta: float = 0.04, iters: int = 1,
         lr: float = 1e-2, cls: type[LamPOModule] = ScriptedReward, **method: float) -> LamPOModule:
    return cls(
        model="tiny:qwen3", group_size=4, prompts_per_step=2,
        sampling=SamplingParams(temperature=1.0, max_new_tokens=8),
        method=MethodArgs(estimator=estimator, aggregation=aggregation, beta=beta, num_iterations=iters,
                          lambda_init=0.5, **method),
        optim=OptimArgs(lr=lr, micro_batch_size=4),
    )


def fit(module: LamPOModule, steps: int = 2) -> L.Trainer:
    data = ProblemDataModule(train_set="synthetic", eval_sets=[], prompts_per_step=2, synthetic_size=16,
                             synthetic_levels=[1])
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    L.seed_everything(0, verbose=False)
    trainer.fit(module, datamodule=data)
    return trainer


def base_state(module: LamPOModule) -> dict[str, torch.Tensor]:
    assert module.policy_model is not None
    return {k: v.detach().clone() for k, v in module.policy_model.named_parameters() if "lora_" not in k}


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_fit_each_estimator_and_aggregation(estimator: str, aggregation: str) -> None:
    module = make(estimator, aggregation)
    module.configure_model()
    policy0, ref0, base0 = (adapter_state(module.policy_model, "policy"),
                            adapter_state(module.policy_model, "reference"), base_state(module))
    trainer = fit(module)
    assert trainer.global_step == 2
    policy1, ref1 = adapter_state(module.policy_model, "policy"), adapter_state(module.policy_model, "reference")
    assert any(not torch.equal(policy0[k], policy1[k]) for k in policy0), "the policy adapter must change"
    assert all(torch.equal(ref0[k], ref1[k]) for k in ref0), "the reference adapter must stay frozen"
    assert all(torch.equal(v, base_state(module)[k]) for k, v in base0.items()), "base weights must not change"
    metrics = trainer.callback_metrics
    assert math.isfinite(float(metrics["train/loss"]))
    assert "train/kl_ref" in metrics and "train/clip_frac_region" in metrics  # β = 0.04: measured
    if estimator == "lampo":
        assert 0.0 < float(metrics["train/mean_pair_weight"]) < 1.0
    if aggregation == "lambda":
        # λ is in the graph (its gradient may be exactly 0 here: the random tiny model's responses
        # all run to max_new_tokens, so every z_i = 0; test_losses pins λ's gradient with varied lengths).
        assert module.lam is not None and module.lam.grad is not None
        assert math.isfinite(float(metrics["train/lam"]))


def test_beta_zero_runs_no_reference_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = module_mod.reference_adapter

    def counting(model):  # type: ignore[no-untyped-def]
        calls.append(1)
        return original(model)

    monkeypatch.setattr(module_mod, "reference_adapter", counting)
    fit(make(beta=0.0), steps=1)
    assert calls == []
    fit(make(beta=0.1), steps=1)
    assert len(calls) == 1


def test_track_kl_measures_kl_at_beta_zero_without_changing_training() -> None:
    plain, tracked = make(beta=0.0), make(beta=0.0)
    tracked.track_kl = True
    t_plain, t_tracked = fit(plain, steps=2), fit(tracked, steps=2)
    assert "train/kl_ref" not in t_plain.callback_metrics  # not measured: not logged (was a misleading 0)
    kl = float(t_tracked.callback_metrics["train/kl_ref"])
    assert math.isfinite(kl) and kl > 0  # after one update the policy has left the reference
    assert plain.policy_model is not None and tracked.policy_model is not None
    a, b = adapter_state(plain.policy_model, "policy"), adapter_state(tracked.policy_model, "policy")
    assert all(torch.equal(a[k], b[k]) for k in a), "measuring KL must not change the updates"


def test_mu1_without_lampo_runs_no_old_logprob_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = LamPOModule.logprobs_no_grad

    def counting(self, rollout):  # type: ignore[no-untyped-def]
        calls.append(1)
        return original(self, rollout)

    monkeypatch.setattr(LamPOModule, "logprobs_no_grad", counting)
    fit(make("grpo", beta=0.0), steps=1)
    assert calls == []
    fit(make("grpo", beta=0.0, iters=2), steps=1)
    assert len(calls) == 1


def test_rewarded_response_becomes_more_likely() -> None:
    """Sign test: reward row 0 of each group only; one step raises its log-prob, lowers the others'.

    A first-order statement, so the step is small (lr 1e-2: at 5e-2 one Adam step overshoots for some
    seeds, with either sampler) and the LoRA init is seeded here, not left to the tests run before."""
    module = make("grpo", beta=0.0, lr=1e-2)
    module.rewards_by_row = [1.0, 0.0, 0.0, 0.0] * 2
    torch.manual_seed(0)
    module.configure_model()
    fit(module, steps=1)
    rollout: Rollout = module.seen_rollout
    # log-probs of the same rollout now, vs. the rollout policy (= the reference adapter, untouched)
    with torch.no_grad():
        logp_new, _ = token_logprobs(module.policy_model, rollout.input_ids, rollout.attention_mask,
                                     rollout.prompt_len)
        from lampo_pl.policy import reference_adapter
        with reference_adapter(module.policy_model):
            logp_old, _ = token_logprobs(module.policy_model, rollout.input_ids, rollout.attention_mask,
                                         rollout.prompt_len)
    mask = rollout.response_mask.float()
    seq_gain = ((logp_new - logp_old) * mask).sum(1).view(2, 4)  # [B, G]
    assert (seq_gain[:, 0] > 0).all(), seq_gain
    assert (seq_gain[:, 0] > seq_gain[:, 1:].max(dim=1).values).all(), seq_gain


def test_non_finite_loss_skips_the_step(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    module = make("grpo", beta=0.0)
    module.configure_model()
    before = adapter_state(module.policy_model, "policy")
    original = module_mod.aggregate
    monkeypatch.setattr(module_mod, "aggregate", lambda *a, **k: original(*a, **k) * float("nan"))
    trainer = fit(module, steps=2)
    after = adapter_state(module.policy_model, "policy")
    assert all(torch.equal(before[k], after[k]) for k in before), "a NaN step must not touch the adapter"
    assert module.skipped_steps == 2
    assert float(trainer.callback_metrics["train/skipped_steps"]) == 2
    assert "optimiser step skipped" in caplog.text and "synthetic-train" in caplog.text


def test_batch_shape_is_checked_at_start_up() -> None:
    with pytest.raises(ValueError, match=r"micro_batch_size=3 does not divide the 8 responses.*\[1, 2, 4, 8\]"):
        check_batch_shape(prompts_per_step=2, group_size=4, micro_batch_size=3, num_iterations=1)
    with pytest.raises(ValueError, match="must all be >= 1"):
        check_batch_shape(prompts_per_step=0, group_size=4, micro_batch_size=4, num_iterations=1)
    with pytest.raises(ValueError, match="does not divide"):
        LamPOModule(model="tiny:qwen3", group_size=3, prompts_per_step=1, optim=OptimArgs(micro_batch_size=2))


def test_only_policy_adapter_and_lambda_are_optimised() -> None:
    module = make("lampo", "lambda")
    trainer = fit(module, steps=1)
    opt = trainer.optimizers[0]
    names = {g["name"]: g["params"] for g in opt.param_groups}
    optimised = {id(p) for ps in names.values() for p in ps}
    assert module.lam is not None and id(module.lam) in {id(p) for p in names["lambda"]}
    for name, p in module.policy_model.named_parameters():
        assert (id(p) in optimised) == ("lora_" in name and ".policy." in name), name


def test_dynamic_sampling_drops_uniform_groups_from_the_loss() -> None:
    module = make("grpo", dynamic_sampling=True)
    scored = RewardBatch(total=[1, 1, 1, 1, 1, 0, 0, 1], components={}, correct=[1, 1, 1, 1, 1, 0, 0, 1],
                         diagnostics={})
    keep = module.informative_rows(scored)
    assert keep is not None and keep.tolist() == [False] * 4 + [True] * 4
    assert make("grpo").informative_rows(scored) is None
