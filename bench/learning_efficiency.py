"""Learning efficiency of LamPO vs GRPO-family baselines: the ablation table from the command line.

Runs every method × seed of an ablation preset (lampo_pl.ablation.settings.PRESETS, described
there) and writes, into ``--out``: ``table.md`` (per-method table, paired differences to the baseline
with 95 % intervals, the density reward's effect and its difference across methods, each cell with its
Holm-adjusted p-value and interval within the preset's family, a power table, and the code versions the
runs came from), ``table.csv``, ``paired.csv``, ``curves.png``, ``differences.png``, ``setup.json``
(settings, machine, versions, wall time) and every run under ``runs/`` (each run file records its code
version, machine, library versions and wall time). Re-running with the same settings reuses finished
runs made by the same code (``--reuse-any-version`` to reuse others), so a long preset can be spread
over several sittings (runs go seed by seed, so a stopped ablation holds complete pairs). It measures;
it asserts nothing.

    python bench/learning_efficiency.py                          # the embedded default (preset tiny)
    python bench/learning_efficiency.py --preset tiny-room       # room to learn: τ sweep, ± density
    python bench/learning_efficiency.py --preset smollm2         # SmolLM2-135M with vLLM (hours on a CPU)
    python bench/learning_efficiency.py --steps 20 --seeds 0 1 --methods grpo lampo lampo@tau=2 --out /tmp/le
    python bench/learning_efficiency.py --preset smollm2 --report-only   # tables and plots from saved runs
    python bench/learning_efficiency.py --preset smollm2-resolution      # the resolution run (docs/ablations.md)
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

from lampo_pl.ablation import PRESETS, load_results, method_preset, preset, run_ablation, summarise, to_csv
from lampo_pl.ablation.inference import interaction_differences
from lampo_pl.ablation.paired import paired_csv, paired_differences
from lampo_pl.ablation.provenance import machine, versions
from lampo_pl.ablation.report import report_markdown
from lampo_pl.ablation.settings import UNAVAILABLE, AblationSettings

OVERRIDABLE = ("model", "steps", "prompts_per_step", "group_size", "max_new_tokens", "temperature", "lr",
               "lora_r", "density_weight", "eval_every", "eval_problems", "eval_k", "threshold", "smooth",
               "workers", "threads_per_run")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted([*PRESETS, *UNAVAILABLE]), default="tiny")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/learning_efficiency/<preset>")
    parser.add_argument("--methods", nargs="+", type=_arm, default=None,
                        help="arms: <base>[+rouge][@field=value], e.g. grpo lampo+rouge@tau=2 (ablation/methods.py)")
    parser.add_argument("--baseline", default=None, help="the arm paired differences are taken against (grpo)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    parser.add_argument("--engine", choices=["native", "generate", "vllm"], default=None,
                        help="sampler (SamplingParams.engine)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: tables and plots from the runs already saved in --out")
    parser.add_argument("--reuse-any-version", action="store_true",
                        help="reuse saved runs made by another version of lampo_pl (refused by default; the report "
                             "flags mixed versions)")
    types = {f.name: f.type for f in fields(preset("tiny"))}
    for name in OVERRIDABLE:
        kind = {"int": int, "float": float, "str": str}[str(types[name])]
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None)
    return parser.parse_args()


def _arm(spec: str) -> str:
    try:
        method_preset(spec)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return spec


def main() -> None:
    args = parse_args()
    overrides = {name: getattr(args, name) for name in OVERRIDABLE if getattr(args, name) is not None}
    for name in ("methods", "seeds"):
        if getattr(args, name):
            overrides[name] = tuple(getattr(args, name))
    for name in ("engine", "baseline"):
        if getattr(args, name):
            overrides[name] = getattr(args, name)
    try:
        settings = replace(preset(args.preset), **overrides)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    out = args.out or Path(__file__).parent / "results" / "learning_efficiency" / args.preset
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.report_only:
        results = [r for r in load_results(out) if r.method in settings.methods and r.seed in settings.seeds]
        if not results:
            raise SystemExit(f"no saved runs of these methods and seeds under {out / 'runs'}")
    else:
        results = run_all(settings, out, args.reuse_any_version)
    report(settings, results, out, args.preset, time.perf_counter() - start)


def run_all(settings: AblationSettings, out: Path, reuse_any_version: bool) -> list:  # type: ignore[type-arg]
    total = len(settings.methods) * len(settings.seeds)
    print(f"{total} runs ({len(settings.methods)} methods × {len(settings.seeds)} seeds), {settings.workers} at a "
          f"time, into {out}", flush=True)
    done = 0

    def progress(result) -> None:  # type: ignore[no-untyped-def]
        nonlocal done
        done += 1
        print(f"[{done}/{total}] {result.name}: held-out avg@{settings.eval_k} {result.evals[0]['avg_at_k']:.3f} → "
              f"{result.evals[-1]['avg_at_k']:.3f} ({result.seconds:.0f} s)", flush=True)

    return run_ablation(settings, out, on_result=progress, reuse_any_version=reuse_any_version)


def report(settings: AblationSettings, results: list, out: Path, name: str, wall: float) -> None:  # type: ignore[type-arg]
    table = report_markdown(results, settings)
    versus = paired_differences(results, settings)
    density = paired_differences(results, settings, against="binary")
    interactions = interaction_differences(results, settings)
    rows = summarise(results, settings)
    (out / "table.md").write_text(table)
    (out / "table.csv").write_text(to_csv(rows))
    (out / "paired.csv").write_text(paired_csv([*versus, *density, *interactions]))
    setup = {"preset": name, "settings": asdict(settings), "machine": machine(), "versions": versions(),
             "wall_seconds_this_call": wall,
             "run_seconds_total": sum(r.seconds for r in results), "runs": len(results)}
    (out / "setup.json").write_text(json.dumps(setup, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    from lampo_pl.ablation.plots import plot_ablation, plot_differences

    plot_ablation(results, settings.methods, settings.smooth, settings.threshold).savefig(out / "curves.png", dpi=110)
    plot_differences(results, settings.methods, settings.baseline, settings.smooth).savefig(
        out / "differences.png", dpi=110)
    print(f"\n{table}\nwall {wall / 60:.1f} min this call, {setup['run_seconds_total'] / 60:.1f} min of runs; wrote "
          f"table.md, table.csv, paired.csv, curves.png, differences.png, setup.json to {out}")


if __name__ == "__main__":
    main()
