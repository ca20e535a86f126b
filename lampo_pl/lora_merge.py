"""Sampling with the active LoRA adapter merged into a temporary copy of the weights it adapts.

A LoRA linear computes W x + s·B(A x): three matmuls plus peft's per-layer bookkeeping, at every
decode step of every layer. With W' = W + s·BA it is one matmul, the whole cost of sampling from
the adapted policy at decode time (TRL's vLLM path merges for the same reason). On the tiny Qwen3
at 32 × 32 tokens this took the decode loop from 0.85× to 0.62-0.66× of ``generate()``'s time
(docs/performance.md).

How this differs from peft's own ``merge_adapter()`` / ``unmerge_adapter()`` and why:
1. W' is a new tensor and W itself is put back afterwards, untouched. peft's unmerge subtracts s·BA
   again, which rounds: the frozen base (and with it the reference policy) would drift by about an
   ulp per training step.
2. All or nothing: a layer that cannot be merged exactly (a quantised base as in QLoRA, DoRA and
   other LoRA variants, a LoRA bias, a non-Linear layer) leaves the whole model as it is, and the
   caller samples through the unmerged layers.
3. The cost is memory: while sampling, every adapted weight exists twice (for an unquantised
   Qwen3-4B in bf16, +6.8 GiB: docs/memory.md). ``SamplingParams.merge_lora=False`` turns it off.
4. The LoRA branches are switched off by the flag peft's layers read (`branches_off`), not by
   ``PeftModel.disable_adapter()``: that one also scans the model's status and resets every
   adapter's ``requires_grad``, 6.7 ms per use on the tiny Qwen3 (3 % of its whole rollout).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft import PeftModel
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.layer import LoraLayer
from torch import nn

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def lora_layers(model: nn.Module, adapter: str) -> list[LoraLayer]:
    """Every peft LoRA layer that holds `adapter`."""
    return [m for m in model.modules() if isinstance(m, LoraLayer) and adapter in m.lora_A]


@contextmanager
def branches_off(model: nn.Module) -> Iterator[None]:
    """Run the block with every LoRA layer computing its base layer alone; the flags come back on exit.

    Sets the flag that peft's own forward checks (``BaseTunerLayer._disable_adapters``, which
    ``disable_adapter()`` sets too) and nothing else; tests/test_decode.py and tests/test_policy.py check
    the outputs against peft's own adapter switching, so a peft that reads another flag fails there.
    """
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    before = [layer._disable_adapters for layer in layers]
    try:
        for layer in layers:
            layer._disable_adapters = True
        yield
    finally:
        for layer, flag in zip(layers, before, strict=True):
            layer._disable_adapters = flag


def is_plain_lora(layer: LoraLayer, adapter: str) -> bool:
    """Whether `adapter` in `layer` is W x + s·B(A x) and nothing else: no DoRA-like variant, no LoRA bias."""
    return adapter not in layer.lora_variant and not layer.lora_bias.get(adapter, False)


def mergeable_layers(model: nn.Module, adapter: str) -> list[LoraLinear]:
    """The LoRA layers of `adapter` when every one of them merges exactly into its base weight, else []."""
    layers = lora_layers(model, adapter)
    for layer in layers:
        base = layer.get_base_layer()
        exact = (
            type(layer) is LoraLinear  # peft's bnb / gptq / ... layers are other classes
            and is_plain_lora(layer, adapter)  # DoRA and friends, or a bias, change the merge
            and not layer.merged
            and type(base) is nn.Linear
            and type(base.weight) is nn.Parameter  # Params4bit / Int8Params are subclasses
            and base.weight.dtype in FLOAT_DTYPES
        )
        if not exact:
            return []
    return layers  # type: ignore[return-value]


@contextmanager
def merged_adapter(model: nn.Module) -> Iterator[bool]:
    """Run the block with the active adapter merged (W' = W + s·BA) and the LoRA branches off.

    Yields whether it merged; False (the model untouched) for a model without peft adapters, with
    its adapters switched off (``disable_adapter()``: the base model is what samples, e.g. the
    evaluation of ``base``), or with a layer that cannot be merged exactly. Weights are restored on
    exit, also after an exception.
    """
    if not isinstance(model, PeftModel):
        yield False
        return
    layers = mergeable_layers(model, model.active_adapter)
    if not layers or any(layer.disable_adapters for layer in layers):
        yield False
        return
    saved: list[tuple[nn.Linear, nn.Parameter]] = []
    try:
        with torch.no_grad():
            for layer in layers:
                base = layer.get_base_layer()
                saved.append((base, base.weight))
                merged = base.weight + layer.get_delta_weight(model.active_adapter)  # [out, in]
                base.weight = nn.Parameter(merged, requires_grad=False)
        with branches_off(model):
            yield True
    finally:
        for base, weight in saved:
            base.weight = weight
