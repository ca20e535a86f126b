"""Test-wide settings: never reach a model hub (a hub id then fails in ~2 s instead of ~50 s of retries)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module's tests: on 2 cores shared with other jobs, two threads spin against
    each other (~6x slower measured). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def trained_tiny_policy() -> Callable[[int, int], tuple[Any, Any]]:
    """Factory ``(lora_r, lora_alpha) -> (model, tokenizer)``: the tiny policy with random LoRA B, as if trained
    (a fresh LoRA has B = 0 and equals the base model)."""
    from lampo_pl.policy import POLICY_ADAPTER, load_policy

    def build(lora_r: int, lora_alpha: int) -> tuple[Any, Any]:
        model, tokenizer = load_policy("tiny:qwen3", lora_r=lora_r, lora_alpha=lora_alpha)
        torch.manual_seed(0)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if f"lora_B.{POLICY_ADAPTER}" in name:
                    param.normal_(0, 0.5)
        return model, tokenizer

    return build
