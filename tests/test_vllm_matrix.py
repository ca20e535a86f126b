"""Every quantisation × LoRA targets × sync mode the vLLM engine can be given: exact, or refused in one line.

For each cell of {none, 4bit, 8bit} × {all-linear, [q_proj, v_proj], [gate_proj]} × {merged, lora} on the
tiny head_dim-32 Qwen3, the engine's log-probs of the responses it samples equal the trainer's
teacher-forced log-probs of the same tokens (within 1e-4, the bound tests/test_vllm.py holds the
all-linear case to) before and after optimiser steps, for the policy and for the base (adapters off),
or the cell is refused at settings time with a one-line message (asserted). The rank is 12, which vLLM
does not serve: ``vllm_sync: lora`` rounds it up to 16 (issue 21, items 1-3). One engine per cell.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from test_vllm import needs_vllm  # tests/ is on sys.path under pytest (no package)

from lampo_pl.logprobs import token_logprobs
from lampo_pl.module import LamPOModule
from lampo_pl.policy import load_policy, trainable_parameters
from lampo_pl.rollout import Rollout, SamplingParams, generate_rollout
from lampo_pl.settings import LoraArgs
from lampo_pl.vllm_checks import VllmCombinationError
from lampo_pl.vllm_engine import close_engine, shared_engine

MODEL = "tiny:qwen3-hd32"
TOLERANCE = 1e-4  # what the all-linear, unquantised case meets (tests/test_vllm.py)
QUANTIZATIONS = ("none", "4bit", "8bit")
TARGETS = {"all-linear": "all-linear", "q_v": ["q_proj", "v_proj"], "gate": ["gate_proj"]}
SYNCS = ("merged", "lora")
CELLS = list(itertools.product(QUANTIZATIONS, TARGETS, SYNCS))
REFUSED = {"8bit": r"^model\.lora\.quantization=8bit with model\.sampling\.engine=vllm: .*int8 matmul quantises"}


pytestmark = needs_vllm


def _sampling(sync: str, **changes: Any) -> SamplingParams:
    return SamplingParams(engine="vllm", temperature=1.0, max_new_tokens=8, vllm_sync=sync, **changes)  # type: ignore[arg-type]


def _id(cell: tuple[str, str, str]) -> str:
    return "-".join(cell)


@pytest.fixture(scope="module", params=[c for c in CELLS if c[0] not in REFUSED], ids=_id)
def cell(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Any, str]]:
    quantization, targets, sync = request.param
    model, tokenizer = load_policy(MODEL, quantization=quantization, lora_r=12, lora_alpha=24,
                                   target_modules=TARGETS[targets])  # fmt: skip
    with torch.no_grad():  # a policy adapter that differs from the base (a fresh LoRA has B = 0)
        generator = torch.Generator().manual_seed(0)
        for name, param in model.named_parameters():
            if "lora_B" in name and ".policy." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    yield model, tokenizer, sync
    close_engine(model)


def _prompts(tokenizer: Any) -> list[str]:
    questions = ["What is 3 + 4?", "Add 7 and 8."]
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                          add_generation_prompt=True) for q in questions]  # fmt: skip


def _engine_gap(model: Any, tokenizer: Any, sync: str, seed: int) -> tuple[float, Rollout]:
    """Max |engine log-prob − teacher-forced log-prob| over the sampled response tokens."""
    rollout = generate_rollout(model, tokenizer, _prompts(tokenizer), 2, _sampling(sync), record_logprobs=True,
                               seed=seed)  # fmt: skip
    assert rollout.sampled_logprobs is not None
    was_training = model.training
    model.eval()
    with torch.no_grad():
        teacher, _ = token_logprobs(model, rollout.input_ids, rollout.attention_mask, rollout.prompt_len)
    model.train(was_training)
    mask = rollout.response_mask.bool()
    assert int(mask.sum()) > 0
    return float((teacher[:, : mask.shape[1]] - rollout.sampled_logprobs)[mask].abs().max()), rollout


def test_engine_log_probs_equal_the_trainers_before_and_after_optimiser_steps(cell: tuple[Any, Any, str]) -> None:
    model, tokenizer, sync = cell
    gap, rollout = _engine_gap(model, tokenizer, sync, seed=0)
    assert gap < TOLERANCE
    optimiser = torch.optim.AdamW(trainable_parameters(model), lr=0.05)
    for _ in range(2):  # move the policy well beyond the tolerance
        optimiser.zero_grad()
        logp, _ = token_logprobs(model, rollout.input_ids, rollout.attention_mask, rollout.prompt_len)
        (-(logp * rollout.response_mask).sum()).backward()
        optimiser.step()
    gap, _ = _engine_gap(model, tokenizer, sync, seed=1)
    assert gap < TOLERANCE
    with model.disable_adapter():  # the base, as evaluation's `base` samples it
        gap, _ = _engine_gap(model, tokenizer, sync, seed=2)
    assert gap < TOLERANCE
    if sync == "lora":
        assert shared_engine(model, sync=sync, kv_cache_gib=1, gpu_memory_utilization=0.3, sleep=False,
                             max_context=None).llm.llm_engine.vllm_config.lora_config.max_lora_rank == 16  # fmt: skip


@pytest.mark.parametrize(
    ("quantization", "targets", "sync"), [pytest.param(*c, id=_id(c)) for c in CELLS if c[0] in REFUSED]
)
def test_cells_that_cannot_be_exact_are_refused_in_one_line_at_settings_time(
    quantization: str, targets: str, sync: str
) -> None:
    lora = LoraArgs(quantization=quantization, target_modules=TARGETS[targets], r=12)  # type: ignore[arg-type]
    with pytest.raises(VllmCombinationError, match=REFUSED[quantization]) as error:
        LamPOModule(model=MODEL, lora=lora, sampling=_sampling(sync))
    assert "\n" not in str(error.value)


def test_8bit_forward_is_no_function_of_its_dequantised_weights() -> None:
    """Why 8-bit is refused: in eval mode (π_old, π_ref, the native sampler) bitsandbytes' LLM.int8 matmul
    quantises the activations too, so no weight matrix pushed to the engine reproduces it (train mode on a
    CPU dequantises and is exact: bitsandbytes 0.50 ``autograd/_functions.py``, ``matmul``)."""
    import bitsandbytes as bnb

    model, _ = load_policy(MODEL, quantization="8bit", target_modules=["q_proj"], lora_r=8)
    layer = next(m for m in model.modules() if isinstance(m, bnb.nn.Linear8bitLt))
    weight = layer.weight.data.float() * (layer.weight.SCB.float()[:, None] / 127)  # [out, in] dequantised
    x = torch.randn(4, layer.in_features, generator=torch.Generator().manual_seed(0))  # [4, in]
    with torch.no_grad():
        layer.train()
        trained = layer(x)  # [4, out]
        layer.eval()
        evaluated = layer(x)  # [4, out]
    expected = torch.nn.functional.linear(x, weight)  # [4, out]
    assert (trained - expected).abs().max() < 1e-5
    assert (evaluated - expected).abs().max() > 10 * TOLERANCE
