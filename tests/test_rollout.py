"""Group rollouts: layout, EOS masks (pad == eos too), context checks, agreement with generate's own scores."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from peft import PeftModel
from torch import nn
from transformers import PreTrainedTokenizerBase

from lampo_pl.logprobs import token_logprobs
from lampo_pl.policy import load_policy
from lampo_pl.rollout import Rollout, SamplingParams, generate_rollout, response_mask_from_ids

QUESTIONS = ["What is 3 + 4?", "Alice has 17 apples and Bob gives her 25 more. How many now?", "Hi"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LAMPO_CACHE", str(tmp_path_factory.getbasetemp() / "lampo_cache"))
    yield


def _prompts(tokenizer: PreTrainedTokenizerBase, questions: list[str] = QUESTIONS) -> list[str]:
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in questions
    ]


def _boost_eos(model: PeftModel, eos_id: int, bias: float = 4.0) -> None:
    """Give the output head a bias towards EOS (~10% per step) so responses end at varied lengths."""
    base = model.get_base_model()
    old = base.lm_head
    head = nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[eos_id] = bias
    base.lm_head = head


def test_response_mask_from_ids_by_hand() -> None:
    eos = 2
    ids = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 2, 2, 2], [9, 9, 9, 2]])  # [N=4, L=4]
    mask, truncated = response_mask_from_ids(ids, [eos, 99])
    # row 0: first EOS at column 1 -> keep columns 0..1; row 1: no EOS -> all 4, truncated;
    # row 2: EOS first (pad == eos fill after it) -> 1; row 3: EOS last -> all 4, not truncated.
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert truncated.tolist() == [False, True, False, False]


def test_layout_groups_and_prompt_columns() -> None:
    model, tokenizer = load_policy("tiny:qwen3", lora_r=4)
    prompts = _prompts(tokenizer)
    torch.manual_seed(0)
    rollout = generate_rollout(model, tokenizer, prompts, group_size=2, sampling=SamplingParams(max_new_tokens=6))
    n, width = rollout.input_ids.shape
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    assert n == 6
    assert rollout.prompt_len == max(len(e) for e in encoded) and width == rollout.prompt_len + 6
    for row in range(n):
        prompt = encoded[row // 2]
        assert rollout.input_ids[row, rollout.prompt_len - len(prompt) : rollout.prompt_len].tolist() == prompt
        assert rollout.attention_mask[row, : rollout.prompt_len].sum() == len(prompt)
    assert torch.equal(rollout.attention_mask[:, rollout.prompt_len :], rollout.response_mask)
    assert torch.equal(rollout.response_lengths, rollout.response_mask.sum(1))
    assert rollout.generation_seconds > 0
    assert len(rollout.texts) == n and model.training  # train mode restored


def _check_masks(rollout: Rollout, eos_id: int, max_new_tokens: int) -> None:
    for row in range(rollout.input_ids.shape[0]):
        response = rollout.response_ids[row].tolist()
        length = int(rollout.response_lengths[row])
        if eos_id in response:
            assert length == response.index(eos_id) + 1 and not rollout.truncated[row]
        else:
            assert length == max_new_tokens and rollout.truncated[row]
        assert rollout.response_mask[row].tolist() == [1] * length + [0] * (len(response) - length)


def test_masks_stop_at_first_eos_even_when_pad_is_eos() -> None:
    """SmolLM2 has pad == eos: masks must come from the first EOS, never from ids != pad."""
    sampling = SamplingParams(max_new_tokens=12)
    rollouts = {}
    for pad_is_eos in (False, True):
        model, tokenizer = load_policy("tiny:qwen3", lora_r=4)
        _boost_eos(model, tokenizer.eos_token_id)
        if pad_is_eos:
            tokenizer.pad_token = tokenizer.eos_token
        torch.manual_seed(3)
        rollout = generate_rollout(model, tokenizer, _prompts(tokenizer, QUESTIONS[:1]), 16, sampling)
        _check_masks(rollout, tokenizer.eos_token_id, sampling.max_new_tokens)
        assert all(tokenizer.eos_token not in text for text in rollout.texts)
        rollouts[pad_is_eos] = rollout
    ended, cut = (~rollouts[True].truncated).sum(), rollouts[True].truncated.sum()
    assert ended > 0 and cut > 0  # both cases seen
    assert len(set(rollouts[True].response_lengths.tolist())) > 2  # responses end at varied lengths
    # Same seed, one prompt (no left padding): identical tokens and masks whatever the pad id.
    assert torch.equal(rollouts[False].response_mask, rollouts[True].response_mask)
    kept = rollouts[True].response_mask.bool()
    assert torch.equal(rollouts[False].response_ids[kept], rollouts[True].response_ids[kept])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_teacher_forced_log_probs_match_the_sampler(temperature: float) -> None:
    """token_logprobs on the rollout's tokens == log_softmax of the (temperature-scaled) scores generate used.
    (The generate engine: its tokens for a seed are transformers' own. The native engine: tests/test_decode.py.)"""
    model, tokenizer = load_policy("tiny:qwen3", lora_r=4)
    _boost_eos(model, tokenizer.eos_token_id, bias=3.0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B.policy" in name:
                param.normal_(0, 0.2)
    sampling = SamplingParams(temperature=temperature, max_new_tokens=10, engine="generate", merge_lora=False)
    torch.manual_seed(0)
    rollout = generate_rollout(model, tokenizer, _prompts(tokenizer), 2, sampling)
    prompt_ids = rollout.input_ids[:, : rollout.prompt_len]  # [N, P]
    prompt_mask = rollout.attention_mask[:, : rollout.prompt_len]  # [N, P]
    model.eval()
    torch.manual_seed(0)  # the same draws: the same tokens, and the scores the sampler used
    out = model.generate(
        input_ids=prompt_ids, attention_mask=prompt_mask, do_sample=True, temperature=temperature, top_p=1.0,
        top_k=0, max_new_tokens=10, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        output_scores=True, return_dict_in_generate=True,
    )  # fmt: skip
    model.train()
    assert torch.equal(out.sequences[:, rollout.prompt_len :], rollout.response_ids)
    scores = torch.stack(out.scores, dim=1)  # [N, L, V] after the temperature warper
    sampler = torch.log_softmax(scores, -1).gather(-1, rollout.response_ids[..., None]).squeeze(-1)  # [N, L]
    logp, _ = token_logprobs(
        model, rollout.input_ids, rollout.attention_mask, rollout.prompt_len, temperature=temperature
    )
    kept = rollout.response_mask.bool()
    torch.testing.assert_close(logp[kept], sampler[kept], rtol=1e-4, atol=1e-4)


def test_greedy_groups_are_identical_and_splitting_batches_changes_nothing() -> None:
    model, tokenizer = load_policy("tiny:qwen3", lora_r=4)
    _boost_eos(model, tokenizer.eos_token_id, bias=3.0)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=8)
    whole = generate_rollout(model, tokenizer, _prompts(tokenizer), 3, greedy)
    split = generate_rollout(model, tokenizer, _prompts(tokenizer), 3, greedy, generation_batch_size=4)
    for b in range(3):
        group = whole.response_ids[3 * b : 3 * b + 3]
        assert (group == group[0]).all()
    assert split.prompt_len == whole.prompt_len
    assert torch.equal(split.response_mask.sum(1), whole.response_mask.sum(1))
    kept = whole.response_mask.bool()
    assert torch.equal(split.response_ids[kept], whole.response_ids[kept])
    assert torch.equal(split.input_ids[:, : split.prompt_len], whole.input_ids[:, : whole.prompt_len])


def test_prompt_longer_than_the_context_is_rejected() -> None:
    model, tokenizer = load_policy("tiny:qwen3", lora_r=4)
    prompts = _prompts(tokenizer)
    length = len(tokenizer(prompts[1], add_special_tokens=False)["input_ids"])
    with pytest.raises(ValueError, match=rf"prompt 1 has {length} tokens.*max_new_tokens=16"):
        generate_rollout(model, tokenizer, prompts, 2, SamplingParams(max_new_tokens=16), max_context=length + 15)
    with pytest.raises(ValueError, match="context 2048"):  # the model's max_position_embeddings
        generate_rollout(model, tokenizer, prompts, 2, SamplingParams(max_new_tokens=2048))
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        generate_rollout(model, tokenizer, [""], 2, SamplingParams(max_new_tokens=4))


def test_eval_mode_is_restored_and_sampling_params_validated() -> None:
    model, tokenizer = load_policy("tiny:qwen3", lora_r=4)
    model.eval()
    generate_rollout(model, tokenizer, _prompts(tokenizer)[:1], 1, SamplingParams(max_new_tokens=2))
    assert not model.training
    for bad in (dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=-1), dict(max_new_tokens=0)):
        with pytest.raises(ValueError, match=r"model\.sampling\.\w+="):
            SamplingParams(**bad)
