"""What the vLLM engine can serve exactly, checked before it starts: one line per refusal, naming the setting.

The engine must sample exactly the policy the trainer computes with (lampo_pl/vllm_engine.py), or the
combination is refused before anything loads (settings time: `check_vllm_settings`) or before the
engine starts (once the model's config is known: `check_vllm_model`). Each rule cites its source in
vLLM 0.32 / bitsandbytes 0.50 as installed.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from lampo_pl.errors import UserError

# vllm/config/lora.py:26, ``MaxLoRARanks``: the only max_lora_rank values the engine accepts (pydantic checks it).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# vllm/v1/attention/backends/cpu_attn.py:69, ``CPUAttentionBackend.get_supported_head_sizes`` (used when vLLM's
# own list cannot be read); a model with another head_dim fails at its first generate (shared docs/VLLM.md).
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)

# Messages vLLM logs at every weight push that say nothing about the run, filtered by their exact text:
# - "Following weights were not loaded from checkpoint: ..." (model_loader/reload/inplace.py) lists the
#   parameters vLLM derives itself (e.g. rotary buffers) or, under LoRA, its own ``.base_layer.`` names;
# - "<Layer>: Failed to load weights" (model_loader/reload/layerwise.py:266) names a layer whose weights were
#   not pushed and whose previous values vLLM puts back (kept, not lost).
# lampo-pl pushes every weight of the model each sync, and the push is exact: tests/test_vllm_matrix.py
# compares the engine's log-probs with the trainer's after training steps (≤ 1e-4; sampler_logp_diff_max
# ≤ 4.8e-7 on the smoke run, issue 25).
HARMLESS_SYNC_WARNINGS = ("Following weights were not loaded from checkpoint: ", ": Failed to load weights")


class VllmCombinationError(UserError):
    """A combination the vLLM engine would not serve exactly (one line naming the settings to change)."""


def served_lora_rank(rank: int) -> int:
    """The smallest rank vLLM serves that holds an adapter of `rank` (exact: the extra rows are zero).

    vLLM pads every adapter to ``max_lora_rank`` (lora/layers: ``lora_a_stacked`` is [max_loras, 1,
    max_lora_rank, in]); the padding is zeros, so the product is the adapter's own.
    """
    for served in VLLM_LORA_RANKS:
        if served >= rank:
            return served
    raise VllmCombinationError(
        f"model.lora.r={rank}: model.sampling.vllm_sync=lora serves ranks up to "
        f"{VLLM_LORA_RANKS[-1]}; use vllm_sync: merged or a smaller rank"
    )


def check_vllm_settings(sampling: Any, lora: Any, method: Any) -> None:
    """Refuse, when settings are built, a vLLM combination that would train on wrong numbers.

    - 8-bit base: bitsandbytes' LLM.int8 matmul quantises the *activations* to int8 as well (MatMul8bitLt,
      bitsandbytes 0.50 ``autograd/_functions.py`` lines 134-140; on CUDA always, on a CPU in eval mode, which
      the π_old / π_ref passes and the native sampler use; train mode on a CPU dequantises instead, lines
      400-404): the trainer's outputs are no function of a weight matrix, so no weight push reproduces them.
    - LoRA served by vLLM (``vllm_sync: lora``) above rank 512: vLLM has no kernel for it.
    - A sampler correction (``tis_cap``, ``sampler_correction``) with top-p / top-k: vLLM returns the truncated
      distribution's log-probs only (its ``processed_logprobs``), so the kernel mismatch the correction weighs
      cannot be told from the truncation.
    """
    if sampling.engine != "vllm":
        return
    if lora.quantization == "8bit":
        raise VllmCombinationError(
            "model.lora.quantization=8bit with model.sampling.engine=vllm: bitsandbytes' int8 matmul quantises the "
            "activations too, so no weight push reproduces the trainer's forward; use quantization 4bit or none, "
            "or sampling.engine native"
        )
    if sampling.vllm_sync == "lora":
        served_lora_rank(lora.r)
    mode = method.correction[0]  # tis_cap is token_truncate (settings.MethodArgs.correction)
    if sampling.logprobs_truncated and mode != "none":
        setting = f"tis_cap={method.tis_cap}" if method.tis_cap is not None else f"sampler_correction={mode}"
        raise VllmCombinationError(
            f"model.method.{setting} with sampling.engine=vllm and top_p={sampling.top_p} / top_k={sampling.top_k}: "
            "vLLM returns the truncated distribution's log-probs, so the correction would weigh the truncation, "
            "not the kernel mismatch; set top_p 1.0 and top_k 0, or no sampler correction"
        )


def head_dim_of(config: Any) -> int:
    """Attention head size of a transformers config (``head_dim``, else hidden_size / heads)."""
    head_dim = getattr(config, "head_dim", None)
    return int(head_dim) if head_dim else int(config.hidden_size // config.num_attention_heads)


def cpu_head_sizes() -> tuple[int, ...]:
    """The head sizes the installed vLLM's CPU attention runs (its own list; the 0.32 one if unreadable)."""
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        return tuple(CPUAttentionBackend.get_supported_head_sizes())
    except (ImportError, AttributeError):
        return CPU_HEAD_SIZES


def check_vllm_model(model_name: str, *, trust_remote_code: bool, max_context: int | None) -> None:
    """Refuse, before the model loads and the engine starts, a model vLLM cannot run here, or a context it lacks."""
    from transformers import AutoConfig

    from lampo_pl.policy import resolve_model_source

    config = AutoConfig.from_pretrained(resolve_model_source(model_name), trust_remote_code=trust_remote_code)
    check_vllm_config(config, on_cuda=torch.cuda.is_available(), model_name=model_name, max_context=max_context)


def check_vllm_config(config: Any, *, on_cuda: bool, model_name: str, max_context: int | None) -> None:
    """`check_vllm_model` on a transformers config: CPU attention's head sizes, and max_context within the model."""
    if not on_cuda:
        head_dim, sizes = head_dim_of(config), cpu_head_sizes()
        if head_dim not in sizes:
            raise VllmCombinationError(
                f"model.model={model_name!r} has head_dim {head_dim}, and vLLM's CPU attention runs head_dim "
                f"{', '.join(map(str, sizes))} only; use model.sampling.engine native"
            )
    positions = getattr(config, "max_position_embeddings", None)
    if max_context is not None and positions is not None and max_context > positions:
        raise VllmCombinationError(
            f"model.max_context={max_context} exceeds the model's {positions} positions; "
            f"lower it to at most {positions}"
        )


def kv_cache_setting(on_cuda: bool) -> str:
    """The setting that sizes the engine's KV cache on this machine."""
    return "model.sampling.vllm_gpu_memory" if on_cuda else "model.sampling.vllm_kv_cache_gib (VLLM_CPU_KVCACHE_SPACE)"


def context_error(need: int, engine_len: int, *, prompt_len: int, max_new_tokens: int, on_cuda: bool) -> str:
    """One line for a request longer than the engine's context, naming what to change."""
    memory = kv_cache_setting(on_cuda)
    return (
        f"a prompt of {prompt_len} tokens + max_new_tokens={max_new_tokens} needs {need} tokens, and the vLLM "
        f"engine's KV cache holds {engine_len} per sequence: raise {memory} or model.max_context, or lower "
        "model.sampling.max_new_tokens"
    )


def start_error(error: Exception, *, max_context: int | None, on_cuda: bool) -> str | None:
    """One line for vLLM's start-up refusal of a KV cache too small for one sequence; None for other errors."""
    text = str(error)
    if "KV cache is needed" not in text and "Cannot auto-fit max_model_len" not in text:
        return None
    memory = kv_cache_setting(on_cuda)
    what = f"one sequence of model.max_context={max_context} tokens" if max_context else "one sequence"
    return f"the vLLM engine's KV cache cannot hold {what}: raise {memory}, or lower model.max_context"


class HarmlessSyncWarnings(logging.Filter):
    """Drops vLLM's per-sync messages listed in ``HARMLESS_SYNC_WARNINGS`` (their exact text), nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        return not any(text in message for text in HARMLESS_SYNC_WARNINGS)


def silence_harmless_sync_warnings() -> None:
    """Install `HarmlessSyncWarnings` on the two vLLM loggers that emit them (idempotent)."""
    for module in ("inplace", "layerwise"):
        logger = logging.getLogger(f"vllm.model_executor.model_loader.reload.{module}")
        if not any(isinstance(f, HarmlessSyncWarnings) for f in logger.filters):
            logger.addFilter(HarmlessSyncWarnings())
