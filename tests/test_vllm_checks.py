"""vLLM's constraints checked before the engine starts (lampo_pl/vllm_checks.py), its context and KV cache
errors, the filter of its harmless per-sync warnings, truncated-sampling metrics and the run seed on resume
(issue 21 items 3-6, issue 25 item 5)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from test_vllm import needs_vllm  # tests/ is on sys.path under pytest (no package)
from transformers import AutoModelForCausalLM

from lampo_pl.mismatch import MismatchMeter
from lampo_pl.module import LamPOModule
from lampo_pl.rollout import SamplingParams, generate_rollout
from lampo_pl.settings import LoraArgs, MethodArgs
from lampo_pl.tiny import tiny_config, tiny_tokenizer
from lampo_pl.vllm_checks import (
    HARMLESS_SYNC_WARNINGS,
    VLLM_LORA_RANKS,
    HarmlessSyncWarnings,
    VllmCombinationError,
    check_vllm_settings,
    served_lora_rank,
)
from lampo_pl.vllm_engine import close_engine, shared_engine, step_seed


def _one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_served_lora_rank_rounds_up_to_a_rank_vllm_serves_and_refuses_above_512() -> None:
    # vllm/config/lora.py:26, MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]
    assert VLLM_LORA_RANKS == (1, 8, 16, 32, 64, 128, 256, 320, 512)
    assert [served_lora_rank(r) for r in (1, 2, 8, 12, 16, 17, 300, 320, 321, 512)] == [
        1, 8, 8, 16, 16, 32, 320, 320, 512, 512
    ]  # fmt: skip
    with pytest.raises(VllmCombinationError, match=r"^model\.lora\.r=600: .*up to 512") as error:
        check_vllm_settings(SamplingParams(engine="vllm", vllm_sync="lora"), LoraArgs(r=600), MethodArgs())
    _one_line(error)
    check_vllm_settings(SamplingParams(engine="vllm"), LoraArgs(r=600), MethodArgs())  # merged: any rank


def test_a_sampler_correction_with_truncated_vllm_sampling_is_refused_in_one_line() -> None:
    with pytest.raises(VllmCombinationError, match=r"^model\.method\.tis_cap=2\.0 with .*top_p=0\.9") as error:
        LamPOModule(sampling=SamplingParams(engine="vllm", top_p=0.9), method=MethodArgs(tis_cap=2.0))
    _one_line(error)
    with pytest.raises(VllmCombinationError, match=r"^model\.method\.sampler_correction=token_mask with .*top_k=5"):
        LamPOModule(sampling=SamplingParams(engine="vllm", top_k=5), method=MethodArgs(sampler_correction="token_mask"))
    LamPOModule(sampling=SamplingParams(engine="vllm"), method=MethodArgs(tis_cap=2.0))  # untruncated: fine
    LamPOModule(sampling=SamplingParams(engine="vllm", top_k=5))  # truncated without TIS: fine


@needs_vllm
def test_a_head_dim_the_cpu_attention_lacks_is_refused_before_the_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    module = LamPOModule(model="tiny:qwen3", sampling=SamplingParams(engine="vllm"))  # head_dim 16
    monkeypatch.setattr("lampo_pl.module.load_policy", lambda *a, **k: pytest.fail("the model loaded"))
    with pytest.raises(VllmCombinationError, match=r"head_dim 16, and vLLM's CPU attention runs head_dim 32, ") as e:
        module.configure_model()
    _one_line(e)
    with pytest.raises(VllmCombinationError, match=r"^model\.max_context=4096 exceeds the model's 2048 positions"):
        LamPOModule(model="tiny:qwen3-hd32", sampling=SamplingParams(engine="vllm"), max_context=4096).configure_model()


def test_the_harmless_sync_warnings_are_filtered_by_their_exact_text_and_nothing_else() -> None:
    def record(message: str, *args: Any) -> logging.LogRecord:
        return logging.LogRecord("vllm.x", logging.WARNING, "f.py", 1, message, args, None)

    keep = HarmlessSyncWarnings().filter
    # the two messages as vLLM 0.32 formats them (model_loader/reload/inplace.py:120, layerwise.py:266)
    assert not keep(record("Following weights were not loaded from checkpoint: %s", {"model.norm.weight"}))
    assert not keep(record("%s: Failed to load weights", "RMSNorm"))
    assert keep(record("Reloading and processing weights took %.2f seconds", 0.1))
    assert keep(record("RMSNorm: failed badly"))
    assert len(HARMLESS_SYNC_WARNINGS) == 2


def _long_context_model(folder: Path) -> str:
    """The tiny Qwen3 with 16 KiB of KV cache per token and 131,072 positions: 1 GiB holds ~65k tokens."""
    config = tiny_config("qwen3-hd32")
    config.head_dim, config.num_key_value_heads, config.max_position_embeddings = 256, 4, 131072
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


@needs_vllm
def test_the_engines_context_fits_its_kv_cache_and_too_long_is_one_line(tmp_path: Path) -> None:
    from lampo_pl.policy import load_policy

    model, tokenizer = load_policy(_long_context_model(tmp_path / "long"), lora_r=8)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                           add_generation_prompt=True)  # fmt: skip
    try:  # the model's 131,072 positions do not fit 1 GiB: the engine still starts, at what the cache holds
        engine = shared_engine(model, sync="merged", kv_cache_gib=1, gpu_memory_utilization=0.3, sleep=False,
                               max_context=None)  # fmt: skip
        assert 32768 < engine.max_model_len < 131072
        for module in ("inplace", "layerwise"):  # the started engine filters its per-sync warnings (issue 25)
            logger = logging.getLogger(f"vllm.model_executor.model_loader.reload.{module}")
            assert any(isinstance(f, HarmlessSyncWarnings) for f in logger.filters)
        sampling = SamplingParams(engine="vllm", max_new_tokens=engine.max_model_len)
        with pytest.raises(VllmCombinationError, match=r"needs \d+ tokens, and the vLLM engine's KV cache holds \d+ "
                           r"per sequence: raise model\.sampling\.vllm_kv_cache_gib") as error:  # fmt: skip
            generate_rollout(model, tokenizer, [prompt], 1, sampling, seed=0)
        _one_line(error)
        assert generate_rollout(model, tokenizer, [prompt], 1, SamplingParams(engine="vllm", max_new_tokens=4),
                                seed=0).response_ids.shape[1] <= 4  # fmt: skip
    finally:
        close_engine(model)
    with pytest.raises(VllmCombinationError, match=r"cannot hold one sequence of model\.max_context=131072 tokens: "
                       r"raise model\.sampling\.vllm_kv_cache_gib") as error:  # fmt: skip
        shared_engine(model, sync="merged", kv_cache_gib=1, gpu_memory_utilization=0.3, sleep=False,
                      max_context=131072)  # fmt: skip
    _one_line(error)


def test_truncated_mass_is_one_minus_the_kept_mass_and_kept_apart_from_the_kernel_mismatch() -> None:
    # a token with π = 0.2 drawn by a sampler that kept 80 % of the mass: it reports 0.2 / 0.8 = 0.25
    old, truncated = torch.log(torch.tensor([[0.2, 0.5]])), torch.log(torch.tensor([[0.25, 0.5]]))
    meter = MismatchMeter()
    meter.add(old, truncated, torch.ones(1, 2), truncated=True)
    out = meter.pop()
    assert math.isclose(out["sampler_truncated_mass_mean"], 0.1, abs_tol=1e-6)
    assert math.isclose(out["sampler_truncated_mass_max"], 0.2, abs_tol=1e-6)
    assert math.isnan(out["sampler_logp_diff_mean"])  # no kernel mismatch claimed from truncated values
    meter.add(old, old + 1e-3, torch.ones(1, 2))
    assert set(meter.pop()) == {"sampler_logp_diff_mean", "sampler_logp_diff_max"}


def test_lampo_takes_pi_old_from_a_teacher_forced_pass_when_vllm_truncates(monkeypatch: pytest.MonkeyPatch) -> None:
    recorded, teacher = torch.full((2, 3), -0.5), torch.full((2, 3), -1.5)

    def old_of(sampling: SamplingParams) -> torch.Tensor:
        module = LamPOModule(sampling=sampling)
        monkeypatch.setattr(module, "logprobs_no_grad", lambda traj: teacher)
        rollout: Any = type("R", (), {"sampled_logprobs": recorded})()
        _, confidence = module.old_policy_logprobs(None, rollout)  # type: ignore[arg-type]
        return confidence

    assert SamplingParams(engine="vllm", top_p=0.9).logprobs_truncated
    assert not SamplingParams(engine="native", top_p=0.9).logprobs_truncated
    assert torch.equal(old_of(SamplingParams(engine="vllm", top_k=5)), teacher)
    assert torch.equal(old_of(SamplingParams(engine="vllm", top_p=0.9)), teacher)
    assert torch.equal(old_of(SamplingParams(engine="vllm")), recorded)  # untruncated: the sampler's own
    assert torch.equal(old_of(SamplingParams(engine="native", top_p=0.9)), recorded)  # recorded before truncation


def test_the_run_seed_is_saved_in_the_checkpoint_and_used_on_resume(monkeypatch: pytest.MonkeyPatch) -> None:
    seeds: list[int] = []

    def fake_rollout(*args: Any, seed: int, **kwargs: Any) -> str:
        seeds.append(seed)
        return "rollout"

    monkeypatch.setattr("lampo_pl.sampling_rounds.generate_rollout", fake_rollout)
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")
    first = LamPOModule(group_size=2)
    first.policy_model = torch.nn.Linear(1, 1)
    first.collect_rollout([], [])
    checkpoint: dict[str, Any] = {"state_dict": {}}
    first.on_save_checkpoint(checkpoint)
    monkeypatch.setenv("PL_GLOBAL_SEED", "9")  # LightningCLI drew another seed for the resumed call
    resumed = LamPOModule(group_size=2)
    resumed.policy_model = torch.nn.Linear(1, 1)
    resumed.on_load_checkpoint(checkpoint)
    resumed.collect_rollout([], [])
    assert seeds == [step_seed(5, 0, 0), step_seed(5, 0, 0)]
    fresh = LamPOModule(group_size=2)  # a new run takes the new seed
    fresh.policy_model = torch.nn.Linear(1, 1)
    fresh.collect_rollout([], [])
    assert seeds[-1] == step_seed(9, 0, 0)


def test_the_step_logs_truncated_mass_not_a_kernel_mismatch_when_vllm_truncates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lampo_pl.trajectory import Trajectory

    def step_metrics(sampling: SamplingParams) -> dict[str, float]:
        module = LamPOModule(sampling=sampling, group_size=2)
        logp = torch.log(torch.tensor([[0.2, 0.5], [0.4, 0.5]]))  # [2, 2] the trainer's π_old (μ = 1)
        monkeypatch.setattr(module, "policy_logprobs", lambda view, with_entropy=False: (logp, None))
        view = Trajectory(input_ids=torch.zeros(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 3),
                          prompt_len=1, loss_mask=torch.ones(2, 2), keep=torch.ones(2, dtype=torch.bool),
                          advantages=torch.tensor([1.0, -1.0]), sampler_logprobs=logp - math.log(0.8))  # fmt: skip
        module.micro_batch_loss(view, torch.full((2,), 0.5))
        return module.mismatch.pop()

    truncated = step_metrics(SamplingParams(engine="vllm", top_k=5))
    assert math.isclose(truncated["sampler_truncated_mass_mean"], 0.2, abs_tol=1e-6)
    assert math.isnan(truncated["sampler_logp_diff_mean"])
    full = step_metrics(SamplingParams(engine="vllm"))
    assert math.isclose(full["sampler_logp_diff_mean"], -math.log(0.8), abs_tol=1e-6)
    assert "sampler_truncated_mass_mean" not in full
