"""The sampler seam: what evaluation needs from an inference engine, and the native one.

Evaluation (``lampo_pl.evaluation.evaluate``) never touches a model: it hands rendered prompts to a
``Sampler`` and grades what comes back. Any engine that fits this one call can be plugged in —
lampo-pl's rollout sampler (``NativeSampler`` below: the decode loop, ``generate()`` or the run's
colocated vLLM engine, as ``params.engine`` says), another server, a scripted stand-in in tests::

    sampler(prompts: list[str], n: int, params: SamplingParams) -> list[list[Completion]]

Contract (the same for every engine):
1. ``prompts`` are already rendered with the chat template (no special tokens are added).
2. The result has one list per prompt, in prompt order, each of exactly ``n`` completions: all
   ``n`` samples of a prompt are drawn in the same call (vLLM's ``SamplingParams(n=...)``).
3. Sampling honours ``params.temperature`` (0 is greedy), ``top_p``, ``top_k`` (0 = off),
   ``max_new_tokens`` and ``min_new_tokens``; ``params.engine`` and the ``merge_lora`` / ``vllm_*``
   fields concern ``NativeSampler`` (which routes to that engine) and other samplers ignore them.
4. ``Completion.truncated`` is True when the response stopped at ``max_new_tokens`` without an end
   of sequence (vLLM: ``finish_reason == "length"``): evaluation reports the truncated fraction
   beside every score, since a reasoning model cut inside ``<think>`` scores 0.
5. Randomness: the native sampler draws from torch's global RNG, which the evaluation callback
   forks and seeds (``callbacks/eval_target.py``, ``forked_rng``); an engine with its own generator
   seeds it itself (e.g. at construction).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from lampo_pl.rollout import SamplingParams, generate_rollout


@dataclass(frozen=True)
class Completion:
    """One sampled response.

    Attributes:
        text: The decoded response, special tokens (EOS) removed.
        truncated: True when no end of sequence came within ``max_new_tokens``.
        num_tokens: Response tokens (EOS included when there is one).
    """

    text: str
    truncated: bool
    num_tokens: int


class Sampler(Protocol):
    """Samples ``n`` completions per rendered prompt (module docstring: the contract)."""

    def __call__(self, prompts: list[str], n: int, params: SamplingParams) -> list[list[Completion]]: ...


class NativeSampler:
    """lampo-pl's own sampler (``rollout.generate_rollout``) over a model's active adapter, with the engine
    ``params.engine`` names (native decode loop, ``generate()``, or the model's one vLLM engine).

    Args:
        model: The model (a ``PeftModel``: whichever adapter is active samples; none under ``disable_adapter``).
        tokenizer: The model's tokenizer.
        max_context: Context limit for prompt + response; null: the model's ``max_position_embeddings``.
        generation_batch_size: Rows per decode call; null: all ``len(prompts)·n`` rows at once.
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_context: int | None = None,
                 generation_batch_size: int | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_context, self.generation_batch_size = max_context, generation_batch_size

    def __call__(self, prompts: list[str], n: int, params: SamplingParams) -> list[list[Completion]]:
        rollout = generate_rollout(self.model, self.tokenizer, prompts, n, params, max_context=self.max_context,
                                   generation_batch_size=self.generation_batch_size)
        rows = [
            Completion(text, bool(cut), int(length))
            for text, cut, length in zip(rollout.texts, rollout.truncated.tolist(),
                                         rollout.response_lengths.tolist(), strict=True)
        ]  # N = len(prompts)·n, each prompt's n rows contiguous (rollout.py)
        return [rows[i * n : (i + 1) * n] for i in range(len(prompts))]
