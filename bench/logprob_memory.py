"""Peak memory and time of token log-probs, forward + backward: chunked (lampo_pl.logprobs) vs plain.

Plain is what most trainers do: logits [N·L, V] -> log_softmax -> gather, which keeps several
[N·L, V] float32 tensors alive through the backward. Ours keeps one [chunk, V] at a time
(lampo_pl/logprobs.py explains how). The model body is left out: random final hidden states go
through an `nn.Linear` output head of Qwen3's 152k vocabulary, which is where the memory goes.

Memory is the peak above the baseline before the call: `torch.cuda.max_memory_allocated` on CUDA;
on CPU (where allocator statistics do not exist) the process RSS, sampled every millisecond by a
thread — big tensors are mmap-ed and returned to the OS when freed, so RSS follows them.

    .venv/bin/python bench/logprob_memory.py                      # ~30 s on 2 idle CPU cores
    .venv/bin/python bench/logprob_memory.py --rows 16 --tokens 1024 --device cuda
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lampo_pl.logprobs import logprobs_from_hidden

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass
class Result:
    method: str
    peak_mib: float
    seconds: float
    max_abs_diff: float


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


def _peak_cpu(fn: Callable[[], Tensor]) -> tuple[Tensor, float]:
    """Run fn; return its result and the peak RSS above the starting RSS, in bytes."""
    baseline, peak, done = _rss_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = fn()
    finally:
        done.set()
        sampler.join()
    return result, max(peak[0], _rss_bytes()) - baseline


def _peak_cuda(fn: Callable[[], Tensor]) -> tuple[Tensor, float]:
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = fn()
    torch.cuda.synchronize()
    return result, torch.cuda.max_memory_allocated() - baseline


def _step(hidden: Tensor, targets: Tensor, head: nn.Linear, chunk_size: int | None) -> Tensor:
    """Log-probs and their backward; chunk_size None is the plain path."""
    hidden.grad, head.weight.grad = None, None
    if chunk_size is None:
        logits = head(hidden).float()  # [M, V]
        logp = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)  # [M]
    else:
        logp, _ = logprobs_from_hidden(hidden, targets, head, chunk_size=chunk_size)  # [M]
    logp.sum().backward()
    return logp.detach()


def run(args: argparse.Namespace) -> list[Result]:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    head = nn.Linear(args.hidden, args.vocab, bias=False, device=device, dtype=dtype)
    rows = args.rows * args.tokens
    hidden = torch.randn(rows, args.hidden, device=device, dtype=dtype, requires_grad=True)  # [N·L, H]
    targets = torch.randint(0, args.vocab, (rows,), device=device)  # [N·L]
    measure = _peak_cuda if device.type == "cuda" else _peak_cpu
    methods: list[tuple[str, int | None]] = [(f"chunked {c}", c) for c in args.chunk_sizes]
    if not args.no_plain:
        methods.append(("plain", None))
    _step(hidden[:8], targets[:8], head, 8)  # warm-up: kernels, allocator
    reference: Tensor | None = None
    results: list[Result] = []
    for name, chunk in reversed(methods):  # plain first: its values are the reference
        start = time.perf_counter()
        logp, peak = measure(lambda chunk=chunk: _step(hidden, targets, head, chunk))
        seconds = time.perf_counter() - start
        reference = logp if reference is None else reference
        diff = float((logp.float() - reference.float()).abs().max())
        results.append(Result(name, peak / 2**20, seconds, diff))
    return results[::-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4, help="N responses")
    parser.add_argument("--tokens", type=int, default=256, help="L tokens per response")
    parser.add_argument("--vocab", type=int, default=152064, help="V (Qwen3's padded vocabulary)")
    parser.add_argument("--hidden", type=int, default=128, help="H of the output head")
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[128, 512], help="rows per chunk")
    parser.add_argument("--dtype", default="float32", help="head and hidden-state dtype")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain path (it may not fit)")
    args = parser.parse_args()
    results = run(args)
    logits_mib = args.rows * args.tokens * args.vocab * 4 / 2**20
    print(f"N={args.rows} L={args.tokens} V={args.vocab} H={args.hidden} {args.dtype} on {args.device}; "
          f"one [N·L, V] float32 logits tensor = {logits_mib:,.0f} MiB")  # fmt: skip
    print(f"| {'method':<14} | {'peak extra MiB':>14} | {'fwd+bwd s':>9} | {'max |Δ logp|':>12} |")
    print(f"|{'-' * 16}|{'-' * 16}|{'-' * 11}|{'-' * 14}|")
    for r in results:
        print(f"| {r.method:<14} | {r.peak_mib:>14,.0f} | {r.seconds:>9.2f} | {r.max_abs_diff:>12.2e} |")


if __name__ == "__main__":
    main()
