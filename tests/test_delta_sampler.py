"""DelTA's inputs from the native sampler at μ = 1 (issue 22): the decode loop's recorded head inputs equal a
teacher-forced pass's ``hidden_states[-1]`` (the final norm's output, transformers' own, not our hook), through
ragged lengths, EOS mid-batch, generation chunks of different widths and DAPO's refill rounds; the step's
DelTA advantages equal those of a teacher-forced π_old pass, and so do they with the vLLM engine, where the step's
own π_old pass supplies h."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch
from test_module import MIXED, UNIFORM, RoundRewards, fit, make  # tests/ is on sys.path under pytest (no package)
from test_rollout import _boost_eos
from test_vllm import needs_vllm

import lampo_pl.delta_step as delta_step
import lampo_pl.preflight as preflight
from lampo_pl.logprobs import position_ids_from_mask, token_logprobs
from lampo_pl.module import LamPOModule
from lampo_pl.policy import load_policy
from lampo_pl.rollout import Rollout, SamplingParams, generate_rollout, stop_token_ids
from lampo_pl.trajectory import Trajectory


def teacher_forced(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(h [N, L, H]: ``hidden_states[-1]`` at the positions that predict the response, log π [N, L]), eval mode."""
    model.eval()
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask,
                    position_ids=position_ids_from_mask(attention_mask), output_hidden_states=True)  # fmt: skip
        logp, _ = token_logprobs(model, input_ids, attention_mask, prompt_len, temperature=temperature)
    return out.hidden_states[-1][:, prompt_len - 1 : input_ids.shape[1] - 1], logp  # [N, L, H], [N, L]


def assert_hidden_matches(hidden: torch.Tensor, rollout_ids: torch.Tensor, attention: torch.Tensor,
                          prompt_len: int, model: Any) -> None:  # fmt: skip
    expected, _ = teacher_forced(model, rollout_ids, attention, prompt_len)
    mask = attention[:, prompt_len:].bool()  # [N, L]
    assert hidden.shape == expected.shape
    torch.testing.assert_close(hidden[mask], expected[mask], rtol=1e-4, atol=1e-4)
    assert bool((hidden[~mask] == 0).all()), "head inputs after the response must be 0"


@pytest.mark.parametrize("merge", [True, False])
def test_decode_records_the_teacher_forced_head_input(merge: bool) -> None:
    """Ragged responses (EOS mid-batch), 3 sampler calls of 3, 3 and 2 rows that stop at different widths."""
    model, tokenizer = load_policy("tiny:qwen3", lora_r=4)
    _boost_eos(model, tokenizer.eos_token_id, bias=3.0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B.policy" in name:
                param.normal_(0, 0.2)  # a policy adapter that matters: merged and unmerged sampling must agree
    sampling = SamplingParams(temperature=1.0, max_new_tokens=12, merge_lora=merge)
    questions = ("What is 2 + 2?", "Name 3 colours.")
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True) for q in questions]  # fmt: skip
    widths = set()
    for seed in range(4):  # until the chunks' own widths differ (each call stops when all its rows ended)
        torch.manual_seed(seed)
        rollout = generate_rollout(model, tokenizer, prompts, 4, sampling, generation_batch_size=3,
                                   record_logprobs=True, record_hidden=True)  # fmt: skip
        lengths = rollout.response_lengths
        widths = {int(lengths[i : i + 3].max()) for i in range(0, 8, 3)}
        if len(widths) > 1 and int(lengths.min()) < int(lengths.max()):
            break
    assert len(widths) > 1, "the chunks must stop at different widths for the test to mean much"
    assert rollout.sampled_hidden is not None and rollout.sampled_logprobs is not None
    assert_hidden_matches(rollout.sampled_hidden, rollout.input_ids, rollout.attention_mask, rollout.prompt_len,
                          model)  # fmt: skip
    torch.manual_seed(seed)
    plain = generate_rollout(model, tokenizer, prompts, 4, sampling, generation_batch_size=3)
    assert plain.sampled_hidden is None and torch.equal(plain.input_ids, rollout.input_ids), "recording changes nothing"
    with pytest.raises(ValueError, match="only the native engine records head inputs, not generate"):
        generate_rollout(model, tokenizer, prompts, 1, replace(sampling, engine="generate"), record_hidden=True)


class SeenTrajectory(RoundRewards):
    """Keeps the step's assembled trajectory (after DAPO's rounds) as π_old is decided."""

    def old_policy_logprobs(self, traj: Trajectory, rollout: Rollout):  # type: ignore[no-untyped-def]
        self.seen_traj = traj
        return super().old_policy_logprobs(traj, rollout)


def spy_on_delta(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    original = delta_step.delta_advantages

    def spy(adv, hidden, logp, mask, **kw):  # type: ignore[no-untyped-def]
        out = original(adv, hidden, logp, mask, **kw)
        seen.update(adv=adv, hidden=hidden, logp=logp, mask=mask, kw=kw, out=out.advantages)
        return out

    monkeypatch.setattr(delta_step, "delta_advantages", spy)
    seen["original"] = original
    return seen


@pytest.mark.parametrize(("estimator", "temperature"), [("grpo", 1.0), ("lampo", 0.7)])
def test_step_at_mu1_gives_the_delta_advantages_of_a_teacher_forced_pass(
    estimator: str, temperature: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lr = 0 keeps the policy at π_old: DelTA from a teacher-forced h and log π_old (at the sampling temperature)
    over the step's rollout gives the step's own per-token advantages to 1e-4 relative."""
    seen = spy_on_delta(monkeypatch)
    module = make(estimator, beta=0.0, lr=0.0, delta=True, cls=SeenTrajectory)
    module.sampling = replace(module.sampling, temperature=temperature)
    module.rounds = [[*MIXED, 1.0, 0.0, 0.0, 0.0]]
    module.configure_model()
    _boost_eos(module.policy_model, stop_token_ids(module.policy_model, module.tokenizer)[0])  # ragged responses
    fit(module, steps=1)
    traj = module.seen_traj
    h, logp = teacher_forced(module.policy_model, traj.input_ids, traj.attention_mask, traj.prompt_len, temperature)
    mask = traj.response_mask.bool()
    assert bool((~mask).any()), "ragged responses expected"
    torch.testing.assert_close(seen["hidden"][mask], h[mask], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(seen["logp"][mask], logp[mask], rtol=1e-4, atol=1e-4)
    expected = seen["original"](seen["adv"], h, logp, seen["mask"], **seen["kw"]).advantages  # [N, L]
    assert bool((expected[mask] != 0).any())
    torch.testing.assert_close(seen["out"], expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


@needs_vllm
def test_step_with_the_vllm_engine_gives_the_delta_advantages_of_a_teacher_forced_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The resolution run's DelTA arm: vLLM samples (no head inputs), so the step's own no-grad π_old pass feeds
    DelTA; its h, log π_old and per-token advantages equal an independent teacher-forced pass over the rollout."""
    seen = spy_on_delta(monkeypatch)
    module = make("grpo", beta=0.0, lr=0.0, delta=True, cls=SeenTrajectory)
    module.model_name = "tiny:qwen3-hd32"  # a head_dim vLLM's CPU attention serves (tests/test_vllm.py)
    module.sampling = replace(module.sampling, engine="vllm")
    module.rounds = [[*MIXED, 1.0, 0.0, 0.0, 0.0]]
    assert module.old_pass_for_delta
    fit(module, steps=1)
    traj = module.seen_traj
    h, logp = teacher_forced(module.policy_model, traj.input_ids, traj.attention_mask, traj.prompt_len)
    mask = traj.response_mask.bool()
    torch.testing.assert_close(seen["hidden"][mask], h[mask], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(seen["logp"][mask], logp[mask], rtol=1e-4, atol=1e-4)
    expected = seen["original"](seen["adv"], h, logp, seen["mask"], **seen["kw"]).advantages  # [N, L]
    assert bool((expected[mask] != 0).any())
    torch.testing.assert_close(seen["out"], expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_dapo_refill_rounds_keep_hidden_states_row_for_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three generation rounds, the informative groups of rounds 1 and 3 kept (``select_groups`` pads each round to
    the widest): the hidden states DelTA reads are the assembled trajectory's own, row for row."""
    seen = spy_on_delta(monkeypatch)
    module = make("grpo", beta=0.0, lr=0.0, delta=True, cls=SeenTrajectory, dynamic_sampling=True,
                  max_refill_rounds=3)  # fmt: skip
    module.rounds = [UNIFORM + MIXED, UNIFORM + UNIFORM, MIXED + UNIFORM]
    module.configure_model()
    _boost_eos(module.policy_model, stop_token_ids(module.policy_model, module.tokenizer)[0])
    trainer = fit(module, steps=1)
    assert float(trainer.callback_metrics["train/dynamic_sampling/rounds"]) == 3
    traj = module.seen_traj
    assert module.calls == 3 and traj.num_rows == 8
    assert_hidden_matches(seen["hidden"], traj.input_ids, traj.attention_mask, traj.prompt_len, module.policy_model)
    _, logp = teacher_forced(module.policy_model, traj.input_ids, traj.attention_mask, traj.prompt_len)
    mask = traj.response_mask.bool()
    torch.testing.assert_close(seen["logp"][mask], logp[mask], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("engine", "old_passes"), [("native", 0), ("generate", 2)])
def test_preflight_runs_what_the_step_runs(engine: str, old_passes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """DelTA at μ = 1: with the native sampler the preflight holds the ``[B·G, L, H]`` head inputs beside the KV
    cache and runs no π_old pass, as the step; with ``generate`` it runs the step's π_old pass (once in each)."""
    kept: list[bool] = []
    original_fill = preflight.fill_kv_cache

    def fill(*args: Any) -> None:
        kept.append(bool(args[4]))
        original_fill(*args)

    old: list[int] = []
    original_pass = LamPOModule.logprobs_no_grad

    def counting(self: LamPOModule, traj: Trajectory) -> torch.Tensor:
        old.append(1)
        return original_pass(self, traj)

    monkeypatch.setattr(preflight, "fill_kv_cache", fill)
    monkeypatch.setattr(LamPOModule, "logprobs_no_grad", counting)
    module = make("grpo", beta=0.0, delta=True)
    module.sampling = replace(module.sampling, engine=engine)  # type: ignore[arg-type]
    module.compute = replace(module.compute, preflight=True)
    fit(module, steps=1)
    assert kept == [engine == "native"] and len(old) == old_passes
