"""Supervised warm-up: the batch layout, the loss against transformers' own, training what requires grad,
and the warmed-up tiny model's partial competence (the cheap ablation policy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lampo_pl.data.prompting import render_prompt
from lampo_pl.data.synthetic import generate_synthetic
from lampo_pl.logprobs import position_ids_from_mask
from lampo_pl.policy import adapter_state, load_policy
from lampo_pl.rewards import RewardSpec, score_responses
from lampo_pl.rollout import SamplingParams, generate_rollout
from lampo_pl.tiny import tiny_model, tiny_tokenizer
from lampo_pl.warmup import WarmupArgs, sft_batch, sft_loss, supervised_warmup

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


def pairs(n: int = 6) -> tuple[list[str], list[str]]:
    tokenizer = tiny_tokenizer()
    problems = generate_synthetic(n, levels=(1, 3))  # two lengths of prompt and of solution
    return [render_prompt(tokenizer, q) for q in problems], [q.solution or "" for q in problems]


def test_sft_batch_is_the_rollout_layout() -> None:
    tokenizer = tiny_tokenizer()
    prompts, solutions = pairs()
    batch = sft_batch(tokenizer, prompts, solutions, CPU)
    p = batch.prompt_len
    for row, (prompt, solution) in enumerate(zip(prompts, solutions, strict=True)):
        head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        tail = [*tokenizer(solution, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        real = batch.attention_mask[row].bool()
        assert batch.input_ids[row][real].tolist() == head + tail  # left-padded prompt, then the solution and EOS
        assert batch.response_mask[row].sum() == len(tail) and batch.response_mask[row, : len(tail)].all()
        pad = p - len(head)
        assert batch.attention_mask[row, pad:p].all() and not batch.attention_mask[row, :pad].any()


def test_sft_loss_equals_transformers_cross_entropy() -> None:
    """The oracle: a causal LM's own ``labels=`` loss (mean CE over non-ignored tokens) on the same batch."""
    tokenizer, model = tiny_tokenizer(), tiny_model("qwen3", seed=3)
    prompts, solutions = pairs()
    batch = sft_batch(tokenizer, prompts, solutions, CPU)
    labels = batch.input_ids.clone()
    labels[:, : batch.prompt_len] = -100
    labels[:, batch.prompt_len :][batch.response_mask == 0] = -100
    expected = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     position_ids=position_ids_from_mask(batch.attention_mask), labels=labels).loss
    ours = sft_loss(model, batch, chunk_size=7)  # several chunks of the head
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_warmup_lowers_the_loss_and_trains_only_the_policy_adapter() -> None:
    model, tokenizer = load_policy("tiny:qwen3", lora_r=8, lora_alpha=16)
    prompts, solutions = pairs(16)
    base = {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" not in k}
    reference = adapter_state(model, "reference")
    before = float(sft_loss(model, sft_batch(tokenizer, prompts, solutions, CPU)).detach())
    losses = supervised_warmup(model, tokenizer, prompts, solutions, WarmupArgs(steps=15, batch_size=8, lr=1e-2))
    after = float(sft_loss(model, sft_batch(tokenizer, prompts, solutions, CPU)).detach())
    assert len(losses) == 15 and after < before - 0.5  # measured 6.96 -> 6.24 nats per token
    assert all(torch.equal(v, dict(model.named_parameters())[k]) for k, v in base.items()), "base must stay frozen"
    assert all(torch.equal(v, adapter_state(model, "reference")[k]) for k, v in reference.items())
    assert any(not torch.equal(v, reference[k]) for k, v in adapter_state(model, "policy").items())


def test_warmup_is_deterministic() -> None:
    prompts, solutions = pairs(8)
    runs = []
    for _ in range(2):
        model = tiny_model("qwen3")
        runs.append(supervised_warmup(model, tiny_tokenizer(), prompts, solutions, WarmupArgs(steps=3, batch_size=3)))
    assert runs[0] == runs[1]


def test_warmup_rejects_bad_input() -> None:
    model, tokenizer = tiny_model("qwen3"), tiny_tokenizer()
    with pytest.raises(ValueError, match="equally many"):
        supervised_warmup(model, tokenizer, ["a", "b"], ["x"], WarmupArgs(steps=1))
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to warm up"):
        supervised_warmup(model, tokenizer, ["a"], ["x"], WarmupArgs(steps=1))
    with pytest.raises(ValueError, match="batch_size"):
        WarmupArgs(batch_size=0)


def test_warmed_tiny_model_has_partial_competence() -> None:
    """The ablation policy must start well between 0 and 1, or no method has anything to learn."""
    model, tokenizer = load_policy("tiny:qwen3-sft")
    problems = generate_synthetic(32, levels=(1,), split="test")
    torch.manual_seed(0)
    rollout = generate_rollout(model, tokenizer, [render_prompt(tokenizer, q) for q in problems], 4,
                               SamplingParams(temperature=1.0, max_new_tokens=32))
    scored = score_responses(rollout.texts, [q for q in problems for _ in range(4)], [RewardSpec("correctness", 1.0)])
    accuracy = sum(scored.correct) / len(scored.correct)
    assert 0.3 < accuracy < 0.85, accuracy


def test_tiny_sft_steps_in_the_name_build_their_own_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``tiny:qwen3-sft<N>`` stops the warm-up after N steps (the ``tiny-room`` ablation's weaker start)."""
    from lampo_pl.policy import check_model_available, resolve_model_source

    monkeypatch.setenv("LAMPO_CACHE", str(tmp_path))
    short = Path(resolve_model_source("tiny:qwen3-sft3"))
    assert short.name.startswith("tiny-qwen3-sft3-v")
    other = Path(resolve_model_source("tiny:qwen3-sft4"))
    assert load_file(short / "model.safetensors").keys() == load_file(other / "model.safetensors").keys()
    assert any(not torch.equal(a, load_file(other / "model.safetensors")[k])
               for k, a in load_file(short / "model.safetensors").items())  # one more step moved the weights
    for bad in ("tiny:qwen3-sft0", "tiny:qwen3-sftx", "tiny:gpt2-sft10"):
        with pytest.raises(ValueError, match="tiny:<arch>-sft<steps>"):
            check_model_available(bad)


# ---- lampo warmup: the cold start from YAML, then RL from its adapter (issue 14) ---------------------


def test_lampo_warmup_then_fit_from_its_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lampo_pl.cli import build_cli, main

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "warm"
    main(["warmup", "-c", str(root / "configs/warmup/smoke.yaml"), "--out", str(out), "--limit", "16",
          "--warmup.steps", "2", "--warmup.batch_size", "4"])
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny:qwen3" and config["r"] == 8
    warmed = load_file(out / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in warmed.items())  # it trained

    cli = build_cli(["-c", str(root / "configs/smoke.yaml"), "--model.lora.init_adapter", str(out),
                     "--trainer.max_steps", "1", "--trainer.logger", "false", "--trainer.callbacks", "[]",
                     "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"],
                    run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    reference = adapter_state(cli.model.policy_model, "reference")  # both adapters start from the warm-up
    assert all(torch.equal(reference[k], warmed[k.replace("reference.", "")]) for k in reference
               if k.replace("reference.", "") in warmed)
    assert reference.keys() and {k.replace("reference.", "") for k in reference} <= set(warmed)


def test_lampo_warmup_refuses_bad_settings_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lampo_pl.cli import main

    with pytest.raises(SystemExit):
        main(["warmup", "--out", str(tmp_path / "w"), "--warmup.batch_size", "0"])
    assert capsys.readouterr().err.strip() == "lampo warmup: error: warmup.batch_size=0: allowed an integer >= 1"
    with pytest.raises(SystemExit):
        main(["warmup", "--out", str(tmp_path / "w"), "--lora.r", "0"])
    assert capsys.readouterr().err.strip() == "lampo warmup: error: lora.r=0: allowed an integer >= 1"
    (tmp_path / "mine").mkdir()
    with pytest.raises(SystemExit):
        main(["warmup", "--out", str(tmp_path / "mine"), "--overwrite", "true"])
    assert "is not an adapter folder" in capsys.readouterr().err
