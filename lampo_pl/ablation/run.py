"""Run an ablation: every (method, seed) pair as one ordinary lampo-pl training run.

Each run is ``LamPOModule`` + ``ProblemDataModule`` + ``BenchmarkEvaluation`` under a Lightning
``Trainer`` (what ``lampo fit`` runs), with one extra callback that keeps every step's logged
scalars. A finished run is written to ``<out>/runs/<method>_seed<seed>.json`` at once (atomic
rename), with its console output in ``<out>/logs/``; a later call with the same settings loads
finished runs instead of repeating them, so an interrupted ablation loses at most the runs in flight.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lampo_pl.ablation.methods import method_preset
from lampo_pl.ablation.provenance import UNKNOWN, commit_label, provenance, source_digest, version_key
from lampo_pl.ablation.settings import AblationSettings
from lampo_pl.callbacks.evaluation import BenchmarkEvaluation
from lampo_pl.checkpointing import write_text_atomic
from lampo_pl.data.datamodule import ProblemDataModule
from lampo_pl.module import LamPOModule
from lampo_pl.rollout import SamplingParams
from lampo_pl.settings import ComputeArgs, LoraArgs, OptimArgs, PromptArgs, RewardArgs


@dataclass
class RunResult:
    """One (method, seed) run.

    Attributes:
        method: The arm's spec (``lampo_pl.ablation.methods``: ``grpo``, ``lampo+rouge@tau=2``).
        seed: The run's seed.
        steps: Per training step, ``{"step": s, <metric>: value, ...}`` (the module's ``train/`` scalars).
        evals: Per held-out evaluation, ``{"step", "avg_at_k", "pass_at_k", "grader_failures"}``.
        seconds: Wall time of the run.
        settings: ``AblationSettings.run_identity()`` of the settings it ran with.
        provenance: Code version, machine and library versions (``provenance.provenance()``) and
            ``finished`` (UTC time); None in runs saved before it was recorded (their version is "unknown").
    """

    method: str
    seed: int
    steps: list[dict[str, float]]
    evals: list[dict[str, float]]
    seconds: float
    settings: dict[str, Any]
    provenance: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return run_name(self.method, self.seed)


def run_name(method: str, seed: int) -> str:
    return f"{method}_seed{seed}"


class StepHistory(L.Callback):
    """Keeps ``pl_module.last_step.metrics`` of every training step."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        record = pl_module.last_step
        self.rows.append({"step": float(trainer.global_step), **record.metrics})


def build_run(settings: AblationSettings, method: str, seed: int) -> tuple[LamPOModule, ProblemDataModule]:
    """The module and data module of one run.

    Paired seeds: ``seed`` orders the training prompts here, and (``seed_everything`` in ``run_one``)
    initialises the LoRA adapter and seeds every sample, the same for every method; the training and
    held-out problems themselves are one fixed draw for all seeds.
    """
    preset = method_preset(method)
    s = settings
    module = LamPOModule(
        model=s.model,
        group_size=s.group_size,
        prompts_per_step=s.prompts_per_step,
        lora=LoraArgs(dtype=s.dtype, quantization=s.quantization, r=s.lora_r, alpha=s.lora_alpha),  # type: ignore[arg-type]
        sampling=SamplingParams(temperature=s.temperature, max_new_tokens=s.max_new_tokens, engine=s.engine),
        method=preset.method,
        optim=OptimArgs(lr=s.lr, warmup_steps=s.warmup_steps),
        compute=ComputeArgs(micro_batch_size=s.micro_batch_size),
        rewards=RewardArgs(correctness=1.0, density=s.density_weight if preset.density else 0.0),
        prompt=PromptArgs(one_shot=s.one_shot),
        track_kl=s.track_kl,
    )
    data = ProblemDataModule(
        train_set="synthetic", eval_sets=["synthetic"], prompts_per_step=s.prompts_per_step, seed=0, shuffle_seed=seed,
        synthetic_eval_size=s.eval_problems, synthetic_levels=s.levels,
    )
    return module, data


@contextlib.contextmanager
def _quiet(log_file: Path) -> Iterator[None]:
    """Send the run's prints and Lightning's info lines to ``log_file`` (kept next to the results)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    with open(log_file, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        handler = logging.StreamHandler(out)
        lightning_log.addHandler(handler)
        lightning_log.setLevel(logging.WARNING)
        try:
            yield
        finally:
            lightning_log.removeHandler(handler)
            lightning_log.setLevel(level)


def run_one(
    settings: AblationSettings, method: str, seed: int, out_dir: str | Path, origin: dict[str, Any] | None = None
) -> RunResult:
    """Train one (method, seed) run, save it under ``out_dir`` and return it.

    ``origin``: the provenance to record (``run_ablation`` takes it once, when it starts: the code a
    long ablation runs is the code it loaded then, whatever is edited on disk meanwhile); None: now."""
    out = Path(out_dir)
    name = run_name(method, seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads_per_run)
    start = time.perf_counter()
    try:
        with _quiet(out / "logs" / f"{name}.log"):
            module, data = build_run(settings, method, seed)
            history = StepHistory()
            evaluation = BenchmarkEvaluation(
                k=settings.eval_k, temperature=settings.eval_temperature, top_p=1.0, every_n_steps=settings.eval_every,
                max_new_tokens=settings.max_new_tokens,  # the ablation evaluates at its training length
                batch_size=settings.eval_problems, seed=1234, output_dir=str(out / "eval" / name), progress=False,
            )
            trainer = L.Trainer(
                max_steps=settings.steps, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                use_distributed_sampler=False, callbacks=[history, evaluation],
            )
            L.seed_everything(seed, verbose=False)
            trainer.fit(module, datamodule=data)
        if trainer.global_step < settings.steps:  # e.g. SIGTERM: Lightning ends fit early, and it must not pass
            raise RuntimeError(f"{name} stopped after {trainer.global_step} of {settings.steps} steps; not saved")
    finally:
        torch.set_num_threads(threads)
    evals = [
        {"step": float(r["step"]), "avg_at_k": r["results"][0]["avg_at_k"],
         "pass_at_k": r["results"][0]["pass_at"][settings.eval_k],
         "grader_failures": float(r["results"][0].get("grader_failures", 0))}
        for r in evaluation.history
    ]
    record = {**(origin or provenance()), "finished": datetime.now(UTC).isoformat(timespec="seconds")}
    result = RunResult(method, seed, history.rows, evals, time.perf_counter() - start, settings.run_identity(), record)
    save_result(result, out / "runs" / f"{name}.json")
    return result


def save_result(result: RunResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(asdict(result), indent=1))  # a killed run never leaves a file to trust


def load_result(path: Path) -> RunResult:
    """A saved run; a file that is not one raises ``ValueError`` naming it."""
    try:
        raw = json.loads(path.read_text())
        return RunResult(**raw)
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"{path} is not a saved ablation run ({err}); delete it to re-run that run") from err


def load_results(out_dir: str | Path) -> list[RunResult]:
    """Every run saved under ``out_dir/runs``, sorted by method then seed."""
    paths = sorted(Path(out_dir, "runs").glob("*.json"))
    return sorted((load_result(p) for p in paths), key=lambda r: (r.method, r.seed))


def _finished(settings: AblationSettings, path: Path, current: str | None) -> RunResult | None:
    """The saved run at ``path`` if it may be reused: same settings, and made by the code version ``current``
    (``provenance.version_key``; None: any version)."""
    if not path.exists():
        return None
    result = load_result(path)
    if result.settings != settings.run_identity():
        changed = sorted(k for k in settings.run_identity() if result.settings.get(k) != settings.run_identity()[k])
        raise ValueError(f"{path} was run with other settings (differing: {', '.join(changed)}); use another "
                         "output folder or delete it")
    saved = version_key(result.provenance)
    if current is not None and saved != current:
        made = "by code of unknown version" if saved == UNKNOWN else \
            f"by other code ({saved}, commit {commit_label(result.provenance)}; now {current})"
        raise ValueError(f"{path} was made {made}: delete it to re-run it, or reuse it anyway with "
                         "--reuse-any-version (reuse_any_version=True; the report flags mixed versions)")
    return result


def run_ablation(
    settings: AblationSettings, out_dir: str | Path, on_result: Callable[[RunResult], None] | None = None,
    reuse_any_version: bool = False,
) -> list[RunResult]:
    """Every method × seed, ``settings.workers`` at a time; runs already saved in ``out_dir`` are reused.

    Runs go seed by seed (every method of seed 0, then of seed 1, ...), so an ablation stopped early
    still holds complete pairs. Returns them in ``settings.methods`` × ``settings.seeds`` order.
    ``on_result`` is called as each run finishes (or is found finished), e.g. to print progress.
    A saved run made by another version of ``lampo_pl`` (or of unknown version) raises ``ValueError``
    unless ``reuse_any_version``: numbers from two code versions would otherwise mix silently.
    """
    out = Path(out_dir)
    origin = provenance()
    current = None if reuse_any_version else version_key({"code": {"source_sha256": source_digest()}})
    todo: list[tuple[str, int]] = []
    results: dict[tuple[str, int], RunResult] = {}
    for seed in settings.seeds:
        for method in settings.methods:
            done = _finished(settings, out / "runs" / f"{run_name(method, seed)}.json", current)
            if done is None:
                todo.append((method, seed))
            else:
                results[method, seed] = done
                if on_result:
                    on_result(done)
    if settings.workers == 1:
        for method, seed in todo:
            results[method, seed] = run_one(settings, method, seed, out, origin)
            if on_result:
                on_result(results[method, seed])
    elif todo:
        # spawn, not fork: a forked child would inherit this process's torch thread pools and locks.
        with ProcessPoolExecutor(settings.workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(run_one, settings, m, s, out, origin): (m, s) for m, s in todo}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                if on_result:
                    on_result(results[futures[future]])
    return [results[m, s] for m in settings.methods for s in settings.seeds]
