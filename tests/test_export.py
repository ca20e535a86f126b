"""Adapter folders load with plain peft; the merged export generates what the adapter-wrapped policy does."""

from __future__ import annotations

import json
import shutil
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
from lampo_pl.export import ExportError, export_merged
from lampo_pl.policy import POLICY_ADAPTER, AdapterError, adapter_state, resolve_model_source

PROMPT = "Compute 2 + 3."


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, trained_tiny_policy: Callable) -> tuple[PeftModel, Path]:
    """The tiny policy with random LoRA B (as if trained: a fresh LoRA is the identity), saved as AdapterExport does."""
    model, tokenizer = trained_tiny_policy(4, 8)
    folder = save_policy_adapter(
        SimpleNamespace(policy_model=model, tokenizer=tokenizer), tmp_path_factory.mktemp("run") / "adapter",
        base_model="tiny:qwen3",
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
    with pytest.raises(SystemExit) as exit_info:  # one line on stderr, status 2, no traceback
        cli.main()
    assert exit_info.value.code == 2
    monkeypatch.setattr(sys, "argv", [*argv, "--overwrite"])
    cli.main()  # an earlier export may be replaced
    assert (out / "model.safetensors").is_file()


# ---- export never deletes what it did not write (issue 13) -------------------------------------------


def test_overwrite_refuses_a_folder_with_files_export_did_not_write(trained: tuple[PeftModel, Path],
                                                                    tmp_path: Path) -> None:
    _, folder = trained
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match=r"did not write \(notes.txt\)"):
        export_merged(folder, out, model="tiny:qwen3", overwrite=True)
    assert (out / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("where", ["cwd", "adapter", "parent_of_adapter"])
def test_out_that_is_or_contains_the_adapter_or_working_folder_is_refused(
    trained: tuple[PeftModel, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    _, folder = trained
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    out = {"cwd": Path("."), "adapter": folder, "parent_of_adapter": folder.parent}[where]
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ExportError, match="is or contains the"):
        export_merged(folder, out, model="tiny:qwen3", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == before


def test_overwrite_swaps_an_earlier_export_whole(trained: tuple[PeftModel, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _, folder = trained
    out = export_merged(folder, tmp_path / "merged", model="tiny:qwen3")
    first = (out / "model.safetensors").read_bytes()

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", fail)  # the new export fails before it is complete
    with pytest.raises(OSError, match="disk full"):
        export_merged(folder, out, model="tiny:qwen3", overwrite=True)
    assert (out / "model.safetensors").read_bytes() == first  # the old export is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # and no temporary is left


def test_adapter_records_the_public_model_name(trained: tuple[PeftModel, Path]) -> None:
    _, folder = trained
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny:qwen3"


def test_adapter_folder_without_or_with_truncated_weights_is_named(trained: tuple[PeftModel, Path],
                                                                   tmp_path: Path) -> None:
    _, folder = trained
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    weights = broken / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterError, match=f"adapter weights {weights} are damaged or truncated"):
        export_merged(broken, tmp_path / "out")
    weights.unlink()
    with pytest.raises(AdapterError, match=f"adapter folder {broken} has no weights file"):
        export_merged(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()
