"""Which of Lightning's strategies a run may use: DDP (devices and nodes), not FSDP (issue 24, item D).

FSDP shards every parameter across ranks, and lampo-pl needs the whole policy on each rank between the
updates: the native decode loop samples with the LoRA merged into the full weights (``lora_merge.py``),
the vLLM engine is pushed full W + s·BA every step (``vllm_engine.py``), and the reference pass switches
adapters on the full model (``policy.reference_adapter``). None of these gathers FSDP's shards, so a run
would sample from one shard's view or fail deep inside the first step. Lightning's FSDP also refuses the
CPU accelerator (``accelerator_connector.py``: "The strategy `fsdp` requires a GPU accelerator"), so it
could not be tested here. Refused in one line, before any model loads; what to use instead is in the
message and docs/memory.md (with a LoRA base the base weights are frozen and 4-bit makes them small, so
DDP's one copy per GPU fits where FSDP would be needed for full fine-tuning).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

from lampo_pl.errors import UserError

FSDP_REFUSAL = (
    "trainer.strategy: fsdp is not supported: every rank samples from the whole policy between updates "
    "(LoRA merged into the full weights, or pushed whole to the vLLM engine), which FSDP's sharded parameters "
    "do not hold; use trainer.strategy: ddp with model.lora.quantization: 4bit (Qwen3-4B's base takes ~3.2 GiB "
    "per GPU; docs/memory.md)"
)


def check_strategy(trainer: Any) -> None:
    """Raise a one-line ``UserError`` when ``trainer`` (None: no trainer, nothing to check) shards parameters."""
    strategy = getattr(trainer, "strategy", None)
    if isinstance(strategy, (FSDPStrategy, ModelParallelStrategy)):
        raise UserError(FSDP_REFUSAL)
