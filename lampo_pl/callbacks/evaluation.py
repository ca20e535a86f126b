"""Evaluate the policy, the base model or a saved adapter on the data module's benchmark sets.

When: before training, every N steps and after training (``fit``), and once per ``lampo validate``
or ``lampo test`` (with ``lampo_pl.evaluation_steps.EvaluationSteps`` on the module, Lightning runs
those loops; the evaluation itself happens here when their epoch ends, so that one set of settings
serves every stage).

What is written per evaluation: a printed table; ``eval/<set>/avg@k``, ``pass@j`` and breakdown
scalars plus the table as text to the loggers (TensorBoard); and ``<output_dir>/<tag>_step<N>.json``
with the numbers, the evaluation and model settings and the model's identity (name, which adapter,
a SHA-256 of its weights, the checkpoint it came from).

Sampling draws from a private RNG stream seeded by ``seed``: an evaluation never changes what
training samples next, and evaluating the same weights twice gives the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, is_dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from peft import PeftModel, get_peft_model_state_dict

from lampo_pl.checkpointing import write_text_atomic
from lampo_pl.data.record import Problem
from lampo_pl.evaluation import EvalResult, Generate, evaluate, format_table
from lampo_pl.rollout import SamplingParams, generate_rollout

EVAL_ADAPTER = "evaluated"  # name under which an adapter folder is loaded next to `policy` and `reference`


def policy_generator(pl_module: Any, sampling: SamplingParams) -> Generate:
    """A ``Generate`` that samples from the module's model with its active adapter (one call per chunk)."""

    def generate(problems: list[Problem], k: int) -> list[str]:
        rollout = generate_rollout(
            pl_module.policy_model,
            pl_module.tokenizer,
            pl_module.render(problems),
            k,
            sampling,
            max_context=pl_module.max_context,
        )
        return rollout.texts

    return generate


@contextmanager
def evaluated_adapter(model: PeftModel, target: str) -> Iterator[str | None]:
    """Run the body with ``target`` active; yields the active adapter's name (``None`` for the base model).

    ``target``: ``policy`` (the trained adapter), ``base`` (every adapter off, peft's
    ``disable_adapter()``) or the folder of a PEFT adapter, loaded for the body and removed after.
    """
    if target == "policy":
        yield model.active_adapter
        return
    if target == "base":
        with model.disable_adapter():
            yield None
        return
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    previous = model.active_adapter
    # Lightning runs validate/test under inference mode; weights created there could not be
    # switched by set_adapter afterwards, so the adapter is loaded as ordinary tensors.
    with torch.inference_mode(False):
        model.load_adapter(target, adapter_name=EVAL_ADAPTER, is_trainable=False)
    model.set_adapter(EVAL_ADAPTER)
    try:
        yield EVAL_ADAPTER
    finally:
        model.set_adapter(previous)
        model.delete_adapter(EVAL_ADAPTER)
        for name, param in model.named_parameters():  # set_adapter changes requires_grad; put it back
            param.requires_grad_(flags[name])


def adapter_sha256(model: PeftModel, adapter: str | None) -> str | None:
    """SHA-256 over an adapter's tensors (names sorted): which weights were evaluated, in one string."""
    if adapter is None:
        return None
    digest = hashlib.sha256()
    for name, tensor in sorted(get_peft_model_state_dict(model, adapter_name=adapter).items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


@contextmanager
def forked_rng(seed: int) -> Iterator[None]:
    """A private RNG stream (CPU and the current CUDA device) seeded by ``seed``; the outer one is restored."""
    cuda = torch.cuda.is_available()
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed(seed)  # the current device only: the one that was forked
        yield


@contextmanager
def thinking_mode(pl_module: Any, enable_thinking: bool | None) -> Iterator[None]:
    """Render prompts with ``enable_thinking`` for the body (``None``: the module's own prompt settings).

    The module's ``render`` stays the one place that builds prompts; only its setting is swapped.
    """
    if enable_thinking is None:
        yield
        return
    saved = pl_module.prompt
    pl_module.prompt = replace(saved, enable_thinking=enable_thinking)
    try:
        yield
    finally:
        pl_module.prompt = saved


def result_metrics(results: list[EvalResult], prefix: str = "eval") -> dict[str, float]:
    """Scalars for the loggers: ``eval/<set>/avg@k``, ``eval/<set>/pass@j``, ``eval/<set>/<bucket>/avg@k``."""
    metrics: dict[str, float] = {}
    for r in results:
        metrics[f"{prefix}/{r.name}/avg@{r.k}"] = r.avg_at_k
        metrics |= {f"{prefix}/{r.name}/pass@{j}": v for j, v in r.pass_at.items()}
        metrics |= {f"{prefix}/{r.name}/{b}/avg@{r.k}": bucket.avg_at_k for b, bucket in r.breakdown.items()}
    return metrics


class BenchmarkEvaluation(L.Callback):
    """avg@k and pass@k of the policy on named evaluation sets, printed, logged and saved as JSON."""

    def __init__(
        self,
        k: int = 1,
        temperature: float = 0.6,
        top_p: float = 0.95,
        max_new_tokens: int | None = None,
        enable_thinking: bool | None = None,
        every_n_steps: int = 0,
        at_start: bool = True,
        at_end: bool = True,
        limit: int | None = None,
        batch_size: int = 16,
        seed: int = 1234,
        output_dir: str | None = None,
        target: str = "policy",
        progress: bool = True,
    ) -> None:
        """Args:
        k: Samples per problem.
        temperature: Sampling temperature (0.6 is the reasoning-RL convention; 0 is greedy).
        top_p: Nucleus sampling threshold.
        max_new_tokens: Response budget; null: the training rollout's.
        enable_thinking: Thinking mode of chat templates that have one (Qwen3); null: the training prompt's.
        every_n_steps: Also evaluate every N training steps (0: never).
        at_start: Evaluate before the first training step.
        at_end: Evaluate after the last training step.
        limit: Evaluate only the first N problems of each set.
        batch_size: Problems per generation batch (each sampled k times).
        seed: Seed of the evaluation's own random stream (training's RNG is left untouched).
        output_dir: Where JSON results go; null: ``<log_dir>/eval``.
        target: What to evaluate: ``policy``, ``base`` (adapters disabled) or a PEFT adapter folder.
        progress: Show a progress bar while generating.
        """
        self.k, self.temperature, self.top_p, self.max_new_tokens = k, temperature, top_p, max_new_tokens
        self.enable_thinking, self.target = enable_thinking, target
        self.every_n_steps, self.at_start, self.at_end = every_n_steps, at_start, at_end
        self.limit, self.batch_size, self.seed = limit, batch_size, seed
        self.output_dir, self.progress = output_dir, progress
        self.history: list[dict[str, Any]] = []
        self._checkpoint_step: int | None = None

    # ---- when --------------------------------------------------------------------------------------

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if self.at_start:
            self.run(trainer, pl_module, "start")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        if self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0:
            self.run(trainer, pl_module, "periodic")

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        done_here = bool(self.history) and self.history[-1]["step"] == self.step(trainer)
        if self.at_end and not done_here:  # every_n_steps may just have evaluated these weights
            self.run(trainer, pl_module, "end")
        if len(self.history) > 1 and trainer.is_global_zero:
            print(f"\nevaluations of this run\n{format_history(self.history)}")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        # During fit Lightning may run the (empty) validation loop too; fit has its own schedule above.
        if trainer.state.fn in ("validate", "test") and not trainer.sanity_checking:
            self.run(trainer, pl_module, trainer.state.fn.value)

    on_test_epoch_end = on_validation_epoch_end

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        # validate/test restore only the weights, not the loops: remember which step those weights are.
        self._checkpoint_step = checkpoint.get("global_step")

    def step(self, trainer: L.Trainer) -> int:
        """The training step of the evaluated weights (a checkpoint's own step under validate/test)."""
        if trainer.state.fn in ("validate", "test") and self._checkpoint_step is not None:
            return self._checkpoint_step
        return trainer.global_step

    # ---- what --------------------------------------------------------------------------------------

    def sampling(self, pl_module: Any) -> SamplingParams:
        """The training rollout's sampler (engine, LoRA merging) with this evaluation's own settings."""
        return replace(
            pl_module.sampling,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=0,
            max_new_tokens=self.max_new_tokens or pl_module.sampling.max_new_tokens,
            min_new_tokens=0,  # graded answers come from π itself, whatever a benchmark forces in training
        )

    def problem_sets(self, trainer: L.Trainer) -> dict[str, list[Problem]]:
        sets: dict[str, list[Problem]] = trainer.datamodule.eval_sets()  # type: ignore[attr-defined]
        return {name: problems[: self.limit] if self.limit else problems for name, problems in sets.items()}

    def run(self, trainer: L.Trainer, pl_module: Any, tag: str) -> list[EvalResult]:
        """Evaluate every set now; print, log and save the results under ``tag``."""
        sampling = self.sampling(pl_module)
        enable_thinking = pl_module.prompt.enable_thinking if self.enable_thinking is None else self.enable_thinking
        start = time.perf_counter()
        model = pl_module.policy_model
        with (
            forked_rng(self.seed),
            evaluated_adapter(model, self.target) as adapter,
            thinking_mode(pl_module, self.enable_thinking),
        ):
            generate = policy_generator(pl_module, sampling)
            results = [
                evaluate(
                    name,
                    problems,
                    generate,
                    k=self.k,
                    batch_size=self.batch_size,
                    thinking=bool(enable_thinking),
                    progress=self.progress and trainer.is_global_zero,
                )
                for name, problems in self.problem_sets(trainer).items()
            ]
            identity = {
                "name": pl_module.model_name,
                "target": self.target,
                "adapter_sha256": adapter_sha256(model, adapter),
                "checkpoint": None if trainer.ckpt_path is None else str(trainer.ckpt_path),
            }
        record = {
            "tag": tag,
            "step": self.step(trainer),
            "seconds": time.perf_counter() - start,
            "model": identity,
            "evaluation": self.settings(),
            "sampling": asdict(sampling),
            "enable_thinking": enable_thinking,
            "hparams": _jsonable(dict(pl_module.hparams)),
            "data": _jsonable(dict(trainer.datamodule.hparams)) if trainer.datamodule is not None else None,
            "results": [asdict(r) for r in results],
        }
        self.history.append(record)
        self.report(trainer, pl_module, record, results)
        return results

    def settings(self) -> dict[str, Any]:
        names = (
            "k",
            "temperature",
            "top_p",
            "max_new_tokens",
            "enable_thinking",
            "limit",
            "batch_size",
            "seed",
            "target",
        )
        return {name: getattr(self, name) for name in names}

    # ---- where -------------------------------------------------------------------------------------

    def report(self, trainer: L.Trainer, pl_module: Any, record: dict[str, Any], results: list[EvalResult]) -> None:
        table = format_table(results)
        step, tag = record["step"], record["tag"]
        metrics = result_metrics(results)
        if trainer.state.fn in ("validate", "test"):
            # Through Lightning: trainer.validate/test then return these numbers and print them too.
            pl_module.log_dict(metrics, add_dataloader_idx=False)
        else:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text(f"eval/{tag}", f"```\n{table}\n```", global_step=step)
        if not trainer.is_global_zero:
            return
        target = record["model"]["target"]
        print(f"\nevaluation ({tag}, {target}, step {step}, {record['seconds']:.1f} s)\n{table}")
        out = Path(self.output_dir or Path(trainer.log_dir or ".") / "eval")
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / f"{tag}_step{step}.json", json.dumps(record, indent=2))  # never half a file


@dataclass
class EvalOverrides:
    """Command-line choices of ``lampo validate`` / ``lampo test``, applied to every ``BenchmarkEvaluation``.

    Attributes:
        adapter: Evaluate this PEFT adapter folder (e.g. ``runs/x/version_0/adapter/final``) instead of the policy.
        base_model: Evaluate the base model, every adapter disabled.
        k: Samples per problem; null: the callback's.
        limit: Evaluate only the first N problems of each set; null: the callback's.
    """

    adapter: str | None = None
    base_model: bool = False
    k: int | None = None
    limit: int | None = None

    def apply(self, trainer: L.Trainer) -> list[BenchmarkEvaluation]:
        """Set these choices on the trainer's evaluation callbacks (adding one with defaults if it has none)."""
        if self.adapter and self.base_model:
            raise ValueError("--adapter and --base_model exclude each other: evaluate one model at a time")
        callbacks = [c for c in trainer.callbacks if isinstance(c, BenchmarkEvaluation)]  # type: ignore[attr-defined]
        if not callbacks:
            callbacks = [BenchmarkEvaluation()]
            trainer.callbacks.append(callbacks[0])  # type: ignore[attr-defined]
        for callback in callbacks:
            if self.base_model or self.adapter:
                callback.target = "base" if self.base_model else str(self.adapter)
            callback.k = self.k or callback.k
            callback.limit = self.limit or callback.limit
        return callbacks


def format_history(history: list[dict[str, Any]]) -> str:
    """One row per evaluation and set: tag, step, avg@k and pass@k (how the numbers moved during a run)."""
    lines = [f"{'tag':<10} {'step':>6} {'benchmark':<20} {'avg@k':>7} {'pass@k':>7}"]
    for record in history:
        for r in record["results"]:
            lines.append(
                f"{record['tag']:<10} {record['step']:>6} {r['name']:<20} {r['avg_at_k']:>7.3f} "
                f"{r['pass_at'][r['k']]:>7.3f}"
            )
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    """Hyper-parameters as JSON (dataclasses and other objects by their ``str``)."""
    return json.loads(json.dumps(value, default=lambda v: asdict(v) if is_dataclass(v) else str(v)))
