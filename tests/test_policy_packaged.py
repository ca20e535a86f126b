"""The packaged SmolLM2-135M-Instruct as a policy (slow: ~40 s GGUF conversion on first use, then cached).

Uses the real cache (``$LAMPO_CACHE`` or ``~/.cache/lampo_pl``) so the conversion happens once per machine.
"""

from __future__ import annotations

import pytest
import torch

from lampo_pl.logprobs import token_logprobs
from lampo_pl.policy import load_policy, trainable_parameters
from lampo_pl.rollout import SamplingParams, generate_rollout

pytestmark = pytest.mark.slow


def test_smollm2_loads_generates_and_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tokenizer = load_policy("packaged:smollm2-135m-instruct", lora_r=8)
    assert model.get_base_model().config.model_type == "llama"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # SmolLM2's own choice: pad == eos
    messages = [{"role": "user", "content": "What is 2 + 3? Answer with a number."}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    torch.manual_seed(0)
    rollout = generate_rollout(model, tokenizer, [prompt], 2, SamplingParams(temperature=0.0, max_new_tokens=24))
    assert "5" in rollout.texts[0]
    assert rollout.response_lengths.min() > 0
    logp, _ = token_logprobs(model, rollout.input_ids, rollout.attention_mask, rollout.prompt_len)
    kept = rollout.response_mask.bool()
    # Greedy tokens are likely under the model, and the gradient reaches the policy adapter.
    assert logp[kept].exp().mean() > 0.5
    (logp * rollout.response_mask).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable_parameters(model))
