"""``tiny:qwen3-sft``: the tiny Qwen3 after a brief supervised warm-up on one-digit synthetic sums.

Why it exists: an ablation needs many runs (6 methods × 5 seeds here), and the packaged SmolLM2-135M
costs ~40 s per step on a 2-core CPU. The randomly initialised tiny model is fast (~0.3 s per step)
but never answers correctly, so every group's rewards are equal and no method can learn. A short SFT
(``lampo_pl.warmup``) on the reference solutions of level-1 synthetic problems ("What is 3 + 5?")
stops it early, at partial competence: measured (1 CPU thread, 64 held-out problems × 4 samples at
temperature 1), 60 steps give 6% accuracy, 120 give 38%, 150 give 61% and 200 give 91%. ``SFT_ARGS``
takes 150 steps (the built model scores 0.56 on the ablation's held-out set), so an RL run starts well
between 0 and 1 with room to improve. With 110 steps (~0.3) RL learned no faster in trial runs.

The build is deterministic (one CPU thread, fixed seeds; ~15 s) and cached like the other tiny
folders, keyed by ``TINY_VERSION`` and ``SFT_VERSION``. ``tiny:qwen3-sft<N>`` stops after N steps
instead (its own cached folder): the ``tiny-room`` ablation starts from ``-sft100``, 0.28 held-out
accuracy (a trial run gained ~0.1 training accuracy in 80 steps; the 6-seed ablation gained less).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from lampo_pl.data.prompting import render_prompt
from lampo_pl.data.synthetic import generate_synthetic
from lampo_pl.tiny import TinyArch, tiny_model, tiny_tokenizer
from lampo_pl.warmup import WarmupArgs, supervised_warmup

SFT_VERSION = 2  # bump when SFT_ARGS, SFT_LEVELS or SFT_PROBLEMS change: cached folders are keyed by it
SFT_LEVELS = (1,)
SFT_PROBLEMS = 2000
SFT_ARGS = WarmupArgs(steps=150, batch_size=32, lr=3e-3, seed=0)


def save_tiny_sft(directory: str | Path, arch: TinyArch = "qwen3", steps: int = SFT_ARGS.steps) -> Path:
    """Warm up the tiny model (every weight) on synthetic reference solutions for ``steps`` optimiser steps
    (``SFT_ARGS`` otherwise); save it with its tokenizer."""
    directory = Path(directory)
    tokenizer = tiny_tokenizer()
    model = tiny_model(arch)
    problems = generate_synthetic(SFT_PROBLEMS, levels=SFT_LEVELS, split="train")
    prompts = [render_prompt(tokenizer, q) for q in problems]  # as the RL step renders them by default
    solutions = [q.solution or "" for q in problems]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float sums in a fixed order: the same weights on every machine
    try:
        supervised_warmup(model, tokenizer, prompts, solutions, replace(SFT_ARGS, steps=steps))
    finally:
        torch.set_num_threads(threads)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
