"""Evaluate the policy, the base model or a saved adapter on the data module's benchmark sets.

When: before training, every N steps and after training (``fit``), and once per ``lampo validate``
or ``lampo test``. Under validate/test the batches are Lightning's (the data module's validation or
test loaders, one per set; ``--trainer.limit_val_batches`` works); during ``fit``, where Lightning runs
no validation, the callback iterates the same loaders itself. Each batch goes through the plain
functions of ``lampo_pl.evaluation`` (``sample_and_grade``, then ``summarise`` per set) with a
``Sampler`` (``lampo_pl/sampler.py``): the native one by default, or whatever ``sampler`` builds.

What is written per evaluation: a table (through Lightning's logger, ``rank_zero_info``, so that it
never fights a progress bar over stdout in Jupyter); ``eval/<set>/avg@k``, ``pass@j``, ``maj@k``,
``truncated`` and breakdown scalars plus the table as text to the loggers (TensorBoard); and
``<output_dir>/<tag>_<policy|base|adapter>_step<N>_k<k>.json`` with the numbers, the evaluation and
sampling settings as used, the model's identity (name, which adapter, a SHA-256 of its weights, the
checkpoint it came from) and, below ``responses_max_mb``, every response with its reference answer,
extracted answer and grade. A name already taken gets ``_2``, ``_3``, ...: no evaluation overwrites
another (``lampo validate --adapter A`` then ``--base_model true``).

Sampling draws from a private RNG stream seeded by ``seed``: an evaluation never changes what
training samples next, and evaluating the same weights twice gives the same numbers.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, is_dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from tqdm.auto import tqdm

from lampo_pl.callbacks.eval_target import (
    PrivateRNG,
    adapter_sha256,
    evaluated_adapter,
    load_sampler_factory,
    native_sampler,
)
from lampo_pl.checkpointing import write_text_atomic
from lampo_pl.data.record import Problem
from lampo_pl.evaluation import (
    EvalResult,
    Graded,
    format_table,
    protocol,
    result_metrics,
    sample_and_grade,
    summarise,
)
from lampo_pl.rollout import SamplingParams
from lampo_pl.sampler import Sampler
from lampo_pl.settings import finite, require


def rich_bar_in_jupyter(trainer: L.Trainer) -> bool:
    """Whether Lightning's Rich progress bar is live in Jupyter, where any write to sys.stdout/stderr recurses
    without end (rich's FileProxy.flush -> ipykernel's flush of its streams -> FileProxy.flush): the reason the
    evaluation reports through the logger and shows no bar of its own there."""
    if not isinstance(trainer.progress_bar_callback, RichProgressBar):
        return False
    from rich import get_console  # installed whenever a RichProgressBar runs

    return get_console().is_jupyter


class BenchmarkEvaluation(L.Callback):
    """avg@k, pass@k, maj@k and the truncated fraction of the policy on named evaluation sets."""

    def __init__(
        self,
        k: int = 1,
        temperature: float | None = None,
        top_p: float | None = None,
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
        sampler: str | None = None,
        generation_batch_size: int | None = None,
        responses_max_mb: float = 16.0,
    ) -> None:
        """Args:
        k: Samples per problem (lighteval's default is 1; maj@k needs k > 1).
        temperature: Sampling temperature (0 is greedy); null: the benchmark's published protocol (0.6,
            ``lampo_pl.evaluation.PUBLISHED``, docs/evaluation.md).
        top_p: Nucleus sampling threshold; null: the benchmark's published protocol (0.95).
        max_new_tokens: Response budget of the evaluation, separate from training's; null: the benchmark's
            published protocol (32,768 for MATH-500, AIME, GPQA-Diamond as in open-r1 and lighteval).
        enable_thinking: Thinking mode of chat templates that have one (Qwen3); null: the training prompt's.
        every_n_steps: Also evaluate every N training steps (0: never).
        at_start: Evaluate before the first training step.
        at_end: Evaluate after the last training step.
        limit: Evaluate only the first N problems of each set.
        batch_size: Problems per sampler call (each sampled k times).
        seed: Seed of the evaluation's own random stream (training's RNG is left untouched).
        output_dir: Where JSON results go; null: ``<log_dir>/eval``.
        target: What to evaluate: ``policy``, ``base`` (adapters disabled) or a PEFT adapter folder.
        progress: Show a progress bar while generating during ``fit`` (validate/test show Lightning's).
        sampler: Import path of a factory ``(pl_module) -> Sampler`` (``lampo_pl/sampler.py``), called with
            the evaluated adapter active; null: the native sampler (``native_sampler``).
        generation_batch_size: Rows per decode call of the native sampler while evaluating (its KV cache grows
            with rows × max_new_tokens; docs/evaluation.md); null: the module's ``generation_batch_size``.
        responses_max_mb: Keep every response (text, extracted answer, grade) in the result JSON when their
            texts total at most this many MB (UTF-8); above it only the numbers are kept. 0: never.
        """
        g = "BenchmarkEvaluation"  # checked when built, before anything loads: one line naming the setting
        require(isinstance(k, int) and k >= 1, g, "k", k, "an integer >= 1")
        require(temperature is None or (finite(temperature) and temperature >= 0), g, "temperature", temperature,
                "null or >= 0 (0: greedy)")
        require(top_p is None or (finite(top_p) and 0 < top_p <= 1), g, "top_p", top_p, "null or 0 < top_p <= 1")
        require(max_new_tokens is None or max_new_tokens >= 1, g, "max_new_tokens", max_new_tokens, "null or >= 1")
        require(every_n_steps >= 0, g, "every_n_steps", every_n_steps, ">= 0 (0: never)")
        require(limit is None or limit >= 1, g, "limit", limit, "null or >= 1")
        require(batch_size >= 1, g, "batch_size", batch_size, ">= 1")
        require(generation_batch_size is None or generation_batch_size >= 1, g, "generation_batch_size",
                generation_batch_size, "null or >= 1")
        require(finite(responses_max_mb) and responses_max_mb >= 0, g, "responses_max_mb", responses_max_mb,
                ">= 0 (0: keep no responses)")
        self.k, self.temperature, self.top_p, self.max_new_tokens = k, temperature, top_p, max_new_tokens
        self.enable_thinking, self.target = enable_thinking, target
        self.every_n_steps, self.at_start, self.at_end = every_n_steps, at_start, at_end
        self.limit, self.batch_size, self.seed = limit, batch_size, seed
        self.output_dir, self.progress, self.sampler = output_dir, progress, sampler
        self.generation_batch_size = generation_batch_size
        self.responses_max_mb = responses_max_mb
        self.history: list[dict[str, Any]] = []
        self._checkpoint_step: int | None = None
        self._session: ExitStack | None = None  # the open evaluation: the evaluated adapter
        self._rng: PrivateRNG | None = None  # the open evaluation's sampling stream
        self._sampler: Sampler | None = None
        self._identity: dict[str, Any] = {}
        self._sets: dict[str, tuple[list[Problem], Graded]] = {}  # set name -> problems so far, their grades
        self._pending: list[Problem] = []  # problems of `_pending_set` waiting for a full sampler call
        self._pending_set: str | None = None
        self._start = 0.0

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
        if len(self.history) > 1:
            rank_zero_info(f"\nevaluations of this run\n{format_history(self.history)}")

    def _in_eval_stage(self, trainer: L.Trainer) -> bool:
        # During fit Lightning may run the (empty) validation loop too; fit has its own schedule above.
        return trainer.state.fn in ("validate", "test") and not trainer.sanity_checking

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if self._in_eval_stage(trainer):
            self.open(trainer, pl_module)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: list[Problem],
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._in_eval_stage(trainer):
            self.add_batch(pl_module, set_name(trainer, dataloader_idx), batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if self._in_eval_stage(trainer):
            results = self.close(trainer, pl_module, trainer.state.fn.value)
            # Through Lightning: trainer.validate/test then return these numbers too.
            pl_module.log_dict(result_metrics(results), add_dataloader_idx=False)

    on_test_epoch_start = on_validation_epoch_start
    on_test_batch_end = on_validation_batch_end
    on_test_epoch_end = on_validation_epoch_end

    def on_exception(self, trainer: L.Trainer, pl_module: Any, exception: BaseException) -> None:
        if self._session is not None:  # put the adapter back even when a run fails
            self._session.close()
            self._session = None

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        # validate/test restore only the weights, not the loops: remember which step those weights are.
        self._checkpoint_step = checkpoint.get("global_step")

    def step(self, trainer: L.Trainer) -> int:
        """The training step of the evaluated weights (a checkpoint's own step under validate/test)."""
        if trainer.state.fn in ("validate", "test") and self._checkpoint_step is not None:
            return self._checkpoint_step
        return trainer.global_step

    # ---- what --------------------------------------------------------------------------------------

    def sampling(self, pl_module: Any, name: str) -> SamplingParams:
        """The training rollout's sampler settings (engine, LoRA merging) with this evaluation's own for ``name``."""
        published = protocol(name)
        return replace(
            pl_module.sampling,
            temperature=published.temperature if self.temperature is None else self.temperature,
            top_p=published.top_p if self.top_p is None else self.top_p,
            top_k=0,
            max_new_tokens=self.max_new_tokens or published.max_new_tokens,
            min_new_tokens=0,  # graded answers come from π itself, whatever a benchmark forces in training
        )

    def run(self, trainer: L.Trainer, pl_module: Any, tag: str) -> list[EvalResult]:
        """Evaluate every set now (during ``fit``: the data module's validation loaders); report under ``tag``."""
        names = trainer.datamodule.eval_names  # type: ignore[attr-defined]
        show = self.progress and trainer.is_global_zero and not rich_bar_in_jupyter(trainer)
        # A DataLoader draws a base seed from the global generator per iterator: forked, so that
        # training samples next exactly what it would have without this evaluation.
        with torch.random.fork_rng(devices=[]):
            self.open(trainer, pl_module)
            for idx, loader in enumerate(trainer.datamodule.val_dataloader()):  # type: ignore[attr-defined]
                for batch in tqdm(loader, desc=f"eval {names[idx]}", disable=not show, leave=False):
                    self.add_batch(pl_module, names[idx], batch)
            return self.close(trainer, pl_module, tag)

    def open(self, trainer: L.Trainer, pl_module: Any) -> None:
        """Start an evaluation: a fresh private RNG stream, the evaluated adapter active, the sampler built."""
        self._session, self._sets, self._start = ExitStack(), {}, time.perf_counter()
        self._pending, self._pending_set = [], None
        model = pl_module.policy_model
        self._rng = PrivateRNG(self.seed)
        adapter = self._session.enter_context(evaluated_adapter(model, self.target))
        self._sampler = (load_sampler_factory(self.sampler)(pl_module) if self.sampler
                         else native_sampler(pl_module, self.generation_batch_size))
        self._identity = {
            "name": pl_module.model_name,
            "target": self.target,
            "adapter_sha256": adapter_sha256(model, adapter),
            "checkpoint": None if trainer.ckpt_path is None else str(trainer.ckpt_path),
        }

    def add_batch(self, pl_module: Any, name: str, batch: list[Problem]) -> None:
        """Queue one batch of set ``name`` (problems past ``limit`` are skipped) and grade every full chunk.

        The sampler gets ``batch_size`` problems per call whatever the loader's batch size: the numbers
        depend on the evaluation's own settings only.
        """
        assert self._session is not None, "add_batch outside open/close"
        if self._pending and self._pending_set != name:
            self.flush(pl_module)
        problems, _ = self._sets.setdefault(name, ([], Graded()))
        room = len(batch) if self.limit is None else max(self.limit - len(problems) - len(self._pending), 0)
        self._pending_set = name
        self._pending += list(batch)[:room]
        while len(self._pending) >= self.batch_size:
            self.flush(pl_module, self.batch_size)

    def flush(self, pl_module: Any, count: int | None = None) -> None:
        """Sample and grade the first ``count`` queued problems (all by default)."""
        assert self._sampler is not None and self._rng is not None and self._pending_set is not None
        chunk, self._pending = self._pending[:count], self._pending[len(self._pending[:count]) :]
        if not chunk:
            return
        problems, graded = self._sets[self._pending_set]
        prompts = pl_module.render(chunk, enable_thinking=self.enable_thinking)
        params = self.sampling(pl_module, self._pending_set)
        with self._rng.active():
            graded.extend(sample_and_grade(self._sampler, chunk, prompts, self.k, params))
        problems.extend(chunk)

    def close(self, trainer: L.Trainer, pl_module: Any, tag: str) -> list[EvalResult]:
        """Summarise every set, restore the adapter and the RNG, and report."""
        assert self._session is not None, "close without open"
        if self._pending:
            self.flush(pl_module)
        self._session.close()
        self._session, self._sampler = None, None
        results = [summarise(name, problems, graded, self.k) for name, (problems, graded) in self._sets.items()]
        enable_thinking = pl_module.prompt.enable_thinking if self.enable_thinking is None else self.enable_thinking
        record = {
            "tag": tag,
            "step": self.step(trainer),
            "seconds": time.perf_counter() - self._start,
            "model": self._identity,
            "evaluation": self.settings(),
            "sampling": {name: asdict(self.sampling(pl_module, name)) for name in self._sets},
            "protocol": {name: self.protocol_used(pl_module, name) for name in self._sets},
            "enable_thinking": enable_thinking,
            "hparams": _jsonable(dict(pl_module.hparams)),
            "data": _jsonable(dict(trainer.datamodule.hparams)) if trainer.datamodule is not None else None,
            "results": [asdict(r) for r in results],
            "responses": self.kept_responses(),
        }
        self.history.append(record)
        self.report(trainer, record, results)
        return results

    def protocol_used(self, pl_module: Any, name: str) -> dict[str, Any]:
        """The sampling protocol as used for set ``name``: each value, and whether it is the benchmark's published
        one or this evaluation's setting (the published protocol is kept beside it for comparison)."""
        used, published = self.sampling(pl_module, name), protocol(name)
        own = {"temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_new_tokens}
        return {
            **{key: getattr(used, key) for key in own},
            "from_settings": sorted(key for key, value in own.items() if value is not None),
            "published": asdict(published),
        }

    def kept_responses(self) -> dict[str, list[dict[str, Any]]] | None:
        """Per set, each problem's reference answer and graded responses; ``None`` above ``responses_max_mb``."""
        kept = {
            name: [{"id": p.id, "answer": p.answer, "responses": r} for p, r in zip(problems, graded.responses,
                                                                                  strict=True)]
            for name, (problems, graded) in self._sets.items()
        }
        size = sum(len((s["text"] or "").encode()) for rows in kept.values() for row in rows for s in row["responses"])
        return kept if 0 < self.responses_max_mb and size <= self.responses_max_mb * 2**20 else None

    def settings(self) -> dict[str, Any]:
        names = ("k", "temperature", "top_p", "max_new_tokens", "enable_thinking", "limit", "batch_size", "seed",
                 "target", "sampler", "generation_batch_size", "responses_max_mb")
        return {name: getattr(self, name) for name in names}

    # ---- where -------------------------------------------------------------------------------------

    def report(self, trainer: L.Trainer, record: dict[str, Any], results: list[EvalResult]) -> None:
        table = format_table(results)
        step, tag = record["step"], record["tag"]
        if trainer.state.fn not in ("validate", "test"):  # validate/test log through pl_module.log_dict
            for logger in trainer.loggers:
                logger.log_metrics(result_metrics(results), step=step)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text(f"eval/{tag}", f"```\n{table}\n```", global_step=step)
        if not trainer.is_global_zero:
            return
        target = record["model"]["target"]
        rank_zero_info(f"\nevaluation ({tag}, {target}, step {step}, {record['seconds']:.1f} s)\n{table}")
        out = Path(self.output_dir or Path(trainer.log_dir or ".") / "eval")
        out.mkdir(parents=True, exist_ok=True)
        path = free_path(out / f"{tag}_{target_label(target)}_step{step}_k{self.k}.json")
        write_text_atomic(path, json.dumps(record, indent=2))  # never half a file
        rank_zero_info(f"evaluation written to {path}")


def target_label(target: str) -> str:
    """``policy``, ``base`` or ``adapter`` (a folder): what was evaluated, for the result's file name."""
    return target if target in ("policy", "base") else "adapter"


def free_path(path: Path) -> Path:
    """``path`` or, when it exists, the first free ``<stem>_2<suffix>``, ``_3``, ... (never over a result)."""
    n, free = 2, path
    while free.exists():
        free, n = path.with_name(f"{path.stem}_{n}{path.suffix}"), n + 1
    return free


def set_name(trainer: L.Trainer, dataloader_idx: int) -> str:
    """The evaluation set of a validation/test dataloader (the data module's ``eval_sets`` order)."""
    return trainer.datamodule.eval_names[dataloader_idx]  # type: ignore[attr-defined]


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
    """One row per evaluation and set: tag, step, avg@k, pass@k, maj@k, truncated (how the numbers moved)."""
    lines = [f"{'tag':<10} {'step':>6} {'benchmark':<20} {'avg@k':>7} {'pass@k':>7} {'maj@k':>7} {'trunc':>7}"]
    for record in history:
        for r in record["results"]:
            lines.append(
                f"{record['tag']:<10} {record['step']:>6} {r['name']:<20} {r['avg_at_k']:>7.3f} "
                f"{r['pass_at'][r['k']]:>7.3f} {r['maj_at_k']:>7.3f} {r['truncated']:>7.3f}"
            )
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    """Hyper-parameters as JSON (dataclasses and other objects by their ``str``)."""
    return json.loads(json.dumps(value, default=lambda v: asdict(v) if is_dataclass(v) else str(v)))
