"""The training loop on the tiny model: every estimator × aggregation, adapters, passes, sign, guards."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

import lampo_pl.module as module_mod
import lampo_pl.step_loss as step_loss
from lampo_pl.data.datamodule import ProblemDataModule
from lampo_pl.data.record import Problem
from lampo_pl.logprobs import token_logprobs
from lampo_pl.module import LamPOModule
from lampo_pl.policy import adapter_state
from lampo_pl.rewards import RewardBatch
from lampo_pl.rollout import Rollout, SamplingParams
from lampo_pl.settings import ComputeArgs, MethodArgs, OptimArgs, RewardArgs, check_batch_shape
from lampo_pl.trajectory import Trajectory

ESTIMATORS = ("grpo", "dr_grpo", "rloo", "lampo")
AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm", "lambda")


class ScriptedReward(LamPOModule):
    """Rewards by row position (``rewards_by_row``), so every group has signal; keeps the last rollout."""

    rewards_by_row: list[float] | None = None

    def collect_rollout(
        self, batch: list[Problem], prompts: list[str], round_index: int = 0
    ) -> tuple[Rollout, list[Problem]]:
        rollout, problems = super().collect_rollout(batch, prompts, round_index)
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
        optim=OptimArgs(lr=lr),
        compute=ComputeArgs(micro_batch_size=4, preflight=False),  # these tests count the step's own passes
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
    if estimator == "lampo":  # the logged mean is over the pairs with a reward gap, from the step's own weights
        record = module.last_step
        rewards = torch.tensor(record.rewards).view(-1, 4)  # [B, G]
        gap = rewards[:, :, None] != rewards[:, None, :]  # [B, G, G]
        expected = torch.tensor(record.pair_weights)[gap].mean()
        assert float(metrics["train/mean_pair_weight"]) == pytest.approx(float(expected), abs=1e-6)
    if aggregation == "lambda":
        assert module.lam is not None and float(metrics["train/lam"]) == pytest.approx(float(module.lam.detach()))


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
    original = step_loss.aggregate  # the loss of a micro-batch is aggregated there (lampo_pl/step_loss.py)
    monkeypatch.setattr(step_loss, "aggregate", lambda *a, **k: original(*a, **k) * float("nan"))
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
        LamPOModule(model="tiny:qwen3", group_size=3, prompts_per_step=1, compute=ComputeArgs(micro_batch_size=2))


def test_the_module_takes_prompts_per_step_from_the_data_module() -> None:
    """Issue 25 item 10: B is given once (to the data module); a module given another one is refused."""
    module = ScriptedReward(model="tiny:qwen3", group_size=4, compute=ComputeArgs(micro_batch_size=4),
                            sampling=SamplingParams(temperature=1.0, max_new_tokens=8))
    assert module.prompts_per_step is None
    fit(module, steps=1)  # the data module's prompts_per_step=2
    assert module.prompts_per_step == 2 and len(module.last_step.prompts) == 2
    with pytest.raises(ValueError, match="prompts_per_step: the module has 4 and the data module 2"):
        fit(ScriptedReward(model="tiny:qwen3", group_size=4, prompts_per_step=4,
                           compute=ComputeArgs(micro_batch_size=4)), steps=1)
    with pytest.raises(ValueError, match="does not divide"):  # the shape is checked once B is known
        fit(ScriptedReward(model="tiny:qwen3", group_size=3, compute=ComputeArgs(micro_batch_size=4)), steps=1)


def test_only_policy_adapter_and_lambda_are_optimised() -> None:
    module = make("lampo", "lambda")
    trainer = fit(module, steps=1)
    opt = trainer.optimizers[0]
    names = {g["name"]: g["params"] for g in opt.param_groups}
    optimised = {id(p) for ps in names.values() for p in ps}
    assert module.lam is not None and id(module.lam) in {id(p) for p in names["lambda"]}
    for name, p in module.policy_model.named_parameters():
        assert (id(p) in optimised) == ("lora_" in name and ".policy." in name), name


def test_lambda_is_learnt_when_lengths_vary() -> None:
    """λ's gradient is non-zero once responses differ in length (EOS made likely), and the optimiser moves λ."""
    from test_rollout import _boost_eos

    module = make("grpo", "lambda", beta=0.0)
    module.configure_model()
    _boost_eos(module.policy_model, module.tokenizer.eos_token_id, bias=3.0)
    fit(module, steps=2)
    assert module.lam is not None and module.lam.grad is not None and float(module.lam.grad) != 0.0
    assert float(module.lam) != pytest.approx(0.5, abs=1e-6), "λ must move from lambda_init"


class RoundRewards(ScriptedReward):
    """Correctness per generation round: ``rounds[k]`` is the N rewards of the k-th round (the last repeats)."""

    rounds: list[list[float]] | None = None

    def score(self, rollout: Rollout, problems: list[Problem]) -> RewardBatch:
        self.calls = getattr(self, "calls", 0) + 1
        assert self.rounds is not None
        total = self.rounds[min(self.calls, len(self.rounds)) - 1]
        return RewardBatch(total=list(total), components={"scripted": list(total)}, correct=list(total),
                           diagnostics={})


MIXED, UNIFORM = [1.0, 0.0, 1.0, 0.0], [1.0] * 4


def test_dynamic_sampling_refills_to_b_informative_groups() -> None:
    module = make("grpo", cls=RoundRewards, dynamic_sampling=True, max_refill_rounds=3)
    module.rounds = [UNIFORM + MIXED, UNIFORM + UNIFORM, MIXED + UNIFORM]  # 1 kept, then 0, then 1: B = 2
    trainer = fit(module, steps=1)
    m = trainer.callback_metrics
    assert float(m["train/dynamic_sampling/rounds"]) == 3 and float(m["train/dynamic_sampling/groups_kept"]) == 2
    assert float(m["train/dynamic_sampling/groups_sampled"]) == 6
    assert module.last_step.rewards == MIXED + MIXED  # the two informative groups, in round order
    assert module.calls == 3
    # Training accuracy is the first round's, on the step's own prompts (6 of 8 right), not the kept groups'
    # (4 of 8): the latter is biased by the selection and would flatter DAPO against other methods.
    assert module.last_step.metrics["acc"] == pytest.approx(0.75)
    assert module.last_step.metrics["acc_trained"] == pytest.approx(0.5)


def test_dynamic_sampling_bound_trains_on_kept_groups_with_dropped_ones_out_of_every_normaliser(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    counts: list[tuple[float, float]] = []
    original = module_mod.sequence_coefficients

    def spy(lengths, mode, **kw):  # type: ignore[no-untyped-def]
        counts.append(tuple(kw["counts"]))
        return original(lengths, mode, **kw)

    monkeypatch.setattr(module_mod, "sequence_coefficients", spy)
    module = make("grpo", "seq_mean_token_mean", cls=RoundRewards, beta=0.0, dynamic_sampling=True,
                  max_refill_rounds=1)
    module.rounds = [UNIFORM + MIXED, UNIFORM + UNIFORM]
    trainer = fit(module, steps=1)
    assert float(trainer.callback_metrics["train/dynamic_sampling/groups_kept"]) == 1
    assert "1 of 2 groups informative after 2 generation rounds" in caplog.text
    assert module.last_step.rewards == MIXED + UNIFORM  # the filler group rides along, masked
    n, tokens = counts[0]
    assert n == 4, "N counts the 4 responses of the kept group only"
    assert tokens <= 4 * module.sampling.max_new_tokens


def test_autocast_runs_every_teacher_forced_pass_in_bfloat16() -> None:
    """``compute.autocast: bfloat16`` (docs/performance.md: halves the loss pass on AVX-512 BF16): the log-probs
    come out float32 and within bf16 rounding of the float32 pass, but not equal to it (autocast is on); a fit
    with it trains the policy adapter."""
    module = make("grpo", beta=0.04)
    torch.manual_seed(0)
    module.configure_model()
    fit(module, steps=1)
    traj = Trajectory.of(module.seen_rollout)
    with torch.no_grad():
        full, _ = module.policy_logprobs(traj)  # [N, L] float32 matmuls
        module.compute = ComputeArgs(micro_batch_size=4, autocast="bfloat16")
        half, _ = module.policy_logprobs(traj)  # [N, L] bf16 matmuls, float32 log-softmax
    mask = traj.response_mask.bool()
    assert half.dtype == torch.float32
    diff = (half - full)[mask].abs()
    assert 0 < diff.max() < 0.25, diff.max()  # bf16 keeps ~3 significant digits of the logits
    before = {k: v.clone() for k, v in adapter_state(module.policy_model, "policy").items()}
    fit(module, steps=1)
    after = adapter_state(module.policy_model, "policy")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_trained_step_metrics_leave_the_filler_groups_out() -> None:
    """Issue 21, item 11: with one informative group and one filler group, ``acc_trained``, ``reward`` and the
    advantage statistics are the kept group's (0.5, not 0.75 with the all-right filler mixed in)."""
    module = make("grpo", cls=RoundRewards, dynamic_sampling=True, max_refill_rounds=1)
    module.rounds = [UNIFORM + MIXED, UNIFORM + UNIFORM]
    fit(module, steps=1)
    metrics = module.last_step.metrics
    assert module.last_step.rewards == MIXED + UNIFORM  # the filler group rides along, masked
    assert metrics["acc_trained"] == pytest.approx(0.5) and metrics["reward"] == pytest.approx(0.5)
    assert metrics["reward_std"] == pytest.approx(0.5) and metrics["reward_scripted"] == pytest.approx(0.5)
    assert metrics["zero_variance_frac"] == 0.0  # the kept group's rewards vary; the filler's do not
    assert metrics["acc"] == pytest.approx(0.75)  # the first round's, on the step's own prompts


class ShapedOnly(RoundRewards):
    """Correctness always 0, a shaped total that varies: only the total can tell groups apart."""

    def score(self, rollout: Rollout, problems: list[Problem]) -> RewardBatch:
        batch = super().score(rollout, problems)
        return RewardBatch(total=batch.total, components=batch.components, correct=[0.0] * len(batch.total),
                           diagnostics={})


def test_dynamic_sampling_filters_on_the_total_reward_when_correctness_weighs_0() -> None:
    """Issue 21, item 9: with correctness at weight 0 (``filter_signal: auto``) the groups whose total reward
    varies are informative; filtering on correctness would drop every group and train on nothing."""
    module = ShapedOnly(model="tiny:qwen3", group_size=4, prompts_per_step=2,
                        sampling=SamplingParams(temperature=1.0, max_new_tokens=8),
                        method=MethodArgs(estimator="grpo", dynamic_sampling=True, max_refill_rounds=2),
                        compute=ComputeArgs(micro_batch_size=4), rewards=RewardArgs(correctness=0.0, format=1.0))
    module.rounds = [MIXED + MIXED]
    trainer = fit(module, steps=1)
    m = trainer.callback_metrics
    assert float(m["train/dynamic_sampling/groups_kept"]) == 2 and float(m["train/dynamic_sampling/rounds"]) == 1
    assert module.calls == 1
