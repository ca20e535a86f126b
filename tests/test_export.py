"""Adapter folders load with plain peft; the merged export generates what the adapter-wrapped policy does."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from lampo_pl import cli
from lampo_pl.callbacks.adapter import save_policy_adapter
from lampo_pl.export import export_merged
from lampo_pl.policy import POLICY_ADAPTER, adapter_state, resolve_model_source

PROMPT = "Compute 2 + 3."


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, trained_tiny_policy: Callable) -> tuple[PeftModel, Path]:
    """The tiny policy with random LoRA B (as if trained: a fresh LoRA is the identity), saved as AdapterExport does."""
    model, tokenizer = trained_tiny_policy(4, 8)
    folder = save_policy_adapter(
        SimpleNamespace(policy_model=model, tokenizer=tokenizer), tmp_path_factory.mktemp("run") / "adapter"
    )
    return model.eval(), folder


def greedy(model: torch.nn.Module, tokenizer: object, max_new_tokens: int = 12) -> list[int]:
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]  # type: ignore[operator]
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
        )
    return out[0, ids.shape[1] :].tolist()


def test_adapter_folder_is_peft_format_without_base_weights(trained: tuple[PeftModel, Path]) -> None:
    model, folder = trained
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)
    base = AutoModelForCausalLM.from_pretrained(resolve_model_source("tiny:qwen3"))
    loaded = PeftModel.from_pretrained(base, str(folder))  # plain peft, default adapter name
    expected, got = adapter_state(model, POLICY_ADAPTER), adapter_state(loaded, "default")
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


def test_merged_export_generates_like_the_adapter_wrapped_policy(
    trained: tuple[PeftModel, Path], tmp_path: Path
) -> None:
    model, folder = trained
    out = export_merged(folder, tmp_path / "merged")
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in out.iterdir()
    }
    assert not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template  # the training chat template travels with the model
    policy_tokens = greedy(model, tokenizer)
    assert greedy(merged, tokenizer) == policy_tokens
    with model.disable_adapter():
        assert greedy(model, tokenizer) != policy_tokens  # the adapter matters, so the match means something
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4, rtol=1e-4)


def test_lampo_export_command(trained: tuple[PeftModel, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, folder = trained
    out = tmp_path / "merged"
    argv = [
        "lampo",
        "export",
        "--adapter",
        str(folder),
        "--out",
        str(out),
        "--model",
        "tiny:qwen3",
        "--dtype",
        "bfloat16",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    cli.main()
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with pytest.raises(FileExistsError):
        monkeypatch.setattr(sys, "argv", argv)
        cli.main()
