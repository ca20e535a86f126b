"""Group rollouts: G sampled responses per prompt, as one padded batch with masks built from EOS.

How this differs from a plain `model.generate` call and why:
1. Rows are grouped contiguously (rows b·G … b·G+G−1 answer prompt b), the layout the group
   advantages (GRPO, LamPO) reshape to [B, G].
2. Prompts are left-padded and responses right-padded, so every response starts at one column
   P (`prompt_len`) and log-probs of all rows come from one teacher-forced pass.
3. `response_mask` is 1 up to and including the first EOS and 0 after, computed from EOS
   positions and never from `ids != pad_token_id`: SmolLM2 uses one token for pad and EOS
   (docs/ENVIRONMENT.md "Pitfalls"), and a pad id sampled mid-response is a real token.
4. A prompt that would not fit the context with `max_new_tokens` is rejected, never truncated:
   cutting a prompt silently changes the task the reward grades.
5. Sampling is exactly softmax(logits / T) with optional top-p / top-k: the model's own
   generation defaults (a repetition penalty, Qwen3's top_k=20) are overridden, so the tokens'
   distribution is the π_old that the PPO ratio assumes (temperature 0 means greedy).
6. The sampler is lampo-pl's decode loop (`decode.py`, ``engine="native"``) with the active adapter
   merged into the weights while sampling (`lora_merge.py`): 0.6-0.7× the time of ``generate()``
   on the benchmark's tiny-model rollout (docs/performance.md). ``engine="generate"`` keeps transformers'
   ``generate()`` (its tokens, bit for bit, for a given seed) and is the tests' oracle.
7. On request (`record_logprobs`) the sampler's own log π_old(o_t) = log_softmax(z / T)[o_t] is kept:
   LamPO's confidence scores need π_old before the loss pass, and at μ = 1 this spares a whole
   teacher-forced forward pass (issue 7, "no wasted passes"). The native loop has these values
   anyway; with ``generate()`` they cost one log-softmax over [n, V] per token. They agree with
   `token_logprobs` on the same tokens up to float rounding (the KV-cache path sums in another
   order; tests pin 1e-4).
8. On request (`record_hidden`, native engine) the head's input per token too: DelTA's h at μ = 1 (`decode.py`).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from peft import PeftModel
from torch import Tensor
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase

from lampo_pl.decode import decode
from lampo_pl.lora_merge import merged_adapter
from lampo_pl.settings import finite, require
from lampo_pl.vllm_engine import import_vllm, request_seeds, shared_engine


@dataclass(frozen=True)
class SamplingParams:
    """How responses are sampled.

    Attributes:
        temperature: Softmax temperature; 0 means greedy decoding.
        top_p: Nucleus sampling mass (1.0 = off).
        top_k: Keep only the k most likely tokens (0 = off).
        max_new_tokens: Response length limit; a response without EOS by then is `truncated`.
        min_new_tokens: EOS is banned before this many tokens (0 = off). Samples then no longer come
            from π itself: for benchmarks that need fixed-length responses, not for training.
        engine: native (lampo-pl's decode loop) | generate (transformers' ``generate()``: its exact tokens
            for a seed, for comparisons) | vllm (a colocated vLLM engine, the fastest: `make vllm` installs
            it; lampo_pl/vllm_engine.py).
        merge_lora: Sample with the active LoRA adapter merged into a temporary copy of the weights
            (faster; costs one copy of the adapted weights while sampling; skipped by itself for a
            quantised base).
        vllm_sync: How the vLLM engine gets the current policy each step: merged (W + s·BA pushed in
            place, the default: exact and fastest) | lora (the adapter served as a vLLM LoRA request).
        vllm_kv_cache_gib: vLLM's KV cache on a CPU, in GiB, reserved when the engine starts.
        vllm_gpu_memory: Fraction of the GPU's memory vLLM may hold (weights + KV cache) on CUDA.
        vllm_sleep: On CUDA, put the engine to sleep (weights to host memory, KV cache freed) from the end
            of sampling to the next step's sync, as TRL's colocate mode does.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    min_new_tokens: int = 0
    engine: Literal["native", "generate", "vllm"] = "native"
    merge_lora: bool = True
    vllm_sync: Literal["merged", "lora"] = "merged"
    vllm_kv_cache_gib: int = 1
    vllm_gpu_memory: float = 0.3
    vllm_sleep: bool = True

    def __post_init__(self) -> None:
        g = "model.sampling"  # one line naming the field (lampo_pl.settings.require)
        require(finite(self.temperature) and self.temperature >= 0, g, "temperature", self.temperature, ">= 0")
        require(finite(self.top_p) and 0 < self.top_p <= 1, g, "top_p", self.top_p, "0 < top_p <= 1")
        require(self.top_k >= 0, g, "top_k", self.top_k, "top_k >= 0 (0: off)")
        require(self.max_new_tokens >= 1, g, "max_new_tokens", self.max_new_tokens, "max_new_tokens >= 1")
        require(0 <= self.min_new_tokens <= self.max_new_tokens, g, "min_new_tokens", self.min_new_tokens,
                f"0 <= min_new_tokens <= max_new_tokens ({self.max_new_tokens})")
        require(self.engine in ("native", "generate", "vllm"), g, "engine", self.engine, "native | generate | vllm")
        require(self.vllm_sync in ("merged", "lora"), g, "vllm_sync", self.vllm_sync, "merged | lora")
        require(self.vllm_kv_cache_gib >= 1, g, "vllm_kv_cache_gib", self.vllm_kv_cache_gib, "a whole number >= 1")
        require(finite(self.vllm_gpu_memory) and 0 < self.vllm_gpu_memory <= 1, g, "vllm_gpu_memory",
                self.vllm_gpu_memory, "0 < vllm_gpu_memory <= 1")
        if self.engine == "vllm":
            import_vllm()  # a missing install is one line at start-up, not a traceback at the first step

    @property
    def logprobs_truncated(self) -> bool:
        """Whether the sampler's recorded log-probs are of the top-p / top-k truncated distribution, not π's.

        vLLM returns them after truncation only (its ``processed_logprobs``; its ``raw_logprobs`` are taken
        before the temperature, vllm/v1/sample/sampler.py lines 86-89, i.e. π at T = 1): LamPO's confidence
        scores then take π_old from a teacher-forced pass and the mismatch meter logs the truncated mass
        instead of the kernel mismatch (lampo_pl/mismatch.py). The native engines record before truncation.
        """
        return self.engine == "vllm" and (self.top_p < 1 or self.top_k > 0)


@dataclass
class Rollout:
    """A batch of N = B·G responses, G per prompt, rows of one group contiguous.

    Attributes:
        input_ids: [N, P+L] left-padded prompt then right-padded response token ids.
        attention_mask: [N, P+L] 1 on real prompt tokens and on `response_mask` tokens.
        response_mask: [N, L] 1 on response tokens up to and including the first EOS, 0 after.
        prompt_len: P, the padded prompt width: responses start at column P (`response_start`).
        response_lengths: [N] number of response tokens (EOS included), = response_mask.sum(1).
        truncated: [N] bool, True where no EOS came within max_new_tokens.
        texts: N decoded responses, special tokens (EOS) removed.
        generation_seconds: Wall time spent in the sampler calls.
        sampled_logprobs: [N, L] the sampler's log softmax(z / T)[o_t] (before top-p / top-k; vLLM's after them,
            ``SamplingParams.logprobs_truncated``), 0 after the response; `None` unless
            `generate_rollout(record_logprobs=True)`.
        sampled_hidden: [N, L, H] the output head's input at the position that predicts each response token, in
            the model's dtype, 0 after the response; `None` unless `generate_rollout(record_hidden=True)`.
    """

    input_ids: Tensor
    attention_mask: Tensor
    response_mask: Tensor
    prompt_len: int
    response_lengths: Tensor
    truncated: Tensor
    texts: list[str]
    generation_seconds: float
    sampled_logprobs: Tensor | None = None
    sampled_hidden: Tensor | None = None

    @property
    def response_ids(self) -> Tensor:
        """[N, L] the response columns of `input_ids`."""
        return self.input_ids[:, self.prompt_len :]


def response_mask_from_ids(response_ids: Tensor, eos_ids: list[int]) -> tuple[Tensor, Tensor]:
    """Mask of tokens up to and including the first EOS, and which rows have none. [N, L] -> [N, L], [N]"""
    is_eos = torch.isin(response_ids, torch.tensor(eos_ids, device=response_ids.device))  # [N, L]
    has_eos = is_eos.any(dim=1)  # [N]
    first_eos = is_eos.int().argmax(dim=1)  # [N]  (0 where there is none; replaced below)
    width = response_ids.shape[1]
    lengths = torch.where(has_eos, first_eos + 1, width)  # [N]
    columns = torch.arange(width, device=response_ids.device)  # [L]
    return (columns[None, :] < lengths[:, None]).long(), ~has_eos  # [N, L], [N]


def stop_token_ids(model: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every id that ends a response: the tokenizer's EOS and the model's generation EOS ids (Qwen3 has two)."""
    configured = model.generation_config.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    return sorted({i for i in [*ids, tokenizer.eos_token_id] if i is not None})


def left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Left-pad token lists to their longest (prompts: every row then ends at one column). -> ids [n, p], mask [n, p]"""
    return _pad(rows, pad_id, device, left=True)


def right_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Right-pad token lists to their longest (responses: every row starts at column 0). -> ids [n, l], mask [n, l]"""
    return _pad(rows, pad_id, device, left=False)


def _pad(rows: list[list[int]], pad_id: int, device: torch.device, left: bool) -> tuple[Tensor, Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [n, w]
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # [n, w]
    for i, row in enumerate(rows):
        cols = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, cols] = torch.tensor(row, dtype=torch.long)
        mask[i, cols] = 1
    return ids.to(device), mask.to(device)


def _check_context(lengths: list[int], max_new_tokens: int, context: int) -> None:
    for index, length in enumerate(lengths):
        if length == 0:
            raise ValueError(f"prompt {index} is empty")
        if length + max_new_tokens > context:
            raise ValueError(
                f"prompt {index} has {length} tokens; with max_new_tokens={max_new_tokens} it needs "
                f"{length + max_new_tokens} > context {context}. Prompts are never truncated: shorten "
                "the prompt, lower max_new_tokens or raise max_context."
            )


class _SampledLogprobs(LogitsProcessor):
    """Keeps log softmax(z / T)[o_t] of every sampled token, from the scores the sampler is given.

    `generate` runs custom processors after its own non-sampling ones (none by default; e.g.
    `min_new_tokens` masking) and before the temperature / top-k / top-p warpers (transformers
    `GenerationMixin._get_logits_processor`), so these are π_old's log-probs at temperature T.
    A step's token is known only at the next call (as `input_ids[:, -1]`), so one [n, V] row of
    log-probs waits per step; `finish` takes the last token.
    """

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self.pending: Tensor | None = None  # [n, V] log-probs of the step whose token is not yet known
        self.values: list[Tensor] = []  # l tensors [n]

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        self._take(input_ids[:, -1])
        self.pending = torch.log_softmax(scores.float() / self.temperature, dim=-1)  # [n, V]
        return scores  # unchanged: sampling (and its random draws) is exactly what it would be

    def _take(self, tokens: Tensor) -> None:
        if self.pending is not None:
            self.values.append(self.pending.gather(-1, tokens[:, None]).squeeze(-1))  # [n]
            self.pending = None

    def finish(self, responses: Tensor) -> Tensor:
        """[n, l] log-probs of `responses` [n, l], the tokens generated while this processor was recording."""
        self._take(responses[:, -1])
        return torch.stack(self.values, dim=1)  # [n, l]


def _generate(
    model: PreTrainedModel | PeftModel,
    rows: list[list[int]],
    sampling: SamplingParams,
    eos_ids: list[int],
    pad_id: int,
    record_logprobs: bool,
    record_hidden: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """One sampler call over left-padded `rows` -> (response columns [n, l], l <= max_new_tokens; their
    sampler log-probs [n, l] or None; the head inputs [n, l, H] or None)."""
    ids, mask = left_pad(rows, pad_id, model.device)  # [n, p], [n, p]
    if sampling.engine == "native":
        out = decode(
            model, ids, mask, max_new_tokens=sampling.max_new_tokens, min_new_tokens=sampling.min_new_tokens,
            temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p, eos_ids=eos_ids,
            pad_id=pad_id, record_hidden=record_hidden,
        )  # [n, l], [n, l], [n, l, H] | None
        return out.tokens, (out.logprobs if record_logprobs else None), out.hidden
    greedy = sampling.temperature == 0
    recorder = _SampledLogprobs(1.0 if greedy else sampling.temperature) if record_logprobs else None
    output = model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=not greedy,
        temperature=None if greedy else sampling.temperature,
        top_p=None if greedy else sampling.top_p,
        top_k=None if greedy else sampling.top_k,
        repetition_penalty=1.0,  # override any model default: tokens must come from π itself
        max_new_tokens=sampling.max_new_tokens,
        min_new_tokens=sampling.min_new_tokens,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
        use_cache=True,
        logits_processor=LogitsProcessorList([recorder] if recorder else []),
    )  # [n, p+l]
    responses = output[:, ids.shape[1] :]  # [n, l]
    return responses, (recorder.finish(responses) if recorder else None), None


def _generate_all(
    model: PreTrainedModel | PeftModel,
    rows: list[list[int]],
    sampling: SamplingParams,
    eos_ids: list[int],
    pad_id: int,
    batch_size: int | None,
    record_logprobs: bool,
    seed: int,
    max_context: int | None = None,
    record_hidden: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None, float]:
    """Generate for all rows, `batch_size` per call, in eval mode; -> (responses [N, L], their sampler
    log-probs [N, L] or None, head inputs [N, L, H] or None, seconds)."""
    if sampling.engine == "vllm":
        return _sample_vllm(model, rows, sampling, eos_ids, pad_id, record_logprobs, seed, max_context)
    step = batch_size or len(rows)
    was_training = model.training
    model.eval()  # no dropout while sampling; the caller's mode comes back even on error
    start = time.perf_counter()
    try:
        with torch.no_grad(), merged_adapter(model) if sampling.merge_lora else nullcontext():
            parts = [_generate(model, rows[i : i + step], sampling, eos_ids, pad_id, record_logprobs, record_hidden)
                     for i in range(0, len(rows), step)]  # fmt: skip
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    width = max(ids.shape[1] for ids, _, _ in parts)

    def pad(part: Tensor, value: float = 0.0) -> Tensor:  # [n, l] -> [n, L], [n, l, H] -> [n, L, H]
        return torch.nn.functional.pad(part, (0, 0) * (part.dim() - 2) + (0, width - part.shape[1]), value=value)

    # Only rows that already ended in EOS get padded here: a call stops early only when all its rows did.
    responses = torch.cat([pad(ids, pad_id) for ids, _, _ in parts])  # [N, L]
    logps = torch.cat([pad(lp) for _, lp, _ in parts if lp is not None]) if record_logprobs else None
    hidden = torch.cat([pad(h) for _, _, h in parts if h is not None]) if record_hidden else None
    return responses, logps, hidden, seconds  # [N, L], [N, L] | None, [N, L, H] | None


def _sample_vllm(
    model: PreTrainedModel | PeftModel,
    rows: list[list[int]],
    sampling: SamplingParams,
    eos_ids: list[int],
    pad_id: int,
    record_logprobs: bool,
    seed: int,
    max_context: int | None,
) -> tuple[Tensor, Tensor | None, None, float]:
    """All rows through the model's vLLM engine, synced to the current policy first; -> as `_generate_all`.

    One engine serves every call; its context is the run's ``max_context``, or else the longest sequence its
    KV cache holds (at most the model's own): ``VllmEngine`` refuses a longer request in one line.
    """
    start = time.perf_counter()
    engine = shared_engine(model, sync=sampling.vllm_sync, kv_cache_gib=sampling.vllm_kv_cache_gib,
                           gpu_memory_utilization=sampling.vllm_gpu_memory, sleep=sampling.vllm_sleep,
                           max_context=max_context)  # fmt: skip
    engine.sync(model)
    sampled = engine.sample(rows, request_seeds(seed, len(rows)), temperature=sampling.temperature,
                            top_p=sampling.top_p, top_k=sampling.top_k, max_new_tokens=sampling.max_new_tokens,
                            min_new_tokens=sampling.min_new_tokens, eos_ids=eos_ids)  # fmt: skip
    responses, _ = right_pad([tokens for tokens, _ in sampled], pad_id, model.device)  # [N, L]
    logps = torch.zeros(responses.shape, dtype=torch.float32)  # [N, L]
    for i, (_, values) in enumerate(sampled):
        logps[i, : len(values)] = torch.tensor(values, dtype=torch.float32)
    return responses, (logps.to(model.device) if record_logprobs else None), None, time.perf_counter() - start


def generate_rollout(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    group_size: int,
    sampling: SamplingParams,
    *,
    max_context: int | None = None,
    generation_batch_size: int | None = None,
    record_logprobs: bool = False,
    seed: int | None = None,
    record_hidden: bool = False,
) -> Rollout:
    """Sample `group_size` responses for each rendered (already chat-templated) prompt.

    Args:
        model: The policy; its active adapter samples. Put in eval mode for the call, then restored.
        tokenizer: Encodes prompts (no special tokens added) and decodes responses.
        prompts: B prompt strings, rendered with the chat template.
        group_size: G responses per prompt.
        sampling: Temperature, top-p, top-k, max_new_tokens.
        max_context: Context limit for prompt + response; default the model's max_position_embeddings.
        generation_batch_size: Rows per `generate` call (default: all B·G rows in one call).
        record_logprobs: Keep the sampler's log-probs of the response tokens (`Rollout.sampled_logprobs`).
        record_hidden: Keep the output head's input at each response token (`Rollout.sampled_hidden`; native engine).
        seed: The vLLM engine's seed for this call (each row's request seed derives from it and the row);
            default one drawn from torch's RNG. The native and generate engines draw from torch's RNG.

    Raises:
        ValueError: a prompt is empty or too long for the context; `record_hidden` with an engine but native.
    """
    if group_size < 1 or not prompts:
        raise ValueError(f"need at least one prompt and group_size >= 1, got {len(prompts)} and {group_size}")
    if record_hidden and sampling.engine != "native":
        raise ValueError(f"record_hidden: only the native engine records head inputs, not {sampling.engine}")
    encoded: list[list[int]] = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    context = max_context or model.config.max_position_embeddings
    _check_context([len(ids) for ids in encoded], sampling.max_new_tokens, context)
    rows = [ids for ids in encoded for _ in range(group_size)]  # N = B·G, groups contiguous
    eos_ids = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]

    if seed is None:
        seed = int(torch.randint(2**31 - 1, ())) if sampling.engine == "vllm" else 0
    response_ids, sampled, hidden, seconds = _generate_all(
        model, rows, sampling, eos_ids, pad_id, generation_batch_size, record_logprobs, seed, max_context, record_hidden
    )  # [N, L], [N, L] | None, [N, L, H] | None
    response_mask, truncated = response_mask_from_ids(response_ids, eos_ids)  # [N, L], [N]
    prompt_ids, prompt_mask = left_pad(rows, pad_id, response_ids.device)  # [N, P], [N, P]
    lengths = response_mask.sum(dim=1)  # [N]
    texts = tokenizer.batch_decode(
        [ids[:n].tolist() for ids, n in zip(response_ids, lengths.tolist(), strict=True)],
        skip_special_tokens=True,
    )
    return Rollout(
        input_ids=torch.cat([prompt_ids, response_ids], dim=1),  # [N, P+L]
        attention_mask=torch.cat([prompt_mask, response_mask], dim=1),  # [N, P+L]
        response_mask=response_mask,
        prompt_len=prompt_ids.shape[1],
        response_lengths=lengths,
        truncated=truncated,
        texts=texts,
        generation_seconds=seconds,
        sampled_logprobs=None if sampled is None else sampled * response_mask,  # [N, L]
        sampled_hidden=None if hidden is None else hidden.masked_fill_(response_mask[..., None] == 0, 0),  # [N, L, H]
    )
