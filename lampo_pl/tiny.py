"""Tiny models and a tiny tokenizer, built offline in well under a second, for tests and smoke runs.

Why these exist: this project is developed and tested with no model hub, and a real vocabulary
makes even a 2-layer model slow (the 152k Qwen vocabulary makes a tiny model ~30× slower on CPU,
docs/ENVIRONMENT.md "Models without a hub"). So the tokenizer is a byte-level BPE of ~1k tokens
trained on a small built-in corpus of arithmetic and English, with ChatML special tokens and chat
template (the format Qwen3 and SmolLM2 use), and the models are randomly initialised 2-layer
Qwen3 / Phi3 (Phi-4-mini's architecture) / Llama (SmolLM2's) decoders built from configs.

Everything is deterministic: the same call gives the same tokenizer and the same weights, in any
process. `save_tiny` writes a model folder (safetensors + tokenizer) so that the ordinary
`from_pretrained` path, quantisation included, is what the tests exercise.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    Phi3Config,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen3Config,
)

# "qwen3-hd32": the tiny Qwen3 with head_dim 32, the smallest head vLLM's CPU attention runs
# (it supports 32, 64, 80, 96, 112, 128, 256: shared docs/VLLM.md); the vLLM engine's tests use it.
TinyArch = Literal["qwen3", "phi3", "llama", "qwen3-hd32"]

TINY_VERSION = 1  # bump when the corpus, tokenizer or configs change: cached tiny folders are keyed by it
TINY_VOCAB_SIZE = 1024
PAD_TOKEN = "<|endoftext|>"  # distinct from EOS on purpose: masks must not depend on pad == eos
BOS_CHAT_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_CHAT_TOKEN, EOS_TOKEN)

# ChatML, as Qwen3 and SmolLM2 use it (without their default system prompts).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_ENGLISH = """\
The quick brown fox jumps over the lazy dog. A careful student reads the question twice,
writes down what is known, and checks the answer at the end. Let us think step by step.
First, add the ones; then carry the tens. The result is the sum of both numbers.
If Alice has some apples and Bob gives her more, she has the total of the two amounts.
To subtract, take the smaller number away from the larger one. Multiplication is repeated
addition, and division splits a quantity into equal parts. The final answer is written in a box.
Please reason step by step, and put your final answer within \\boxed{}.
You are a helpful assistant. The user asks a question and the assistant answers it.
<think> I need to compute the value. </think> Therefore the answer is correct.
"""


def _corpus() -> list[str]:
    """A small fixed corpus: English prose, ChatML turns and arithmetic with boxed answers."""
    lines = _ENGLISH.splitlines()
    for a in range(0, 100, 3):
        for b in range(0, 100, 7):
            lines.append(
                f"<|im_start|>user\nWhat is {a} + {b}?<|im_end|>\n<|im_start|>assistant\n"
                f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}.<|im_end|>"
            )
            lines.append(f"{a * b} = {a} * {b}; {a + b} - {b} = {a}; what is {a} - {b}? It is {a - b}.")
    return lines


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    """Train the BPE once per process (< 1 s); callers get fresh wrapper objects from this JSON."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: lossless
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    return bpe.to_str()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh ~1k-token byte-level BPE tokenizer with ChatML tokens and chat template.

    EOS is ``<|im_end|>`` and PAD is ``<|endoftext|>`` (distinct); padding side is left, as for
    generation. A new object per call, so callers may mutate it freely.
    """
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="left",
        model_max_length=2048,
        chat_template=CHATML_TEMPLATE,
    )
    return tokenizer


def tiny_config(arch: TinyArch = "qwen3", vocab_size: int = TINY_VOCAB_SIZE) -> PretrainedConfig:
    """A 2-layer, hidden-64 decoder config of the given architecture, with the tiny tokenizer's ids."""
    tokenizer = tiny_tokenizer()
    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,  # a separate lm_head, as in the larger models we train
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    if arch == "qwen3":
        return Qwen3Config(head_dim=16, **common)
    if arch == "qwen3-hd32":
        return Qwen3Config(head_dim=32, **common)
    if arch == "phi3":
        # Phi3 fuses q/k/v into qkv_proj and gate/up into gate_up_proj (Phi-4-mini's layout).
        return Phi3Config(original_max_position_embeddings=2048, **common)
    if arch == "llama":
        return LlamaConfig(head_dim=16, **common)
    raise ValueError(f"unknown tiny architecture {arch!r}; expected one of qwen3, phi3, llama, qwen3-hd32")


def tiny_model(arch: TinyArch = "qwen3", vocab_size: int = TINY_VOCAB_SIZE, seed: int = 0) -> PreTrainedModel:
    """A randomly initialised tiny causal LM (float32, train mode), identical for equal arguments."""
    config = tiny_config(arch, vocab_size)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream untouched
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    return model


def save_tiny(directory: str | Path, arch: TinyArch = "qwen3", seed: int = 0) -> Path:
    """Write a tiny model (safetensors) and the tiny tokenizer into ``directory``; return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tiny_model(arch, seed=seed).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory
