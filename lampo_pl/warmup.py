"""Supervised warm-up ("cold start"): maximise log π(solution | prompt) on reference solutions before RL.

Why: RL from verifiable rewards learns only from groups whose rewards differ. Every estimator here
(GRPO's group mean, RLOO, LamPO's pairwise gaps) gives zero advantage to a group that is all wrong,
so a policy that never solves a problem never moves. A brief SFT on reference solutions gives it
partial competence first, as DeepSeek-R1's cold-start data does (arXiv 2501.12948, §2.3.1).

What is trained is whatever requires grad: the ``policy`` LoRA adapter of a ``load_policy`` model
(the usual cold start, saved with ``save_pretrained`` and used via ``model.lora.init_adapter``), or
every weight of a small model (``lampo_pl.tiny_sft`` builds the cheap ablation policy this way).

The loss is the mean negative log-likelihood over response tokens (EOS included; prompt and padding
masked), through the chunked head of ``logprobs.py``, so a 152k vocabulary never materialises
[N, L, V]. Batches use the rollout layout (left-padded prompt, right-padded response) and position
ids from the mask, exactly as the RL step scores the same text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from peft import PeftModel
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lampo_pl.logprobs import token_logprobs
from lampo_pl.rollout import left_pad, right_pad
from lampo_pl.settings import finite, require


@dataclass(frozen=True)
class WarmupArgs:
    """Settings of the supervised warm-up.

    Attributes:
        steps: Optimiser steps.
        batch_size: (prompt, solution) pairs per step, drawn without replacement per epoch.
        lr: AdamW learning rate (constant).
        weight_decay: AdamW weight decay.
        grad_clip: Max global grad-norm; <= 0 disables clipping.
        seed: Seeds the order in which pairs are drawn.
        logprob_chunk: Positions per chunk of the log-prob head (memory bound, as in RL).
    """

    steps: int = 100
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    logprob_chunk: int = 1024

    def __post_init__(self) -> None:
        g = "warmup"
        require(isinstance(self.steps, int) and self.steps >= 0, g, "steps", self.steps, "an integer >= 0")
        require(isinstance(self.batch_size, int) and self.batch_size >= 1, g, "batch_size", self.batch_size,
                "an integer >= 1")
        require(finite(self.lr) and self.lr > 0, g, "lr", self.lr, "lr > 0")
        require(finite(self.weight_decay) and self.weight_decay >= 0, g, "weight_decay", self.weight_decay,
                "weight_decay >= 0")
        require(finite(self.grad_clip), g, "grad_clip", self.grad_clip, "a finite number (<= 0: no clipping)")
        require(isinstance(self.logprob_chunk, int) and self.logprob_chunk >= 1, g, "logprob_chunk",
                self.logprob_chunk, "an integer >= 1")


@dataclass
class SFTBatch:
    """(prompt, solution) pairs in the rollout layout.

    Attributes:
        input_ids: [n, P+L] left-padded prompt then right-padded solution (EOS appended).
        attention_mask: [n, P+L] 1 on real tokens.
        response_mask: [n, L] 1 on solution tokens (EOS included).
        prompt_len: P: solutions start at this column.
    """

    input_ids: Tensor
    attention_mask: Tensor
    response_mask: Tensor
    prompt_len: int


def sft_batch(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], completions: Sequence[str], device: torch.device
) -> SFTBatch:
    """Tokenise rendered prompts and their completions (the tokenizer's EOS is appended to each)."""
    if len(prompts) != len(completions) or not prompts:
        raise ValueError(f"need equally many prompts and completions, at least one; got {len(prompts)} and "
                         f"{len(completions)}")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token: the warm-up must teach the policy to stop")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    heads: list[list[int]] = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    bodies: list[list[int]] = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    prompt_ids, prompt_mask = left_pad(heads, pad, device)  # [n, P], [n, P]
    response_ids, response_mask = right_pad([[*ids, tokenizer.eos_token_id] for ids in bodies], pad, device)  # [n, L]
    return SFTBatch(
        input_ids=torch.cat([prompt_ids, response_ids], dim=1),  # [n, P+L]
        attention_mask=torch.cat([prompt_mask, response_mask], dim=1),  # [n, P+L]
        response_mask=response_mask,
        prompt_len=prompt_ids.shape[1],
    )


def sft_loss(model: PreTrainedModel | PeftModel, batch: SFTBatch, chunk_size: int = 1024) -> Tensor:
    """Mean NLL per solution token (a scalar with gradient)."""
    logp, _ = token_logprobs(model, batch.input_ids, batch.attention_mask, batch.prompt_len, chunk_size=chunk_size)
    mask = batch.response_mask.to(logp.dtype)  # [n, L]
    return -(logp * mask).sum() / mask.sum()


def supervised_warmup(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str],
    args: WarmupArgs,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model``'s trainable parameters on (prompt, completion) pairs; return the per-step losses.

    Args:
        model: Its parameters with ``requires_grad`` are trained in place (train mode is set and restored).
        tokenizer: Encodes prompts (rendered with the chat template, as in RL) and completions.
        prompts: Rendered prompts.
        completions: The reference solutions (plain text; EOS is appended).
        args: Steps, batch size, learning rate, clipping, seed.
        on_step: Called as ``on_step(step, loss)`` after each step (progress, logging).

    Raises:
        ValueError: a non-finite loss (the step, loss and batch are named; weights are left as they
            were after the previous step) or nothing to train.
    """
    if len(prompts) != len(completions) or not prompts:
        raise ValueError(f"need equally many prompts and completions, at least one; got {len(prompts)} and "
                         f"{len(completions)}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameters that require grad: nothing to warm up")
    device = params[0].device
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    rng = torch.Generator().manual_seed(args.seed)
    order: list[int] = []
    losses: list[float] = []
    was_training = model.training
    model.train()
    try:
        for step in range(args.steps):
            while len(order) < args.batch_size:  # whole epochs, each in a fresh order
                order += torch.randperm(len(prompts), generator=rng).tolist()
            rows, order = order[: args.batch_size], order[args.batch_size :]
            batch = sft_batch(tokenizer, [prompts[i] for i in rows], [completions[i] for i in rows], device)
            loss = sft_loss(model, batch, args.logprob_chunk)
            if not math.isfinite(float(loss.detach())):
                raise ValueError(f"warm-up step {step}: non-finite loss {float(loss.detach())} on pairs {rows}; "
                                 f"lower lr (now {args.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(step, losses[-1])
    finally:
        model.train(was_training)
    return losses
