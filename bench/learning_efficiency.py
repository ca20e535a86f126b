"""Learning efficiency of LamPO vs GRPO-family baselines: the ablation table from the command line.

Runs every method × seed of an ablation preset (lampo_pl.ablation; default ``tiny``: the warmed-up
tiny Qwen3 on one-digit sums, 6 methods × 5 seeds, well under an hour on a 2-core CPU) and writes,
into ``--out``: ``table.md``, ``table.csv``, ``curves.png``, ``setup.json`` (settings, machine,
versions) and every run under ``runs/`` (re-running with the same settings reuses finished runs).
It measures; it asserts nothing.

    python bench/learning_efficiency.py                      # the embedded default
    python bench/learning_efficiency.py --preset smollm2     # the packaged SmolLM2-135M (hours on a CPU)
    python bench/learning_efficiency.py --steps 20 --seeds 0 1 --methods grpo lampo --out /tmp/le
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch

from lampo_pl.ablation import METHODS, PRESETS, load_results, preset, run_ablation, summarise, to_csv, to_markdown

OVERRIDABLE = ("model", "steps", "prompts_per_step", "group_size", "max_new_tokens", "temperature", "lr",
               "lora_r", "density_weight", "eval_every", "eval_problems", "eval_k", "threshold", "smooth",
               "workers", "threads_per_run")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/learning_efficiency/<preset>")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--engine", choices=["native", "generate"], default=None, help="sampler (SamplingParams)")
    types = {f.name: f.type for f in fields(preset("tiny"))}
    for name in OVERRIDABLE:
        kind = {"int": int, "float": float, "str": str}[str(types[name])]
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None)
    return parser.parse_args()


def machine() -> dict[str, object]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def main() -> None:
    args = parse_args()
    overrides = {name: getattr(args, name) for name in OVERRIDABLE if getattr(args, name) is not None}
    if args.methods:
        overrides["methods"] = tuple(args.methods)
    if args.seeds:
        overrides["seeds"] = tuple(args.seeds)
    if args.engine:
        overrides["engine"] = args.engine
    settings = replace(preset(args.preset), **overrides)
    out = args.out or Path(__file__).parent / "results" / "learning_efficiency" / args.preset
    out.mkdir(parents=True, exist_ok=True)
    total = len(settings.methods) * len(settings.seeds)
    print(f"{total} runs ({len(settings.methods)} methods × {len(settings.seeds)} seeds), {settings.workers} at a "
          f"time, into {out}", flush=True)
    earlier = len(list((out / "runs").glob("*.json")))
    start = time.perf_counter()
    done = 0

    def progress(result) -> None:  # type: ignore[no-untyped-def]
        nonlocal done
        done += 1
        print(f"[{done}/{total}] {result.name}: held-out avg@{settings.eval_k} {result.evals[0]['avg_at_k']:.3f} → "
              f"{result.evals[-1]['avg_at_k']:.3f} ({result.seconds:.0f} s)", flush=True)

    results = run_ablation(settings, out, on_result=progress)
    wall = time.perf_counter() - start
    rows = summarise(results, settings)
    table = to_markdown(rows, settings)
    (out / "table.md").write_text(table)
    (out / "table.csv").write_text(to_csv(rows))
    setup = {"preset": args.preset, "settings": asdict(settings), "machine": machine(), "wall_seconds": wall,
             "runs": len(results), "runs_found_finished": earlier}
    (out / "setup.json").write_text(json.dumps(setup, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    from lampo_pl.ablation.plots import plot_ablation

    plot_ablation(load_results(out), settings.methods, settings.smooth, settings.threshold).savefig(
        out / "curves.png", dpi=110
    )
    print(f"\n{table}\nwall {wall / 60:.1f} min; wrote table.md, table.csv, curves.png, setup.json to {out}")


if __name__ == "__main__":
    main()
