"""The native decode loop and merged-LoRA sampling (issue 7): generate()'s greedy tokens bit for bit, the exact
sampling distribution, weights restored untouched."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from test_rollout import _boost_eos, _prompts  # tests/ is on sys.path under pytest (no package)
from transformers import AutoModelForCausalLM

from lampo_pl.decode import decode, next_tokens, sample_categorical
from lampo_pl.lora_merge import mergeable_layers, merged_adapter
from lampo_pl.policy import is_zero_adapter, load_policy
from lampo_pl.rollout import SamplingParams, generate_rollout, left_pad


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LAMPO_CACHE", str(tmp_path_factory.getbasetemp() / "lampo_cache"))
    yield


def _trained_policy(arch: str) -> tuple[PeftModel, object]:
    """A tiny policy whose `policy` adapter is not zero (so merging changes the weights) and that ends
    responses at varied lengths (so rows finish at different steps)."""
    model, tokenizer = load_policy(f"tiny:{arch}", lora_r=4)
    _boost_eos(model, tokenizer.eos_token_id, bias=0.5)  # greedy lengths 3, 7 and none within 12 (qwen3)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B.policy" in name:
                param.normal_(0, 0.2)
    model.eval()
    return model, tokenizer


def _chi2_ok(counts: torch.Tensor, probs: torch.Tensor) -> bool:
    """Pearson's χ² of `counts` against `probs`, below the 99.9th percentile (Wilson-Hilferty approximation)."""
    n = counts.sum()
    keep = probs * n >= 5  # cells with enough expected counts; the rest pooled into one
    expected = torch.cat([probs[keep] * n, (probs[~keep].sum() * n)[None]])
    observed = torch.cat([counts[keep], counts[~keep].sum()[None]]).double()
    chi2 = float(((observed - expected) ** 2 / expected.clamp_min(1e-12)).sum())
    dof = int(keep.sum())  # cells - 1, with the pooled cell
    z = 3.09  # 99.9 %
    limit = dof * (1 - 2 / (9 * dof) + z * (2 / (9 * dof)) ** 0.5) ** 3
    return chi2 < limit


# ---- the sampler -----------------------------------------------------------------------------------


def test_sample_categorical_has_the_exact_distribution_and_never_picks_zero_mass() -> None:
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(50) * 2, dim=0)
    probs[[3, 17, 49]] = 0.0  # filtered tokens (top-k / top-p): never drawn, also at the ends
    draws = sample_categorical((probs * 7.0).expand(200_000, -1))  # unnormalised rows work too
    counts = torch.bincount(draws, minlength=50)
    assert counts[[3, 17, 49]].sum() == 0
    assert _chi2_ok(counts, probs / probs.sum())
    # The oracle: torch.multinomial (what generate() uses) draws from the same distribution.
    reference = torch.bincount(torch.multinomial(probs.expand(200_000, -1), 1).squeeze(1), minlength=50)
    assert (counts.double() / 2e5 - reference.double() / 2e5).abs().max() < 0.01


def test_sample_categorical_one_hot_and_bad_rows() -> None:
    one_hot = torch.zeros(4, 9)
    one_hot[torch.arange(4), torch.tensor([0, 8, 3, 3])] = 1.0
    assert sample_categorical(one_hot).tolist() == [0, 8, 3, 3]
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        sample_categorical(torch.tensor([[0.5, 0.5], [float("nan"), 1.0]]))
    with pytest.raises(ValueError, match=r"rows \[0\]"):
        sample_categorical(torch.zeros(1, 3))


def test_next_tokens_top_k_top_p_ban_and_logprobs() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 30).expand(60_000, -1).contiguous()  # one distribution, many draws
    banned = torch.tensor([int(logits[0].argmax())])
    tokens, logp = next_tokens(logits, temperature=0.7, top_k=8, top_p=0.9, banned=banned)
    # Expected, in generate()'s order: the ban (here the argmax) first, then the top 8 of the rest, then the
    # smallest prefix of those with mass >= 0.9; sampled from softmax(z / T) over what is kept.
    z = logits[0] / 0.7
    ranked = z.argsort(descending=True)
    top = ranked[1:9]
    p = torch.softmax(z[top], 0)
    kept = top[torch.cumsum(p, 0) - p < 0.9]
    target = torch.zeros(30)
    target[kept] = torch.softmax(z[kept], 0)
    counts = torch.bincount(tokens, minlength=30)
    assert set(tokens.unique().tolist()) == set(kept.tolist())
    assert _chi2_ok(counts, target)
    # Log-probs are π's at temperature T, before bans and warpers (what a teacher-forced pass computes).
    torch.testing.assert_close(logp, torch.log_softmax(z, 0)[tokens])
    greedy, greedy_logp = next_tokens(logits[:2], temperature=0.0, top_k=0, top_p=1.0, banned=None)
    assert greedy.tolist() == [int(ranked[0])] * 2
    torch.testing.assert_close(greedy_logp, torch.log_softmax(logits[0], 0)[greedy])


# ---- the loop against generate() --------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["qwen3", "phi3", "llama"])
@pytest.mark.parametrize("merge", [False, True])
def test_greedy_decode_equals_generate_bit_for_bit(arch: str, merge: bool) -> None:
    """The oracle is transformers' generate(): same tokens, same lengths, with and without left padding,
    with min_new_tokens, unmerged and merged (greedy argmax here has no near-ties to flip)."""
    model, tokenizer = _trained_policy(arch)
    eos, pad = [tokenizer.eos_token_id], tokenizer.pad_token_id
    ended_early = False
    for questions, min_new in ((None, 0), (["What is 3 + 4?"], 0), (None, 5)):
        prompts = _prompts(tokenizer) if questions is None else _prompts(tokenizer, questions)
        rows = [ids for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"] for _ in range(2)]
        ids, mask = left_pad(rows, pad, model.device)  # [n, p]
        with torch.no_grad():
            expected = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12,
                                      min_new_tokens=min_new, eos_token_id=eos, pad_token_id=pad,
                                      repetition_penalty=1.0)[:, ids.shape[1]:]  # fmt: skip
            with merged_adapter(model) if merge else torch.no_grad():
                tokens = decode(model, ids, mask, max_new_tokens=12, min_new_tokens=min_new, temperature=0.0,
                                top_k=0, top_p=1.0, eos_ids=eos, pad_id=pad).tokens  # fmt: skip
        assert torch.equal(tokens, expected), (arch, questions, min_new)
        ended_early |= bool(torch.isin(expected[:, :-1], torch.tensor(eos)).any())
        if min_new:
            assert not bool(torch.isin(tokens[:, :min_new], torch.tensor(eos)).any())
    assert ended_early, "some rows should end before the others and be padded"


def test_native_samples_follow_the_policy_and_record_teacher_forced_logprobs() -> None:
    """First tokens of 20k rows from one prompt follow softmax(z / T) of the model (χ²), with the adapter merged."""
    model, tokenizer = _trained_policy("qwen3")
    prompt = _prompts(tokenizer, ["What is 3 + 4?"])
    sampling = SamplingParams(temperature=0.8, max_new_tokens=1)
    torch.manual_seed(0)
    rollout = generate_rollout(model, tokenizer, prompt, 20_000, sampling, record_logprobs=True)
    ids = rollout.input_ids[:1, : rollout.prompt_len]
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids).logits[0, -1] / 0.8, dim=-1)  # [V], unmerged model
    counts = torch.bincount(rollout.response_ids[:, 0], minlength=probs.shape[0])
    assert _chi2_ok(counts, probs.double())
    assert rollout.sampled_logprobs is not None
    torch.testing.assert_close(rollout.sampled_logprobs[:, 0], probs.log()[rollout.response_ids[:, 0]],
                               rtol=1e-4, atol=1e-4)  # fmt: skip


def test_engines_agree_on_rollout_layout_and_generate_engine_is_transformers_own() -> None:
    model, tokenizer = _trained_policy("qwen3")
    model.train()
    prompts = _prompts(tokenizer)
    greedy = {
        engine: generate_rollout(model, tokenizer, prompts, 2, SamplingParams(0.0, max_new_tokens=10, engine=engine))
        for engine in ("native", "generate")
    }
    for field in ("input_ids", "attention_mask", "response_mask", "truncated"):
        assert torch.equal(getattr(greedy["native"], field), getattr(greedy["generate"], field)), field
    assert greedy["native"].texts == greedy["generate"].texts and model.training


# ---- merged-LoRA sampling ---------------------------------------------------------------------------


def test_merged_adapter_matches_the_unmerged_model_and_restores_every_weight_exactly() -> None:
    model, tokenizer = _trained_policy("qwen3")
    before = {name: (param, param.detach().clone()) for name, param in model.named_parameters()}
    ids = torch.tensor([tokenizer("What is 3 + 4?")["input_ids"]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with merged_adapter(model) as merged:
            fused = model(input_ids=ids).logits
            assert merged and all(layer.disable_adapters for layer in mergeable_layers(model, "policy"))
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    after = dict(model.named_parameters())
    assert after.keys() == before.keys()
    for name, (param, value) in before.items():
        assert after[name] is param and torch.equal(param, value), name  # the same tensors, bit for bit
    assert not any(layer.disable_adapters for layer in mergeable_layers(model, "policy"))
    with pytest.raises(RuntimeError, match="boom"), merged_adapter(model):
        raise RuntimeError("boom")
    assert all(after[name] is param and torch.equal(param, value) for name, (param, value) in before.items())


def test_merge_is_skipped_where_it_would_not_be_exact() -> None:
    model, _ = load_policy("tiny:qwen3", lora_r=4)
    base = model.get_base_model()
    with merged_adapter(base) as merged:  # no adapters at all
        assert not merged
    dora = get_peft_model(AutoModelForCausalLM.from_config(base.config),
                          LoraConfig(r=4, target_modules="all-linear", use_dora=True))  # fmt: skip
    assert mergeable_layers(dora, "default") == []
    assert not is_zero_adapter(dora, "default")  # B = 0, but DoRA's magnitude rescales W: not the base
    with merged_adapter(dora) as merged:
        assert not merged
    assert len(mergeable_layers(model, "policy")) == 14  # 2 layers × (q, k, v, o, gate, up, down)


def test_adapters_switched_off_sample_the_base_model_not_a_merged_policy() -> None:
    """Evaluating ``base`` runs the sampler inside ``disable_adapter()``: merging the policy there would
    silently evaluate the policy instead."""
    model, tokenizer = _trained_policy("qwen3")
    greedy = SamplingParams(temperature=0.0, max_new_tokens=10)
    with model.disable_adapter():
        base = generate_rollout(model, tokenizer, _prompts(tokenizer), 1, greedy)
        with merged_adapter(model) as merged:
            assert not merged
    policy = generate_rollout(model, tokenizer, _prompts(tokenizer), 1, greedy)
    reference = generate_rollout(model, tokenizer, _prompts(tokenizer), 1, replace(greedy, engine="generate"))
    with model.disable_adapter():
        base_generate = generate_rollout(model, tokenizer, _prompts(tokenizer), 1, replace(greedy, engine="generate"))
    assert torch.equal(base.input_ids, base_generate.input_ids)
    assert torch.equal(policy.input_ids, reference.input_ids)
    assert not torch.equal(base.input_ids, policy.input_ids)


def test_a_model_the_loop_cannot_drive_gets_a_clear_error() -> None:
    class OldStyle(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> None: ...

    with pytest.raises(ValueError, match=r"OldStyle.forward takes no position_ids, past_key_values.*engine: generate"):
        decode(OldStyle(), torch.ones(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.long), max_new_tokens=1,
               min_new_tokens=0, temperature=1.0, top_k=0, top_p=1.0, eos_ids=[0], pad_id=0)  # fmt: skip
