"""The LightningModule: one training step = one on-policy RL iteration.

    prompts -> rollout (G samples each) -> rewards [-> DAPO refill rounds] -> advantages
            -> log-probs (old, reference) -> clipped loss × μ passes -> optimiser step -> metrics

The math lives in ``advantages.py`` and ``losses.py``; the model side in ``policy.py``,
``rollout.py`` and ``logprobs.py``; prompts, rewards and DAPO's rounds in ``sampling_rounds.py``
(``SamplingSteps``, mixed in); the step's tensors travel as one ``Trajectory``
(``trajectory.py``); this file only wires them in the order of the algorithm.
Optimisation is manual (``automatic_optimization = False``) because one step runs generation,
several micro-batch backward passes and μ optimiser steps.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, replace
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from lampo_pl import settings
from lampo_pl.advantages import AdvantageOutput, confidence_scores, estimate_advantages
from lampo_pl.data.record import Problem
from lampo_pl.delta_step import DeltaSteps
from lampo_pl.dynamic_sampling import SamplingRounds
from lampo_pl.errors import UserError
from lampo_pl.evaluation_steps import EvaluationSteps
from lampo_pl.logprobs import token_logprobs
from lampo_pl.losses import BatchCounts, batch_counts, sequence_coefficients
from lampo_pl.metrics import mean_loss_stats
from lampo_pl.mismatch import MismatchMeter
from lampo_pl.optim import build_optimizer, build_scheduler
from lampo_pl.policy import load_policy, reference_adapter, trainable_parameters
from lampo_pl.preflight import run_preflight
from lampo_pl.rewards import RewardBatch, check_custom_rewards
from lampo_pl.rewards.custom import RewardGuard
from lampo_pl.rollout import Rollout, SamplingParams
from lampo_pl.sampling_rounds import SamplingSteps
from lampo_pl.settings import ComputeArgs, LoraArgs, MethodArgs, OptimArgs, PromptArgs, RewardArgs
from lampo_pl.step_loss import micro_batch_loss
from lampo_pl.step_metrics import OptimResult, Phases, StepRecord, step_metrics
from lampo_pl.strategies import check_strategy
from lampo_pl.trajectory import Trajectory, micro_batches
from lampo_pl.vllm_checks import check_vllm_model, check_vllm_settings
from lampo_pl.vllm_engine import close_engine

log = logging.getLogger(__name__)


class LamPOModule(DeltaSteps, SamplingSteps, EvaluationSteps, L.LightningModule):
    """Critic-free RL fine-tuning of a causal LM with LamPO or a GRPO-family baseline."""

    def __init__(
        self,
        model: str = "tiny:qwen3",
        group_size: int = 8,
        prompts_per_step: int | None = None,
        lora: LoraArgs | None = None,
        sampling: SamplingParams | None = None,
        method: MethodArgs | None = None,
        optim: OptimArgs | None = None,
        compute: ComputeArgs | None = None,
        rewards: RewardArgs | None = None,
        prompt: PromptArgs | None = None,
        max_context: int | None = None,
        generation_batch_size: int | None = None,
        track_kl: bool = False,
    ) -> None:
        """Build the module; the model itself is loaded lazily in ``configure_model``.

        Args:
            model: Hub id, local folder, ``packaged:smollm2-135m-instruct``, ``tiny:qwen3|phi3|llama`` or
                ``tiny:qwen3-sft`` (warmed up on synthetic sums: the cheap ablation policy).
            group_size: G, responses sampled per prompt.
            prompts_per_step: B, prompts per training step; null: the data module's (``lampo fit`` links it from
                ``data.prompts_per_step``; in Python give it to the data module only). Given to both and
                different, it is refused when training starts.
            lora: Base-model loading and LoRA adapters.
            sampling: Rollout sampling (temperature, top-p, top-k, max new tokens).
            method: Advantage estimator, clipped loss, KL and aggregation.
            optim: Optimiser and schedule (policy adapter and λ).
            compute: Micro-batching and log-prob chunking (memory, not the update).
            rewards: Reward weights.
            prompt: Chat-prompt rendering.
            max_context: Context limit for prompt + response; null: the model's own.
            generation_batch_size: Sequences per ``generate`` call; null: the whole B·G batch at once.
            track_kl: Measure KL(π_θ‖π_ref) even when β = 0 (logged as ``train/kl_ref``; costs one
                no-grad reference pass per step, which β = 0 otherwise skips).
        """
        super().__init__()
        self.model_name = model
        self.group_size = group_size
        self.prompts_per_step = prompts_per_step
        self.lora = lora or LoraArgs()
        self.sampling = sampling or SamplingParams()
        self.method = method or MethodArgs()
        self.optim = optim or OptimArgs()
        self.compute = compute or ComputeArgs()
        self.reward_args = rewards or RewardArgs()
        self.prompt = prompt or PromptArgs()
        self.max_context = max_context
        self.generation_batch_size = generation_batch_size
        self.track_kl = track_kl
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold only the adapters and λ, never the frozen base
        if prompts_per_step is not None:  # else checked in setup, with the data module's
            settings.check_batch_shape(prompts_per_step, group_size, self.compute.micro_batch_size,
                                       self.method.num_iterations)
        check_custom_rewards(self.reward_args.custom)  # an unknown import path fails here, before any model loads
        check_vllm_settings(self.sampling, self.lora, self.method)  # combinations vLLM would not serve exactly
        self.filter_signal = settings.filter_signal_of(self.method, self.reward_args)  # DAPO's group filter, or None
        self.reward_guard = RewardGuard(self.reward_args.failure_limit)  # custom rewards: preflight, failure streaks
        self.lam = nn.Parameter(torch.tensor(float(self.method.lambda_init))) if self.uses_lambda else None
        self.policy_model: nn.Module | None = None
        self.tokenizer: Any = None
        self.skipped_steps = 0
        self.run_seed: int | None = None  # `seed_of_run`: the vLLM engine's per-request seeds derive from it
        self.last_step: StepRecord | None = None
        self.mismatch = MismatchMeter()  # sampler vs trainer log-probs, logged per step (lampo_pl/mismatch.py)
        self.save_hyperparameters()

    @property
    def uses_lambda(self) -> bool:
        return self.method.aggregation == "lambda"

    @property
    def logit_temperature(self) -> float:
        """Log-probs are taken of the distribution that was sampled: logits / sampling temperature.

        As TRL's GRPOTrainer and verl do; without it π_old would not be the rollout policy and the
        ratio at μ = 1 would not start at 1. Greedy sampling (temperature 0) uses 1.
        """
        return self.sampling.temperature if self.sampling.temperature > 0 else 1.0

    # ---- set-up ---------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Take B from the data module when it was not given (one place to set it), or refuse a different one."""
        data_b = getattr(self.trainer.datamodule, "prompts_per_step", None) if self._trainer is not None else None
        if stage != "fit":  # validate/test sample per evaluation batch: B only matters to training
            self.prompts_per_step = self.prompts_per_step or data_b
            return
        self.prompts_per_step = batch_size_of(self.prompts_per_step, data_b)
        settings.check_batch_shape(self.prompts_per_step, self.group_size, self.compute.micro_batch_size,
                                   self.method.num_iterations)
        self.delta_cost_note()  # DelTA at μ = 1 without the native sampler: one line on its extra forward

    def configure_model(self) -> None:
        if self.policy_model is not None:
            return
        check_strategy(self._trainer)  # FSDP refused in one line before the model loads (strategies.py)
        lo = self.lora
        if self.sampling.engine == "vllm":  # head_dim and context, before anything loads or the engine starts
            check_vllm_model(self.model_name, trust_remote_code=lo.trust_remote_code, max_context=self.max_context)
        self.policy_model, self.tokenizer = load_policy(
            self.model_name, dtype=lo.dtype, quantization=lo.quantization, trust_remote_code=lo.trust_remote_code,
            lora_r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout, target_modules=lo.target_modules,
            init_adapter=lo.init_adapter, gradient_checkpointing=lo.gradient_checkpointing,
            attn_implementation=lo.attn_implementation,
        )

    def configure_optimizers(self) -> Any:
        assert self.policy_model is not None
        opt = build_optimizer(trainable_parameters(self.policy_model), self.lam, self.optim)
        total = self.trainer.max_steps if self.trainer.max_steps and self.trainer.max_steps > 0 else None
        return {"optimizer": opt, "lr_scheduler": {"scheduler": build_scheduler(opt, self.optim, total)}}

    def on_train_start(self) -> None:
        run_preflight(self)  # the worst step once, before the first: out of memory in minute one (preflight.py)

    # ---- the step -------------------------------------------------------------------------------

    def training_step(self, batch: list[Problem], batch_idx: int) -> None:
        phases = Phases()
        sample = self.sample_batch(batch, phases)  # rollout + rewards; DAPO refill rounds
        rollout, scored = sample.rollout, sample.scored
        traj = Trajectory.of(rollout, self.loss_mask(rollout, sample.keep), sample.keep)
        with phases("old_logprobs"), self.delta_features(traj, rollout) as delta:  # DelTA's h, p: delta_step.py
            old_logp, confidence_logp = self.old_policy_logprobs(traj, rollout)
        with phases("ref_logprobs"):
            ref_logp = self.reference_logprobs(traj)
        advantages = self.advantages(scored, rollout, confidence_logp)
        traj = replace(traj, advantages=delta(advantages, old_logp), old_logprobs=old_logp, ref_logprobs=ref_logp)
        with phases("optimisation"):
            result = self.optimise(traj, sample.problems)
        metrics = self.log_step(rollout, scored, advantages, result, phases, sample.stats, keep=sample.keep,
                                extra=delta.stats)
        self.last_step = StepRecord.of_step(self.global_step, sample, advantages, metrics)

    def loss_mask(self, rollout: Rollout, keep: Tensor) -> Tensor:
        """``[N, L]`` tokens that count in the loss: DAPO overlong masking drops truncated rows,
        dynamic sampling the rows outside ``keep`` ([N] bool)."""
        mask = rollout.response_mask
        if self.method.mask_truncated:
            mask = mask * (~rollout.truncated).to(mask.dtype)[:, None]  # [N, L]
        return mask * keep.to(device=mask.device, dtype=mask.dtype)[:, None]  # [N, L]

    # ---- π_old, π_ref ---------------------------------------------------------------------------

    @property
    def sampler_records_old_logprobs(self) -> bool:
        """LamPO at μ = 1 takes π_old for its confidence scores from the sampler (``old_policy_logprobs``)."""
        return self.method.estimator == "lampo" and self.method.num_iterations == 1

    def old_policy_logprobs(self, traj: Trajectory, rollout: Rollout) -> tuple[Tensor | None, Tensor | None]:
        """log π_old ``[N, L]``, decided here and nowhere else: ``(for the loss, for LamPO's confidence scores)``.

        π_old is the policy that sampled the rollout.
        - μ > 1, or DelTA from a sampler without head inputs (``old_pass_for_delta``): one no-grad pass freezes
          π_old before the first update; the loss and the confidence scores both read it.
        - μ = 1: the μ = 1 identity: the policy being optimised *is* π_old, so the loss takes the detached current
          log-probs (``None`` here; ``Trajectory.old_logprobs_for``) and no pass runs. LamPO's confidence scores,
          needed before the loss pass, take the log-probs the sampler recorded while drawing the tokens (equal to a
          teacher-forced pass up to float rounding, tests/test_perf.py), or a no-grad pass from a sampler that did not.
        """
        lampo = self.method.estimator == "lampo"
        if self.method.num_iterations > 1 or self.old_pass_for_delta:
            old = self.logprobs_no_grad(traj)
            return old, (old if lampo else None)
        if not lampo:
            return None, None
        # vLLM with top-p / top-k records the truncated distribution's log-probs, not π_old's: teacher-force then.
        recorded = None if self.sampling.logprobs_truncated else rollout.sampled_logprobs
        return None, (recorded if recorded is not None else self.logprobs_no_grad(traj))

    def reference_logprobs(self, traj: Trajectory) -> Tensor | None:
        """log π_ref with the frozen ``reference`` adapter; no pass at all when β = 0 (unless ``track_kl``)."""
        if self.method.beta == 0 and not self.track_kl:
            return None
        assert self.policy_model is not None
        with reference_adapter(self.policy_model):
            return self.logprobs_no_grad(traj)

    @torch.no_grad()
    def logprobs_no_grad(self, traj: Trajectory) -> Tensor:
        """``[N, L]`` per-token log-probs of the trajectory under the active adapter, micro-batched."""
        assert self.policy_model is not None
        out = torch.zeros(traj.loss_mask.shape, device=traj.input_ids.device)  # [N, L]
        was_training = self.policy_model.training
        self.policy_model.eval()  # π_old and π_ref are the distributions that sampled: no LoRA dropout
        try:
            for rows in micro_batches(traj, self.compute.micro_batch_size):
                logp, _ = self.policy_logprobs(traj.rows(rows))  # [n, l]
                out = out.to(logp.dtype)
                out[rows, : logp.shape[1]] = logp
        finally:
            self.policy_model.train(was_training)
        return out

    def policy_logprobs(self, view: Trajectory, with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
        """``[n, l]`` log-probs (and entropies) of a micro-batch view's response tokens at the sampling temperature."""
        assert self.policy_model is not None
        precision = self.compute.autocast  # every teacher-forced pass, so π_old, π_ref and π_θ match in precision
        with torch.autocast(self.device.type, dtype=getattr(torch, precision, None), enabled=precision != "none"):
            return token_logprobs(self.policy_model, view.input_ids, view.attention_mask, view.prompt_len,
                                  chunk_size=self.compute.logprob_chunk, with_entropy=with_entropy,
                                  temperature=self.logit_temperature)

    # ---- advantages, loss, optimiser ------------------------------------------------------------

    def advantages(self, scored: RewardBatch, rollout: Rollout, confidence_logp: Tensor | None) -> AdvantageOutput:
        rewards = torch.tensor(scored.total, dtype=torch.float32, device=rollout.input_ids.device)  # [N]
        scores = None
        if confidence_logp is not None:
            scores = confidence_scores(confidence_logp, rollout.response_mask, self.method.confidence)  # [N]
        return estimate_advantages(rewards, self.group_size, self.method.estimator, seq_scores=scores,
                                   tau=self.method.tau, scale=self.method.scale)

    def batch_counts(self, lengths: Tensor, keep: Tensor) -> BatchCounts:
        """N and Σ|o| for the normalisers: this batch's without DDP; under DDP the mean over ranks.

        DDP averages the ranks' gradients, so a rank that divides by (global count / world size) makes
        that average the gradient of the loss over the union of the ranks' batches (issue 12, item 3).
        """
        local = batch_counts(lengths, keep)
        if self.trainer.world_size == 1:
            return local
        mean = self.trainer.strategy.reduce(torch.tensor(local, dtype=torch.float64, device=self.device),
                                            reduce_op="mean")  # on the device: NCCL reduces GPU tensors only
        return BatchCounts(float(mean[0]), float(mean[1]))

    def coefficients(self, lengths: Tensor, counts: BatchCounts) -> Tensor:
        """``[N]`` aggregation coefficients c_i over the whole batch (``losses.sequence_coefficients``)."""
        m = self.method
        return sequence_coefficients(lengths, m.aggregation, counts=counts, group_size=self.group_size,
                                     lam=self.lam, r_len=m.r_len, h_min=m.h_min,
                                     max_len=self.sampling.max_new_tokens)  # [N]

    def optimise(self, traj: Trajectory, problems: list[Problem]) -> OptimResult:
        """μ passes of micro-batched forward/backward, each closed by one (guarded) optimiser step."""
        opt = self.optimizers()
        lengths = traj.loss_mask.sum(dim=1).float()  # [N]
        counts = self.batch_counts(lengths, traj.keep)
        rows_list = micro_batches(traj, self.compute.micro_batch_size)
        stats, entropies, norms, skipped, losses = [], [], [], False, []
        for _ in range(self.method.num_iterations):
            opt.zero_grad(set_to_none=True)
            finite = True
            for rows in rows_list:
                # Over the whole batch, recomputed per micro-batch so that λ's graph is fresh.
                coef = self.coefficients(lengths, counts)[rows]  # [n]
                loss, st, ent = self.micro_batch_loss(traj.rows(rows), coef)
                if not torch.isfinite(loss):
                    finite = False
                    break
                self.manual_backward(loss)
                stats.append(st)
                entropies.append(ent)
                losses.append(loss.detach())
            grad_norm = self.clip_and_norm()
            if finite and math.isfinite(grad_norm):
                norms.append(grad_norm)
            else:
                skipped = True
                self.skipped_steps += 1
                ids = sorted({q.id for q in problems})
                log.warning("non-finite loss or gradient: optimiser step skipped (prompts %s)", ids)
                # With every grad None, AdamW leaves parameters and moments untouched, yet the step
                # still counts, so trainer.max_steps is reached even if every batch were bad.
                opt.zero_grad(set_to_none=True)
            opt.step()
            self.lr_schedulers().step()
        return OptimResult(
            loss_stats=mean_loss_stats(stats) if stats else None,
            loss=float(torch.stack(losses).sum()) / self.method.num_iterations if losses else math.nan,
            entropy=float(torch.stack(entropies).mean()) if entropies else math.nan,
            grad_norm=sum(norms) / len(norms) if norms else math.nan,
            skipped=skipped,
            lr=float(opt.param_groups[0]["lr"]),
        )

    def micro_batch_loss(self, view: Trajectory, coefficients: Tensor) -> tuple[Tensor, Any, Tensor]:
        """Loss of one micro-batch view (``step_loss.micro_batch_loss``), scaled (``coefficients`` [n]) so that
        the micro-batches sum to the full-batch loss."""
        logp, entropy = self.policy_logprobs(view, with_entropy=True)  # [n, l]
        return micro_batch_loss(logp, entropy, view, coefficients, self.method, self.mismatch,
                                truncated=self.sampling.logprobs_truncated)  # fmt: skip

    def clip_and_norm(self) -> float:
        """Global grad-norm of everything trained (clipped to ``optim.grad_clip`` when > 0)."""
        params = [p for p in self.parameters() if p.requires_grad and p.grad is not None]
        if not params:
            return 0.0
        max_norm = self.optim.grad_clip if self.optim.grad_clip > 0 else float("inf")
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    # ---- logging --------------------------------------------------------------------------------

    def log_step(
        self, rollout: Rollout, scored: RewardBatch, adv: AdvantageOutput, result: OptimResult, phases: Phases,
        rounds: SamplingRounds, keep: Tensor | None = None, extra: dict[str, float] | None = None,
    ) -> dict[str, float]:
        """Log the step's scalars under ``train/``; return them without the prefix (NaN ones left out).

        ``keep`` ``[N]``: the rows trained on; the batch's numbers leave dynamic sampling's filler groups out.
        ``extra``: more of the step's scalars (DelTA's ``delta_*``), logged and returned with the rest."""
        metrics = step_metrics(rollout, scored, adv, result, phases, rounds, group_size=self.group_size,
                               skipped_steps=self.skipped_steps, lam=self.lam, keep=keep,
                               dynamic_sampling=self.method.dynamic_sampling)
        metrics.update(self.mismatch.pop())
        metrics.update(extra or {})
        clean = {k: v for k, v in metrics.items() if not math.isnan(v)}
        bs = len(scored.total)
        self.log_dict({f"train/{k}": v for k, v in clean.items()}, on_step=True, batch_size=bs)
        # Logged as "step", Lightning's logger connector takes it as the x-axis of this step's scalars: the
        # step after the update, as samples.jsonl and the evaluations number it (not its 0-based batch count).
        self.log("step", float(self.global_step), on_step=True, on_epoch=False, batch_size=bs)
        self.log("reward", metrics["reward"], prog_bar=True, logger=False, batch_size=bs)
        self.log("acc", metrics["acc"], prog_bar=True, logger=False, batch_size=bs)
        return clean

    def teardown(self, stage: str) -> None:
        if self.policy_model is not None:
            close_engine(self.policy_model)  # a vLLM engine (model.sampling.engine: vllm) reserves its memory

    # ---- checkpoints: adapters and λ only -------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop the frozen base weights: a checkpoint holds the two adapters, λ and the training state."""
        state = checkpoint.get("state_dict", {})
        checkpoint["state_dict"] = {k: v for k, v in state.items() if "lora_" in k or k == "lam"}
        checkpoint["lampo_settings"] = {"method": asdict(self.method), "lora": asdict(self.lora)}
        checkpoint["lampo_skipped_steps"] = self.skipped_steps  # a logged running count: resumes with the run
        checkpoint["lampo_run_seed"] = self.seed_of_run()  # a resume samples with the run's seed (`seed_of_run`)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.skipped_steps = int(checkpoint.get("lampo_skipped_steps", 0))
        if "lampo_run_seed" in checkpoint:
            self.run_seed = int(checkpoint["lampo_run_seed"])


def batch_size_of(module_b: int | None, data_b: int | None) -> int:
    """B of a run: the module's or the data module's, which must agree when both are given (``LamPOModule.setup``)."""
    if module_b is not None and data_b is not None and module_b != data_b:
        raise UserError(f"prompts_per_step: the module has {module_b} and the data module {data_b}; give it to the "
                        "data module only (the module takes the data module's)")
    if module_b is None and data_b is None:
        raise UserError("prompts_per_step: neither the module nor the data module has one; give it to the data module")
    return int(module_b if module_b is not None else data_b)  # type: ignore[arg-type]
