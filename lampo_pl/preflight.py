"""Preflight: run the worst step the run can meet once, before the first real one, so that memory runs out in
minute one rather than hours in, when the longest prompt or response finally comes (issue 24).

The worst case is the longest rendered prompt of the training set (asked of the DataModule), a response of
``max_new_tokens`` for every row and the configured micro-batch. Through it run:
1. the sampler's peak: with the native / ``generate()`` engines the KV cache of one sampling call
   (``generation_batch_size`` rows, or all B·G) at full length, filled by a chunked prefill under the merged
   adapter as the decode loop samples, beside the ``[B·G, L, H]`` head inputs the sampler keeps for DelTA at
   μ = 1 (``DeltaSteps.sampler_gives_delta``); with vLLM the engine is started (it is anyway at step one) and its
   reported KV-cache capacity is compared with B·G sequences of that length;
2. the no-grad passes the step runs (π_ref when β > 0 or ``track_kl``; π_old when μ > 1, or for DelTA at μ = 1
   with an engine that keeps no head inputs);
3. one micro-batch's loss forward and backward, gradients then dropped; the optimiser never steps.

Nothing of the run changes: the RNG states (torch, CUDA, numpy, Python) are restored, the gradients set back
to None, the modes restored; under DDP the backward runs in ``no_sync`` so no rank waits for a collective.
Peak memory is CUDA's ``max_memory_allocated`` on a GPU; on a CPU the process's peak resident set
(``getrusage``; it includes everything before, so it only says the peak was at most that).

On an out-of-memory error the step is tried again with smaller settings (micro-batch sizes that divide B·G,
halved ``max_new_tokens``) and one line (``PreflightError``) gives the peak it reached and what fitted.
"""

from __future__ import annotations

import logging
import re
import resource
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from lampo_pl.checkpointing import preserved_rng
from lampo_pl.decode import cache_argument
from lampo_pl.errors import UserError
from lampo_pl.lora_merge import merged_adapter
from lampo_pl.trajectory import Trajectory

log = logging.getLogger(__name__)
GIB = 2**30
PREFILL_CHUNK = 256  # response tokens per prefill call: bounds the transients as the decode loop's one token does
_ALLOCATION = re.compile(r"(?:Tried to allocate|tried to allocate) ([\d.]+) ?(GiB|MiB|KiB|B|bytes)?")
_UNITS = {"GiB": GIB, "MiB": 2**20, "KiB": 2**10, "B": 1, "bytes": 1, None: 1}


class PreflightError(UserError):
    """The worst case does not fit: one line with the peak it reached and the settings that would fit."""


@dataclass(frozen=True)
class WorstCase:
    """The largest shapes one step can take.

    Attributes:
        prompt: Token ids of the longest rendered training prompt.
        response_tokens: ``max_new_tokens``: every row's response at the limit.
        micro_batch: Rows per teacher-forced forward / backward.
        generation_rows: Rows per sampler call (``generation_batch_size`` or B·G).
        sequences: B·G, the rows of one step.
    """

    prompt: list[int]
    response_tokens: int
    micro_batch: int
    generation_rows: int
    sequences: int

    @property
    def tokens(self) -> int:
        return len(self.prompt) + self.response_tokens

    def describe(self) -> str:
        return f"micro-batch {self.micro_batch} × ({len(self.prompt)} prompt + {self.response_tokens} response) tokens"


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, Python's MemoryError, or torch's CPU allocator failing (a RuntimeError)."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        s in text for s in ("can't allocate memory", "out of memory", "Cannot allocate memory", "not enough memory")
    )


def requested_bytes(error: BaseException) -> int:
    """The size of the allocation that failed, from the error's message (0 when it does not say)."""
    match = _ALLOCATION.search(str(error))
    return int(float(match.group(1)) * _UNITS[match.group(2)]) if match else 0


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> int:
    """CUDA: the peak allocated since ``reset_peak``; CPU: the process's peak resident set since it started."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def longest_prompt(render: Callable[[list[Any]], list[str]], tokenizer: Any, problems: list[Any]) -> list[int]:
    """Token ids of the longest of ``problems`` once rendered (``render``: the module's chat rendering)."""
    encoded = tokenizer(render(problems), add_special_tokens=False)["input_ids"]
    return max(encoded, key=len)


def worst_trajectory(case: WorstCase, rows: int, device: torch.device) -> Trajectory:
    """``rows`` copies of the longest prompt followed by a full-length response, every token in the loss."""
    response = [case.prompt[-1]] * case.response_tokens  # the values do not matter to memory; no EOS needed
    ids = torch.tensor([case.prompt + response] * rows, device=device)  # [m, P+L]
    loss_mask = torch.ones(rows, case.response_tokens, device=device)  # [m, L]
    return Trajectory(input_ids=ids, attention_mask=torch.ones_like(ids), prompt_len=len(case.prompt),
                      loss_mask=loss_mask, keep=torch.ones(rows, dtype=torch.bool, device=device),
                      advantages=torch.ones(rows, device=device))  # fmt: skip


@torch.no_grad()
def fill_kv_cache(
    model: torch.nn.Module, case: WorstCase, merge: bool, device: torch.device, record_hidden: bool = False
) -> None:
    """The native sampler's peak: one call's rows with the KV cache at prompt + ``max_new_tokens``, filled by a
    prompt prefill then chunks of ``PREFILL_CHUNK`` tokens (``decode.decode`` adds one token per call); with
    ``record_hidden`` beside the step's ``[B·G, L, H]`` head inputs (``Rollout.sampled_hidden``)."""
    cache = cache_argument(model)
    head = (model.get_base_model() if hasattr(model, "get_base_model") else model).get_output_embeddings()
    held = torch.zeros(case.sequences, case.response_tokens, head.weight.shape[1], dtype=head.weight.dtype,
                       device=device) if record_hidden else None  # fmt: skip
    ids = torch.tensor([case.prompt + [case.prompt[-1]] * case.response_tokens] * case.generation_rows,
                       device=device)  # [n, P+L]  # fmt: skip
    was_training = model.training
    model.eval()
    try:
        with merged_adapter(model) if merge else nullcontext():
            out = model(input_ids=ids[:, : len(case.prompt)], use_cache=True, logits_to_keep=1)
            for start in range(len(case.prompt), ids.shape[1], PREFILL_CHUNK):
                chunk = ids[:, start : start + PREFILL_CHUNK]  # [n, c]
                positions = torch.arange(start, start + chunk.shape[1], device=device).expand_as(chunk)  # [n, c]
                out = model(input_ids=chunk, position_ids=positions, use_cache=True, logits_to_keep=1,
                            **{cache: out[cache]})  # fmt: skip
            del out, held
    finally:
        model.train(was_training)


def train_step_passes(module: Any, case: WorstCase) -> None:
    """The step's teacher-forced passes on the worst micro-batch: no-grad passes, then loss forward + backward."""
    traj = worst_trajectory(case, case.micro_batch, module.device)
    if module.method.num_iterations > 1 or module.old_pass_for_delta:
        traj = replace(traj, old_logprobs=module.logprobs_no_grad(traj))  # π_old frozen before the update
    ref = module.reference_logprobs(traj)  # None when β = 0 and not track_kl: no pass, as in the step
    traj = replace(traj, ref_logprobs=ref)
    coefficients = torch.full((case.micro_batch,), 1.0 / traj.loss_mask.sum().item(), device=module.device)  # [m]
    wrapped = module.trainer.strategy.model
    no_sync = wrapped.no_sync() if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel) else nullcontext()
    with no_sync:  # a gradient is computed, never all-reduced: no rank waits on another
        loss, _, _ = module.micro_batch_loss(traj, coefficients)
        loss.backward()


def drop_gradients(module: torch.nn.Module) -> None:
    for param in module.parameters():
        param.grad = None


def attempt(module: Any, case: WorstCase, sample_native: bool) -> int:
    """Run the worst case once; -> its peak in bytes. Raises what the passes raise (an OOM among them)."""
    device = module.device
    reset_peak(device)
    try:
        if sample_native:
            fill_kv_cache(module.policy_model, case, module.sampling.merge_lora, device, module.sampler_gives_delta)
        train_step_passes(module, case)
        return peak_bytes(device)
    finally:
        drop_gradients(module)


def divisors_below(n: int, below: int) -> list[int]:
    return [d for d in range(below - 1, 0, -1) if n % d == 0]


def fitting_settings(module: Any, case: WorstCase, sample_native: bool) -> list[str]:
    """What fits instead, each tried for real: the largest smaller micro-batch, the largest halved
    ``max_new_tokens`` (at the configured micro-batch); gradient checkpointing and the vLLM share as advice."""
    found: list[str] = []
    for size in divisors_below(case.sequences, case.micro_batch)[:4]:
        if fits(module, replace(case, micro_batch=size), sample_native):
            found.append(f"model.compute.micro_batch_size: {size}")
            break
    tokens = case.response_tokens // 2
    for _ in range(3):
        if tokens < 1:
            break
        if fits(module, replace(case, response_tokens=tokens), sample_native):
            found.append(f"model.sampling.max_new_tokens: {tokens}")
            break
        tokens //= 2
    if not module.lora.gradient_checkpointing:
        found.append("model.lora.gradient_checkpointing: true (not tried)")
    if module.sampling.engine == "vllm" and module.device.type == "cuda":
        lower = round(max(0.05, module.sampling.vllm_gpu_memory - 0.1), 2)
        found.append(f"model.sampling.vllm_gpu_memory: {lower} (the engine's share; not tried)")
    return found


def fits(module: Any, case: WorstCase, sample_native: bool) -> bool:
    release(module.device)
    try:
        attempt(module, case, sample_native)
    except Exception as error:  # anything but an OOM is re-raised
        if not is_out_of_memory(error):
            raise
        return False
    finally:
        release(module.device)
    return True


def release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def vllm_capacity(module: Any, case: WorstCase) -> None:
    """Start the run's engine (it starts at step one anyway) and compare its KV cache with B·G full sequences.

    vLLM runs as many sequences as its cache holds and queues the rest (continuous batching), so a cache
    smaller than B·G costs speed, not a failure: that is a warning with the setting to change. A cache that
    cannot hold a single sequence fails here in one line.
    """
    from lampo_pl.vllm_engine import shared_engine  # imports vLLM only when the engine is vLLM

    s = module.sampling
    engine = shared_engine(
        module.policy_model,
        sync=s.vllm_sync,
        kv_cache_gib=s.vllm_kv_cache_gib,
        gpu_memory_utilization=s.vllm_gpu_memory,
        sleep=s.vllm_sleep,
        max_context=module.max_context,
    )  # as the rollout starts it (rollout._sample_vllm)
    capacity = engine.kv_cache_tokens()
    engine.rest()  # asleep until the first sync, as between steps: the trainer's passes run beside that
    need = case.sequences * case.tokens
    setting = "model.sampling.vllm_gpu_memory" if module.device.type == "cuda" else "model.sampling.vllm_kv_cache_gib"
    if capacity is None:
        return
    if capacity < case.tokens:
        raise PreflightError(
            f"preflight: vLLM's KV cache holds {capacity} tokens, fewer than one sequence of "
            f"{case.tokens} (longest prompt + max_new_tokens); raise {setting} or lower "
            "model.sampling.max_new_tokens"
        )
    if capacity < need:
        log.warning(
            "preflight: vLLM's KV cache holds %d tokens, %d of the %d sequences of %d tokens at once; the "
            "rest wait (slower, not wrong): raise %s to hold all",
            capacity,
            capacity // case.tokens,
            case.sequences,
            case.tokens,
            setting,
        )
    else:
        rank_zero_info(
            f"preflight: vLLM's KV cache holds {capacity} tokens: all {case.sequences} sequences of "
            f"{case.tokens} tokens at once"
        )


def run_preflight(module: Any) -> int | None:
    """Run the worst case of ``module``'s run once (module docstring); -> its peak in bytes, None if skipped.

    Raises:
        PreflightError: it ran out of memory (one line: the peak reached, the settings that fitted).
    """
    data = module.trainer.datamodule
    problems = getattr(data, "train_problems", None)
    if not module.compute.preflight or not problems or module.policy_model is None:
        return None
    case = WorstCase(prompt=longest_prompt(module.render, module.tokenizer, problems),
                     response_tokens=module.sampling.max_new_tokens, micro_batch=module.compute.micro_batch_size,
                     generation_rows=module.generation_batch_size or module.prompts_per_step * module.group_size,
                     sequences=module.prompts_per_step * module.group_size)  # fmt: skip
    sample_native = module.sampling.engine != "vllm"
    with preserved_rng():
        if not sample_native:
            vllm_capacity(module, case)
        release(module.device)
        failure: tuple[int, str] | None = None
        try:
            peak = attempt(module, case, sample_native)
        except Exception as error:  # anything but an OOM is re-raised
            if not is_out_of_memory(error):
                raise
            failure = (peak_bytes(module.device) + requested_bytes(error), oom_summary(error))
        # Out of the except block: the error's traceback, which holds the failed pass's tensors, is gone.
        release(module.device)
        if failure is not None:
            raise PreflightError(failure_line(case, *failure, fitting_settings(module, case, sample_native)))
    where = "CUDA max_memory_allocated" if module.device.type == "cuda" else "process peak RSS"
    rank_zero_info(f"preflight: the worst case ({case.describe()}) fits: peak {peak / GIB:.2f} GiB ({where})")
    return peak


def oom_summary(error: BaseException) -> str:
    """What ran out, in a few words: CUDA's allocator, the CPU's, or Python's."""
    kind = ("CUDA out of memory" if isinstance(error, torch.OutOfMemoryError)
            else "Python MemoryError" if isinstance(error, MemoryError) else "CPU allocation failed")  # fmt: skip
    wanted = requested_bytes(error)
    return f"{kind} allocating {wanted / 2**20:.1f} MiB more" if wanted else kind


def failure_line(case: WorstCase, reached: int, message: str, fitting: list[str]) -> str:
    fix = "; ".join(fitting) if fitting else "nothing tried fitted: a smaller model, 4-bit or a larger device"
    return (
        f"preflight: the worst step ({case.describe()}) ran out of memory after reaching a peak of "
        f"{reached / GIB:.2f} GiB ({message}); settings that fit: {fix}; model.compute.preflight: false skips "
        "this check"
    )
