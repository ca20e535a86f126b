"""How the vLLM engine gets the current policy each step: merged weights pushed in place vs a LoRA request.

For each ``--sync`` mode, in its own process (one engine per process): start the engine on the policy,
then for ``--steps`` steps change the policy adapter (as an optimiser step does), sync it and sample
``--prompts`` × ``--group-size`` responses of ``--max-new-tokens`` tokens; report the engine start, the
median sync and sampling time, tokens/s, and the largest |log π_vllm − log π_θ| on the response
tokens against a teacher-forced pass of the trainer's model (exactness of what the engine serves).

    .venv/bin/python bench/vllm_sync.py --model packaged:smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
from typing import Any

import torch

from lampo_pl.data.synthetic import generate_synthetic
from lampo_pl.logprobs import token_logprobs
from lampo_pl.module import LamPOModule
from lampo_pl.policy import load_policy
from lampo_pl.rollout import SamplingParams, generate_rollout
from lampo_pl.vllm_engine import shared_engine


def run_mode(args: argparse.Namespace, sync: str, results: Any) -> None:
    torch.set_num_threads(args.threads)
    model, tokenizer = load_policy(args.model, lora_r=args.lora_r, lora_alpha=2 * args.lora_r)
    renderer = LamPOModule(model=args.model)
    renderer.tokenizer = tokenizer
    prompts = renderer.render(generate_synthetic(args.prompts, levels=(1, 2)))
    # No min_new_tokens: vLLM's log-probs would then be those of the EOS-banned distribution, not π's.
    sampling = SamplingParams(engine="vllm", vllm_sync=sync, temperature=1.0, max_new_tokens=args.max_new_tokens,
                              vllm_kv_cache_gib=args.kv_cache_gib)  # fmt: skip
    start = time.perf_counter()
    engine = shared_engine(model, sync=sync, kv_cache_gib=args.kv_cache_gib, gpu_memory_utilization=0.3, sleep=False,
                           max_model_len=model.config.max_position_embeddings)  # fmt: skip
    started = time.perf_counter() - start
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n and ".policy." in n]
    syncs, samples, worst = [], [], 0.0
    for step in range(args.steps):
        with torch.no_grad():  # an "optimiser step": the policy adapter changes
            for p in lora_b:
                p.add_(torch.randn_like(p) * 1e-3)
        start = time.perf_counter()
        engine.sync(model)
        syncs.append(time.perf_counter() - start)
        engine.sync = lambda _model: None  # type: ignore[method-assign]  # generate_rollout's own sync: done
        rollout = generate_rollout(model, tokenizer, prompts, args.group_size, sampling, record_logprobs=True,
                                   seed=step)  # fmt: skip
        del engine.sync  # back to the class's method
        samples.append(rollout.generation_seconds / max(int(rollout.response_lengths.sum()), 1))  # seconds per token
        model.eval()
        with torch.no_grad():
            teacher, _ = token_logprobs(model, rollout.input_ids[:4], rollout.attention_mask[:4], rollout.prompt_len)
        model.train()
        mask = rollout.response_mask[:4].bool()
        assert rollout.sampled_logprobs is not None
        worst = max(worst, float((teacher - rollout.sampled_logprobs[:4])[mask].abs().max()))
    results.put((sync, {"start (s)": started, "sync (s)": statistics.median(syncs), "tokens/s": 1 / statistics.median(
        samples), "max |Δ log p|": worst}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny:qwen3-hd32")
    parser.add_argument("--sync", nargs="+", choices=["merged", "lora"], default=["merged", "lora"])
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--kv-cache-gib", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    rows = {}
    for sync in args.sync:  # one after the other: never two engines on the CPU at once
        results = ctx.Queue()
        proc = ctx.Process(target=run_mode, args=(args, sync, results))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"--sync {sync} failed (exit code {proc.exitcode})")
        name, row = results.get()
        rows[name] = row
    print(f"{args.model}, {args.prompts} prompts × {args.group_size}, up to {args.max_new_tokens} tokens, "
          f"LoRA r={args.lora_r}, {args.threads} threads; medians of {args.steps} steps")
    columns = list(next(iter(rows.values())))
    print("| sync | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row[c]:.3g}" for c in columns) + " |")


if __name__ == "__main__":
    main()
