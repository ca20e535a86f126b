"""Show what the policy actually samples: a few prompts with their G responses, every N steps.

Reward curves say that something changed, not what: reading responses is how reward hacking
(e.g. echoing the question to fool a loose answer extractor, docs/ENVIRONMENT.md "Pitfalls") and
format collapse are caught. For each chosen prompt this writes its G responses with their total
reward, reward components, the answer the grader extracted and its grade (``correct``, ``wrong``,
``no_answer``, ``echo``, ...), advantage and, for LamPO, the response's row of pair weights; each
prompt carries its reference answer:

- to TensorBoard as markdown text (tag ``samples/prompt_<i>``, at the step of the rollout);
- to ``<dirpath>/samples.jsonl``, one JSON object per prompt and step (appended, flushed).

It reads ``pl_module.last_step`` (a ``lampo_pl.step_metrics.StepRecord``), which the module sets after
every training step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

if TYPE_CHECKING:
    from lampo_pl.step_metrics import StepRecord


def prompt_records(record: StepRecord, num_prompts: int) -> list[dict[str, Any]]:
    """The first ``num_prompts`` prompts of a step, each with its G responses and their scores."""
    g = record.group_size
    out = []
    for b in range(min(num_prompts, len(record.prompts))):
        rows = range(b * g, (b + 1) * g)  # the group of prompt b
        responses = [
            {
                "text": record.texts[i],
                "extracted": record.extracted[i] if record.extracted else None,
                "grade": record.grades[i] if record.grades else None,
                "reward": record.rewards[i],
                "components": {name: values[i] for name, values in record.components.items()},
                "advantage": record.advantages[i],
                "pair_weights": None if record.pair_weights is None else record.pair_weights[b][i - b * g],
            }
            for i in rows
        ]
        out.append(
            {
                "step": record.step,
                "problem_id": record.problem_ids[b],
                "prompt": record.prompts[b],
                "answer": record.answers[b],
                "responses": responses,
            }
        )
    return out


def to_markdown(sample: dict[str, Any]) -> str:
    """One prompt and its responses as markdown (code blocks keep the texts' own newlines intact)."""
    lines = [f"**step {sample['step']}, problem `{sample['problem_id']}`, reference answer `{sample['answer']}`**",
             "", "```", sample["prompt"], "```"]
    for j, r in enumerate(sample["responses"]):
        parts = [f"reward {r['reward']:.3f}", f"advantage {r['advantage']:+.3f}"]
        if r["grade"] is not None:
            parts.insert(0, f"{r['grade']} (extracted `{r['extracted']}`)")
        parts += [f"{name} {value:.3f}" for name, value in r["components"].items()]
        if r["pair_weights"] is not None:
            parts.append("pair weights [" + ", ".join(f"{w:.2f}" for w in r["pair_weights"]) + "]")
        lines += ["", f"**response {j}**: " + ", ".join(parts), "", "```", r["text"], "```"]
    return "\n".join(lines)


class RolloutSamples(L.Callback):
    """Log a few prompts with their G responses, rewards, advantages and pair weights every N steps."""

    def __init__(self, every_n_steps: int = 50, num_prompts: int = 2, dirpath: str | None = None) -> None:
        """Args:
        every_n_steps: Log the rollout of the steps whose ``StepRecord.step`` is a multiple of N.
        num_prompts: How many of the step's prompts (the first ones) to log.
        dirpath: Folder of ``samples.jsonl``; null: ``<log_dir>/samples``.
        """
        if every_n_steps < 1 or num_prompts < 1:
            raise ValueError(f"every_n_steps ({every_n_steps}) and num_prompts ({num_prompts}) must be >= 1")
        self.every_n_steps, self.num_prompts, self.dirpath = every_n_steps, num_prompts, dirpath
        self._logged_step: int | None = None

    def path(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath or Path(trainer.log_dir or ".") / "samples") / "samples.jsonl"

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        record: StepRecord | None = pl_module.last_step
        if record is None or record.step % self.every_n_steps != 0 or record.step == self._logged_step:
            return
        self._logged_step = record.step
        samples = prompt_records(record, self.num_prompts)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for i, sample in enumerate(samples):
                    logger.experiment.add_text(f"samples/prompt_{i}", to_markdown(sample), global_step=record.step)
        if not trainer.is_global_zero:
            return
        path = self.path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as file:
            for sample in samples:
                file.write(json.dumps(sample) + "\n")
