"""Per-token log-probabilities of response tokens without materialising [N, L, V] float32 logits.

Why: with a 152k vocabulary (Qwen3), N=64 responses × L=1024 tokens of float32 logits are 40 GB,
and `log_softmax` plus its backward hold two or three such tensors. Only one number per token is
needed, log π(o_t) = z[o_t] − logsumexp(z), so:
1. The backbone runs once and returns final hidden states [N, T, H] (H ≪ V); the output head is
   applied here, not by the model's forward.
2. Hidden states of the response positions are flattened to [N·L, H] rows and processed in chunks
   of `chunk_size` rows: logits → log_softmax → gather, in float32 at least (bf16 keeps ~3
   significant digits: too coarse for the log-ratios of the PPO ratio).
3. Each chunk runs under non-reentrant `torch.utils.checkpoint`, so the backward recomputes the
   chunk's logits instead of keeping every chunk's: peak extra memory is O(chunk_size · V), about
   three float32 [chunk_size, V] buffers, not O(N · L · V). (The idea of Liger-Kernel's fused
   linear cross-entropy, Hsu et al. 2024, arXiv 2410.10989, in plain PyTorch.) When all rows fit
   in one chunk it is not checkpointed: the backward would materialise that same [rows, V] chunk
   again, so the recomputation (a second head pass) would buy no lower peak.
4. Position ids come from the attention mask (cumsum − 1), exactly as `generate` builds them for
   left-padded prompts (transformers `GenerationMixin._prepare_position_ids_for_generation`), so
   teacher-forced log-probs equal the sampler's.
5. Logits are divided by the sampling temperature, as TRL and verl do, so π_old is the
   distribution the tokens were actually sampled from.

Assumes the model's logits are its output embedding applied to the last hidden state (true for
Qwen3, Phi3, Llama, Mistral; not for models with logit soft-capping or scaling such as Gemma 2).
"""

from __future__ import annotations

import torch
from peft import PeftModel
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel


def _chunk_logprobs(
    hidden: Tensor, targets: Tensor, lm_head: nn.Module, temperature: float, with_entropy: bool
) -> tuple[Tensor, Tensor]:
    """log π(target) and entropy for one chunk of rows; at least float32 math whatever the model dtype."""
    logits = lm_head(hidden)  # [C, V]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # [C, V]
    if temperature != 1.0:
        logits.div_(temperature)  # in place: one [C, V] buffer fewer (nothing saved it for backward)
    # log_softmax keeps only its output for backward and frees the logits: peak ≈ 3 [C, V] buffers in
    # the backward, against ≈ 5 for logits.gather − logsumexp (measured with bench/logprob_memory.py).
    logsm = torch.log_softmax(logits, dim=-1)  # [C, V]
    logp = logsm.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [C]
    if not with_entropy:
        return logp, torch.zeros_like(logp)
    with torch.no_grad():  # a metric: keeping it out of the graph saves two [C, V] buffers for backward
        entropy = -(logsm.exp() * logsm).sum(-1)  # [C]  H = −Σ p log p
    return logp, entropy


def logprobs_from_hidden(
    hidden: Tensor,
    targets: Tensor,
    lm_head: nn.Module,
    *,
    chunk_size: int = 1024,
    with_entropy: bool = False,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs (and entropies) of `targets` [M] under `lm_head(hidden)`, hidden [M, H], chunked.

    `lm_head` is called as a module (a plain, quantised or LoRA-wrapped linear layer all work).

    Memory beyond the inputs is O(chunk_size · V) in forward and backward (see the module docstring).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    needs_grad = torch.is_grad_enabled() and (
        hidden.requires_grad or any(p.requires_grad for p in lm_head.parameters())
    )
    checkpointed = needs_grad and hidden.shape[0] > chunk_size  # point 3: one chunk is not checkpointed
    logps: list[Tensor] = []
    entropies: list[Tensor] = []
    for start in range(0, hidden.shape[0], chunk_size):
        args = (hidden[start : start + chunk_size], targets[start : start + chunk_size])  # [C, H], [C]
        args += (lm_head, temperature, with_entropy)
        if checkpointed:
            logp, entropy = checkpoint(_chunk_logprobs, *args, use_reentrant=False)
        else:
            logp, entropy = _chunk_logprobs(*args)
        logps.append(logp)
        entropies.append(entropy)
    if not logps:  # no rows: keep dtype and the autograd graph consistent
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, (empty if with_entropy else None)
    return torch.cat(logps), (torch.cat(entropies) if with_entropy else None)  # [M], [M]


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding, as `generate` computes them. [N, T] -> [N, T]"""
    positions = attention_mask.long().cumsum(-1) - 1  # [N, T]
    return positions.masked_fill(attention_mask == 0, 0)  # [N, T]


def _backbone_and_head(model: PreTrainedModel | PeftModel) -> tuple[nn.Module, nn.Module]:
    """The decoder stack (returns final-normed hidden states) and the output head, under any PEFT wrapper.

    LoRA layers are injected into the modules themselves, so calling the inner decoder still runs
    the active adapter.
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return base.get_decoder(), base.get_output_embeddings()


def token_logprobs(
    model: PreTrainedModel | PeftModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_start: int,
    *,
    chunk_size: int = 1024,
    with_entropy: bool = False,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs of tokens `response_start..T-1` given everything before them, with gradient support.

    Args:
        model: A causal LM (PEFT-wrapped or not); its current adapter and train/eval mode are used.
        input_ids: [N, T] prompts (left-padded) followed by responses (right-padded).
        attention_mask: [N, T] 1 on real tokens.
        response_start: First response column (the padded prompt width P); L = T − P.
        chunk_size: Rows of N·L processed per chunk (peak memory ∝ chunk_size · V).
        with_entropy: Also return the entropy of each predictive distribution.
        temperature: Sampling temperature the responses were drawn at (logits are divided by it).

    Returns:
        logp [N, L] and entropy [N, L] (or None), float32 (float64 for a float64 model). Values at padded response
        positions are meaningless: mask them with the rollout's response_mask.
    """
    n_rows, width = input_ids.shape
    if not 0 < response_start <= width:
        raise ValueError(f"response_start must be in 1..{width}, got {response_start}")
    decoder, lm_head = _backbone_and_head(model)
    hidden = decoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).last_hidden_state  # [N, T, H]
    # The logits at position t−1 predict token t.
    hidden = hidden[:, response_start - 1 : width - 1]  # [N, L, H]
    targets = input_ids[:, response_start:]  # [N, L]
    n_resp = targets.shape[1]
    logp, entropy = logprobs_from_hidden(
        hidden.reshape(n_rows * n_resp, -1),  # [N·L, H]
        targets.reshape(-1),  # [N·L]
        lm_head,
        chunk_size=chunk_size,
        with_entropy=with_entropy,
        temperature=temperature,
    )
    logp = logp.view(n_rows, n_resp)  # [N, L]
    return logp, (entropy.view(n_rows, n_resp) if entropy is not None else None)  # [N, L]

