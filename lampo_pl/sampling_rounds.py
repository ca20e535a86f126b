"""The sampling half of a training step: B prompts rendered, G responses each, their rewards, DAPO's refills.

``SamplingSteps`` is mixed into the LightningModule (as ``EvaluationSteps`` is): it renders the chat
prompts, scores a rollout (built-in and custom rewards) and runs the generation rounds; the module
supplies ``collect_rollout`` (the sampler). ``sample_rounds`` decides how many rounds run and which
groups make the batch (``dynamic_sampling.assemble``); refill prompts come from the DataModule's
``refill_batch``, and the DDP ranks agree on every round (``any_rank``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch

from lampo_pl.data.prompting import chat_messages, one_shot_example, render_messages
from lampo_pl.data.record import Problem
from lampo_pl.dynamic_sampling import Round, Sample, assemble, group_filter
from lampo_pl.rewards import RewardBatch, RewardSpec, score_responses
from lampo_pl.rewards.custom import TrainerProgress
from lampo_pl.rollout import Rollout, generate_rollout
from lampo_pl.step_metrics import Phases
from lampo_pl.vllm_engine import step_seed

log = logging.getLogger(__name__)


def sample_rounds(
    batch: list[Problem],
    sample_round: Callable[[list[Problem], int], Round],
    refill: Callable[[], list[Problem]],
    any_rank: Callable[[bool], bool],
    *,
    num_groups: int,
    group_size: int,
    dynamic_sampling: bool,
    max_refill_rounds: int,
) -> Sample:
    """G responses per prompt and their rewards; with DAPO dynamic sampling, refilled to B informative groups.

    Each refill round takes B further prompts (``refill``), at most ``max_refill_rounds`` of them, and
    samples those not already in the step (``fresh``): the same prompt twice in one batch would weigh
    it double, which on a small dataset happens often (issue 21, item 10); a round may so sample
    fewer than B prompts, or none. Under DDP the ranks agree on every round (one more while any rank
    lacks groups), so that each takes the same number of batches from the refill stream.

    Args:
        batch: The step's B problems.
        sample_round: ``(problems, round_index) -> Round``: one generation round.
        refill: B further problems from the refill stream.
        any_rank: Whether a flag holds on any DDP rank.
        num_groups: B, the groups the batch holds.
        group_size: G.
        dynamic_sampling: Refill until B groups are informative (else one round, every group kept).
        max_refill_rounds: At most this many refill rounds.
    """
    rounds = [sample_round(batch, 0)]
    seen = {prompt_key(q) for q in batch}
    extra = 0
    while dynamic_sampling and extra < max_refill_rounds:
        missing = num_groups - sum(int(r.informative.sum()) for r in rounds)
        if not any_rank(missing > 0):
            break
        problems = fresh(refill(), seen)
        extra += 1
        if missing > 0 and problems:
            rounds.append(sample_round(problems, extra))
    sample = assemble(rounds, num_groups, group_size)
    if dynamic_sampling and sample.stats.groups_kept < num_groups:
        log.warning("dynamic sampling: %d of %d groups informative after %d generation rounds; training on them",
                    sample.stats.groups_kept, num_groups, sample.stats.rounds)
    return sample


def prompt_key(problem: Problem) -> tuple[str, str]:
    """What makes two problems the same prompt: their text and chat messages (ids may repeat across files)."""
    return problem.prompt, repr(problem.messages)


def fresh(problems: list[Problem], seen: set[tuple[str, str]]) -> list[Problem]:
    """``problems`` whose prompt is not in ``seen`` (nor earlier in ``problems``); adds them to ``seen``."""
    out = []
    for q in problems:
        if prompt_key(q) not in seen:
            seen.add(prompt_key(q))
            out.append(q)
    return out


def refill_from(datamodule: Any) -> list[Problem]:
    """B further prompts for a refill round, from the DataModule (``ProblemDataModule.refill_batch``)."""
    if datamodule is None or not hasattr(datamodule, "refill_batch"):
        raise ValueError("method.dynamic_sampling refills from the DataModule's refill_batch(): train with a "
                         "ProblemDataModule, or set method.max_refill_rounds: 0")
    return datamodule.refill_batch()


def any_rank(trainer: Any, flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on any DDP rank of ``trainer`` (itself without DDP)."""
    if trainer.world_size == 1:
        return flag
    return bool(trainer.strategy.reduce(torch.tensor(float(flag), device=device), reduce_op="sum") > 0)


def prompt_messages(prompt: Any, problem: Problem) -> list[dict[str, str]]:
    """The chat messages of ``problem`` under the prompt settings (``PromptArgs``: system turn, one-shot example,
    instruction)."""
    instruction = prompt.instruction_or_none  # model.prompt.instruction; "" appends none
    few_shot = one_shot_example(instruction) if prompt.one_shot else ()
    return chat_messages(problem, system_prompt=prompt.system_prompt, few_shot=few_shot, instruction=instruction)


class SamplingSteps:
    """Prompts, rollouts and rewards of the training step; mixed in before ``LightningModule``.

    Reads the module's ``prompt``, ``reward_args``, ``method``, ``tokenizer``, ``group_size``,
    ``prompts_per_step``, ``filter_signal``, ``reward_guard``, ``policy_model``, ``sampling`` and ``run_seed``.
    """

    prompt: Any
    reward_args: Any
    method: Any
    tokenizer: Any
    group_size: int
    prompts_per_step: int
    filter_signal: str | None
    reward_guard: Any
    trainer: Any
    global_step: int
    device: torch.device
    global_rank: int
    policy_model: Any
    sampling: Any
    max_context: int | None
    generation_batch_size: int | None
    sampler_records_old_logprobs: bool
    sampler_gives_delta: bool
    run_seed: int | None

    def reward_specs(self) -> list[RewardSpec]:
        r = self.reward_args
        pairs = (("correctness", r.correctness), ("density", r.density), ("format", r.format))
        return [RewardSpec(name, weight) for name, weight in pairs if weight != 0]

    def messages(self, problem: Problem) -> list[dict[str, str]]:
        """The chat messages a problem's prompt is rendered from (``prompt_messages``)."""
        return prompt_messages(self.prompt, problem)

    def render(self, problems: list[Problem], enable_thinking: bool | None = None) -> list[str]:
        """Chat prompts of ``problems``; ``enable_thinking`` overrides the prompt settings' (evaluation's own)."""
        thinking = self.prompt.enable_thinking if enable_thinking is None else enable_thinking
        return [render_messages(self.tokenizer, prompt_messages(self.prompt, q), enable_thinking=thinking)
                for q in problems]

    def sample_batch(self, batch: list[Problem], phases: Phases) -> Sample:
        """G responses per prompt and their rewards; DAPO refill rounds (``sampling_rounds.sample_rounds``)."""
        m = self.method
        return sample_rounds(batch, lambda problems, index: self.sample_round(problems, phases, index),
                             lambda: refill_from(self.trainer.datamodule),
                             lambda flag: any_rank(self.trainer, flag, self.device), num_groups=self.prompts_per_step,
                             group_size=self.group_size, dynamic_sampling=m.dynamic_sampling,
                             max_refill_rounds=m.max_refill_rounds)

    def sample_round(self, batch: list[Problem], phases: Phases, round_index: int) -> Round:
        """One generation round: B prompts, G responses each, their rewards and which groups are informative."""
        with phases("generation"):
            prompts = self.render(batch)
            rollout, problems = self.collect_rollout(batch, prompts, round_index)
        with phases("rewards"):
            scored = self.score(rollout, problems)
        return Round(prompts, rollout, problems, scored, group_filter(scored, self.group_size, self.filter_signal))

    def score(self, rollout: Rollout, problems: list[Problem]) -> RewardBatch:
        """Rewards of the rollout; custom ones get TRL's conversational arguments (``rewards.custom``)."""
        custom = self.reward_args.custom
        ids = [r[: int(n)].tolist() for r, n in zip(rollout.response_ids, rollout.response_lengths, strict=True)]
        return score_responses(rollout.texts, problems, self.reward_specs(), thinking=bool(self.prompt.enable_thinking),
                               custom=custom, completion_ids=ids if custom else None, guard=self.reward_guard,
                               state=TrainerProgress.of(self.trainer, self.global_step) if custom else None,
                               prompt_messages=[self.messages(q) for q in problems] if custom else None)

    def collect_rollout(
        self, batch: list[Problem], prompts: list[str], round_index: int = 0
    ) -> tuple[Rollout, list[Problem]]:
        """Sample G responses per rendered prompt; ``problems[i]`` is the problem of response row i.

        ``round_index`` counts the step's generation rounds (DAPO refill): with the run seed, the step
        and the rank it fixes the vLLM engine's per-request seeds, so a resumed run draws what the
        uninterrupted one did and two rounds of one step never share their random numbers.
        """
        assert self.policy_model is not None
        rollout = generate_rollout(
            self.policy_model, self.tokenizer, prompts, self.group_size, self.sampling,
            max_context=self.max_context, generation_batch_size=self.generation_batch_size,
            # With vLLM the sampler's log-probs come free; the mismatch metrics and its correction read them.
            record_logprobs=self.sampler_records_old_logprobs or self.sampling.engine == "vllm"
            or self.method.correction[0] != "none" or self.sampler_gives_delta,
            seed=step_seed(self.seed_of_run(), self.global_step, self.global_rank, round_index),
            record_hidden=self.sampler_gives_delta,  # DelTA's h at μ = 1 (delta_step.py)
        )
        return rollout, [q for q in batch for _ in range(self.group_size)]

    def seed_of_run(self) -> int:
        """The run's seed: ``PL_GLOBAL_SEED`` when it started, then the checkpoint's on every resume.

        LightningCLI draws a new ``PL_GLOBAL_SEED`` at each call when a config has no ``seed_everything``, so a
        resumed vLLM run would otherwise draw other samples than the uninterrupted one (issue 21, item 6).
        """
        if self.run_seed is None:
            self.run_seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        return self.run_seed
