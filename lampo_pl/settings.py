"""Typed, documented settings groups of the LightningModule (each field shows in ``lampo fit --help``).

They are plain dataclasses so that a YAML config stays flat: ``model.method.estimator: lampo``
needs no ``class_path``. The baseline configs differ from the LamPO one only in ``method``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from lampo_pl.advantages import AdvantageScale, ConfidenceScore, Estimator
from lampo_pl.data.prompting import DEFAULT_INSTRUCTION
from lampo_pl.delta import ROUNDS as DELTA_ROUNDS
from lampo_pl.delta import WEIGHT_MAX as DELTA_WEIGHT_MAX
from lampo_pl.delta import WEIGHT_MIN as DELTA_WEIGHT_MIN
from lampo_pl.errors import UserError
from lampo_pl.losses import H_MIN, R_LEN, AggregationMode, KLEstimator
from lampo_pl.mismatch import CorrectionMode
from lampo_pl.policy_losses import PolicyLossKind
from lampo_pl.rewards.custom import CustomReward


class SettingsError(UserError):
    """A setting outside its allowed range; the message is one line naming the field, its value and the range."""

FilterSignal = Literal["auto", "correctness", "total"]  # DAPO dynamic sampling's group filter (MethodArgs)


def require(ok: bool, group: str, name: str, value: Any, allowed: str) -> None:
    """Raise ``SettingsError`` ("model.method.eps_low=2.0: allowed 0 <= eps_low < 1") unless ``ok``.

    Each settings group checks its fields in ``__post_init__`` (as ``SamplingParams`` does), so a
    bad value is refused when the config is parsed, before any data or model loads.
    """
    if not ok:
        raise SettingsError(f"{group}.{name}={value!r}: allowed {allowed}")


def finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def one_of(value: Any, literal: Any) -> bool:
    return value in get_args(literal)


@dataclass
class MethodArgs:
    """The RL algorithm: advantage estimator, policy loss, KL, aggregation, sampler correction (docs/ALGORITHMS.md).

    The axes compose: any estimator × any policy_loss × any aggregation × any sampler_correction, with or
    without top_entropy_quantile (docs/algorithms.md has the formula of each and its source).

    Attributes:
        estimator: Advantage estimator: grpo | dr_grpo | rloo | lampo.
        tau: LamPO confidence temperature τ >= 0 (0 reduces LamPO to Dr. GRPO).
        confidence: LamPO confidence score from π_old token log-probs: mean | sum.
        scale: LamPO advantage scaling: none | group_std.
        aggregation: Token aggregation: seq_mean_token_mean | token_mean | seq_mean_token_sum_norm | lambda.
        eps_low: Lower clip range ε_low.
        eps_high: Upper clip range ε_high (0.28 is DAPO's clip-higher).
        dual_clip: Dual-clip constant c > 1 for negative advantages; null disables it.
        beta: KL coefficient β; 0 skips the reference forward pass entirely.
        kl_estimator: KL estimator to the reference: k1 | k2 | k3.
        num_iterations: μ, optimisation passes over each rollout batch; each pass is one optimiser step,
            so ``trainer.max_steps`` counts μ steps per rollout batch (as TRL's GRPOTrainer counts them).
        mask_truncated: Mask responses that hit max_new_tokens out of the loss (DAPO overlong masking).
        dynamic_sampling: DAPO dynamic sampling: drop groups whose filter signal is the same on all G responses
            from the loss and its normalisers, and sample further prompts until B informative groups are kept.
        filter_signal: What makes a group informative under dynamic_sampling (verl's
            ``filter_groups.metric``): correctness | total (the weighted reward) | auto (correctness when its
            weight is non-zero, else total). correctness at weight 0 is refused.
        max_refill_rounds: With dynamic_sampling, at most this many extra generation rounds (each of B new
            prompts) per step; when they are spent the step trains on the groups it has and logs a warning.
            0 never refills (as verl's ``max_num_gen_batches`` bounds DAPO's).
        lambda_init: Initial λ of the λ-GRPO aggregation.
        r_len: λ-GRPO length sensitivity r_len.
        h_min: λ-GRPO floor on h_i, keeping h^λ finite.
        tis_cap: Truncated importance sampling for the sampler–trainer mismatch: each token's policy loss
            is weighted by min(π_old / π_sampler, tis_cap) (TRL's token_truncate, verl's TIS;
            lampo_pl/mismatch.py), e.g. 2.0 with ``sampling.engine: vllm``; null is off.
        delta: DelTA (arXiv 2605.21467, lampo_pl/delta.py): reshape the chosen estimator's advantage per token,
            Â = c·ω·a, by how much each token's gradient feature resembles the batch's good responses rather
            than its bad ones. Its hidden states come from the π_old pass (at μ = 1 that pass then runs: one
            no-grad forward; at μ > 1 it runs anyway). Composes with every estimator, loss and aggregation.
        delta_rounds: DelTA's K, centroid refinement rounds (1 in the paper's script; 0: initial centroids).
        delta_weight_min: DelTA's λ_min, the smallest token weight ω (0.8 in the paper's script).
        delta_weight_max: DelTA's λ_max, the largest token weight ω (1.2 in the paper's script).
            lampo_pl/mismatch.py), e.g. 2.0 with ``sampling.engine: vllm``; null is off. The same as
            ``sampler_correction: token_truncate`` with ``correction_max: tis_cap``; set one or the other.
        policy_loss: The surrogate (lampo_pl/policy_losses.py): clip (PPO/GRPO token ratio) | gspo (GSPO's
            sequence ratio, clipped at eps_low/eps_high: the paper uses 3e-4/4e-4) | cispo (capped, detached
            ratio × A × log π, cispo_cap) | sapo (sigmoid gate, sapo_tau_pos/neg). At μ = 1 the ratio is 1 and
            every surrogate has clip's gradient, so gspo, cispo and sapo need num_iterations >= 2.
        cispo_cap: CISPO's ε_max, the cap of the detached importance ratio (TRL's epsilon_high under cispo; 5.0).
        sapo_tau_pos: SAPO's gate temperature for tokens with A > 0 (TRL's default 1.0).
        sapo_tau_neg: SAPO's gate temperature for tokens with A <= 0 (TRL's default 1.05).
        sampler_correction: Importance weights for the sampler–trainer mismatch, from r = π_old / π_sampler
            (lampo_pl/mismatch.py, TRL's vllm_importance_sampling_mode): none | token_truncate | token_mask |
            sequence_truncate | sequence_mask. Any sampling engine (each records its log-probs); it matters
            with ``sampling.engine: vllm``, whose kernels differ from the trainer's (TRL's default there is
            sequence_mask).
        correction_max: C_max of sampler_correction: truncate caps the ratio at it, mask zeroes ratios above
            it (TRL's 3.0); null: no upper bound.
        correction_min: C_min of sampler_correction: truncate raises the ratio to it, mask zeroes ratios below
            it; null (the default): no lower bound.
        top_entropy_quantile: Keep the policy term only on the top q of tokens by entropy (Wang et al. 2025
            recommend 0.2; TRL's top_entropy_quantile); the quantile is over each micro-batch's loss tokens,
            as TRL's over each of its micro-batches. 1.0 (default) keeps every token.
    """

    estimator: Estimator = "lampo"
    tau: float = 1.0
    confidence: ConfidenceScore = "mean"
    scale: AdvantageScale = "none"
    aggregation: AggregationMode = "token_mean"
    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: float | None = None
    beta: float = 0.0
    kl_estimator: KLEstimator = "k3"
    num_iterations: int = 1
    mask_truncated: bool = False
    dynamic_sampling: bool = False
    filter_signal: FilterSignal = "auto"
    max_refill_rounds: int = 4
    lambda_init: float = 0.0
    r_len: float = R_LEN
    h_min: float = H_MIN
    tis_cap: float | None = None
    delta: bool = False
    delta_rounds: int = DELTA_ROUNDS
    delta_weight_min: float = DELTA_WEIGHT_MIN
    delta_weight_max: float = DELTA_WEIGHT_MAX
    policy_loss: PolicyLossKind = "clip"
    cispo_cap: float = 5.0
    sapo_tau_pos: float = 1.0
    sapo_tau_neg: float = 1.05
    sampler_correction: CorrectionMode = "none"
    correction_max: float | None = 3.0
    correction_min: float | None = None
    top_entropy_quantile: float = 1.0

    def __post_init__(self) -> None:
        g = "model.method"
        require(one_of(self.estimator, Estimator), g, "estimator", self.estimator, " | ".join(get_args(Estimator)))
        require(finite(self.tau) and self.tau >= 0, g, "tau", self.tau, "tau >= 0 (0: Dr. GRPO)")
        require(one_of(self.confidence, ConfidenceScore), g, "confidence", self.confidence, "mean | sum")
        require(one_of(self.scale, AdvantageScale), g, "scale", self.scale, "none | group_std")
        require(one_of(self.aggregation, AggregationMode), g, "aggregation", self.aggregation,
                " | ".join(get_args(AggregationMode)))
        # The ratio's lower clip bound 1 - ε_low must stay positive (PPO, Schulman et al. 2017, eq. 7).
        require(finite(self.eps_low) and 0 <= self.eps_low < 1, g, "eps_low", self.eps_low, "0 <= eps_low < 1")
        require(finite(self.eps_high) and self.eps_high >= 0, g, "eps_high", self.eps_high, "eps_high >= 0")
        # Dual-clip bounds the loss of a negative advantage at c·|A|; c <= 1 would undercut the clip itself
        # (Ye et al. 2020, arXiv 1912.09729, §3.3, requires c > 1).
        require(self.dual_clip is None or (finite(self.dual_clip) and self.dual_clip > 1), g, "dual_clip",
                self.dual_clip, "null or dual_clip > 1")
        require(finite(self.beta) and self.beta >= 0, g, "beta", self.beta, "beta >= 0 (0: no KL term)")
        require(one_of(self.kl_estimator, KLEstimator), g, "kl_estimator", self.kl_estimator, "k1 | k2 | k3")
        require(isinstance(self.num_iterations, int) and self.num_iterations >= 1, g, "num_iterations",
                self.num_iterations, "an integer >= 1")
        require(finite(self.lambda_init), g, "lambda_init", self.lambda_init, "a finite number")
        require(finite(self.r_len) and self.r_len >= 0, g, "r_len", self.r_len, "r_len >= 0")
        require(finite(self.h_min) and self.h_min > 0, g, "h_min", self.h_min, "h_min > 0 (keeps h^λ finite)")
        require(self.tis_cap is None or (finite(self.tis_cap) and self.tis_cap > 0), g, "tis_cap", self.tis_cap,
                "null or tis_cap > 0")
        require(one_of(self.filter_signal, FilterSignal), g, "filter_signal", self.filter_signal,
                "auto | correctness | total")
        require(isinstance(self.max_refill_rounds, int) and self.max_refill_rounds >= 0, g, "max_refill_rounds",
                self.max_refill_rounds, "an integer >= 0 (0: dynamic sampling drops without refilling)")
        require(isinstance(self.delta_rounds, int) and self.delta_rounds >= 0, g, "delta_rounds", self.delta_rounds,
                "an integer >= 0")
        # ω < 0 would flip a token's advantage sign: DelTA only re-weights (DELTA.md step 6).
        require(finite(self.delta_weight_min) and self.delta_weight_min >= 0, g, "delta_weight_min",
                self.delta_weight_min, "delta_weight_min >= 0")
        require(finite(self.delta_weight_max) and self.delta_weight_max >= self.delta_weight_min, g,
                "delta_weight_max", self.delta_weight_max, f">= delta_weight_min ({self.delta_weight_min})")
        self.check_policy_loss(g)
        self.check_sampler_correction(g)

    def check_policy_loss(self, g: str) -> None:
        require(one_of(self.policy_loss, PolicyLossKind), g, "policy_loss", self.policy_loss,
                " | ".join(get_args(PolicyLossKind)))
        # At μ = 1 π_old is the detached current policy, so ρ ≡ 1 and gspo, cispo and sapo all give clip's
        # gradient A·∇log π: the run would be GRPO under another name (docs/algorithms.md).
        require(self.policy_loss == "clip" or self.num_iterations >= 2, g, "num_iterations", self.num_iterations,
                f"num_iterations >= 2 with policy_loss: {self.policy_loss} (at μ = 1 its gradient is clip's)")
        require(self.dual_clip is None or self.policy_loss in ("clip", "gspo"), g, "dual_clip", self.dual_clip,
                f"null with policy_loss: {self.policy_loss} (dual clip bounds the clipped ratio of clip and gspo)")
        # A cap below 1 would shrink every on-policy token's gradient, not only the off-policy ones'.
        require(finite(self.cispo_cap) and self.cispo_cap >= 1, g, "cispo_cap", self.cispo_cap, "cispo_cap >= 1")
        for name in ("sapo_tau_pos", "sapo_tau_neg"):
            value = getattr(self, name)
            require(finite(value) and value > 0, g, name, value, f"{name} > 0")
        q = self.top_entropy_quantile
        require(finite(q) and 0 < q <= 1, g, "top_entropy_quantile", q, "0 < top_entropy_quantile <= 1 (1: all)")

    def check_sampler_correction(self, g: str) -> None:
        require(one_of(self.sampler_correction, CorrectionMode), g, "sampler_correction", self.sampler_correction,
                " | ".join(get_args(CorrectionMode)))
        require(self.tis_cap is None or self.sampler_correction == "none", g, "tis_cap", self.tis_cap,
                f"null with sampler_correction: {self.sampler_correction} (tis_cap is token_truncate's "
                "correction_max: set one of them)")
        high, low = self.correction_max, self.correction_min
        # Bounds that exclude 1 would truncate or zero tokens on which sampler and trainer agree.
        require(high is None or (finite(high) and high >= 1), g, "correction_max", high, "null or correction_max >= 1")
        require(low is None or (finite(low) and 0 <= low <= 1), g, "correction_min", low,
                "null or 0 <= correction_min <= 1")
        require(self.sampler_correction == "none" or high is not None or low is not None, g, "correction_max",
                high, f"a number (or a correction_min) with sampler_correction: {self.sampler_correction}")

    @property
    def correction(self) -> tuple[CorrectionMode, float | None, float | None]:
        """The sampler correction as (mode, C_max, C_min); ``tis_cap`` is token_truncate with C_max = tis_cap."""
        if self.tis_cap is not None:
            return "token_truncate", self.tis_cap, None
        return self.sampler_correction, self.correction_max, self.correction_min


@dataclass
class LoraArgs:
    """The base model's loading and its two LoRA adapters (``policy`` trained, ``reference`` frozen).

    Attributes:
        dtype: Weights dtype: float32 | bfloat16 | float16 | float64 (for exactness tests); 4-bit: the compute dtype.
        quantization: none | 4bit (QLoRA NF4, double quantisation) | 8bit.
        trust_remote_code: Run the model repository's own code; off unless you trust it.
        r: LoRA rank.
        alpha: LoRA alpha.
        dropout: LoRA dropout.
        target_modules: Modules to adapt; "all-linear" or a list of names.
        init_adapter: A PEFT adapter folder to start both adapters from (null: fresh LoRA).
        gradient_checkpointing: Recompute activations in backward to save memory.
        attn_implementation: Attention kernel (e.g. sdpa, eager, flash_attention_2); null: default.
    """

    dtype: str = "float32"
    quantization: Literal["none", "4bit", "8bit"] = "none"
    trust_remote_code: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    init_adapter: str | None = None
    gradient_checkpointing: bool = False
    attn_implementation: str | None = None

    def __post_init__(self) -> None:
        g = "model.lora"
        require(self.dtype in ("float32", "bfloat16", "float16", "float64"), g, "dtype", self.dtype,
                "float32 | bfloat16 | float16 | float64")
        require(self.quantization in ("none", "4bit", "8bit"), g, "quantization", self.quantization,
                "none | 4bit | 8bit")
        require(isinstance(self.r, int) and self.r >= 1, g, "r", self.r, "an integer >= 1")
        require(finite(self.alpha) and self.alpha > 0, g, "alpha", self.alpha, "alpha > 0")
        require(finite(self.dropout) and 0 <= self.dropout < 1, g, "dropout", self.dropout, "0 <= dropout < 1")
        require(self.init_adapter is None or (Path(self.init_adapter) / "adapter_config.json").is_file(), g,
                "init_adapter", self.init_adapter, "null or a PEFT adapter folder (with adapter_config.json)")
        if self.init_adapter is not None:
            check_adapter_agrees(self)


def check_adapter_agrees(lora: LoraArgs) -> None:
    """Refuse an ``init_adapter`` whose own LoRA settings differ from the run's (issue 25 item 6).

    PEFT loads the adapter with the settings saved in its ``adapter_config.json``: a run that says
    ``r: 16`` would train the adapter's r = 8 while its config.yaml records 16. ``target_modules`` is
    compared when the run lists names (``all-linear`` is resolved against the model, which is not
    loaded yet; PEFT saves the resolved names).
    """
    file = Path(str(lora.init_adapter)) / "adapter_config.json"
    try:
        saved = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise SettingsError(f"model.lora.init_adapter: cannot read {file} ({error})") from error
    pairs = [("r", lora.r, saved.get("r")), ("alpha", lora.alpha, saved.get("lora_alpha"))]
    if not isinstance(lora.target_modules, str) and isinstance(saved.get("target_modules"), list):
        pairs.append(("target_modules", sorted(lora.target_modules), sorted(saved["target_modules"])))
    differ = [f"{name}={ours!r} but the adapter has {theirs!r}" for name, ours, theirs in pairs
              if theirs is not None and ours != theirs]
    if differ:
        raise SettingsError(f"model.lora.init_adapter={lora.init_adapter!r}: the run's LoRA settings disagree with "
                            f"the adapter's own ({'; '.join(differ)}); set model.lora to the adapter's values")


@dataclass
class OptimArgs:
    """Optimiser and schedule of the policy adapter and of λ.

    Attributes:
        lr: Peak learning rate of the LoRA parameters (AdamW).
        lambda_lr: Learning rate of λ-GRPO's λ (its own parameter group, no weight decay).
        weight_decay: AdamW weight decay of the LoRA parameters.
        betas: AdamW betas.
        warmup_steps: Linear warm-up steps from 0 to lr.
        schedule: After warm-up: constant | cosine (to 0 at the trainer's max_steps).
        grad_clip: Max global grad-norm (policy and λ); <= 0 disables clipping.
    """

    lr: float = 1e-5
    lambda_lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        g = "model.optim"
        require(finite(self.lr) and self.lr >= 0, g, "lr", self.lr, "lr >= 0 (0: the policy stays as it is)")
        require(finite(self.lambda_lr) and self.lambda_lr >= 0, g, "lambda_lr", self.lambda_lr,
                "lambda_lr >= 0 (0: λ stays at lambda_init)")
        require(finite(self.weight_decay) and self.weight_decay >= 0, g, "weight_decay", self.weight_decay,
                "weight_decay >= 0")
        require(len(self.betas) == 2 and all(finite(b) and 0 <= b < 1 for b in self.betas), g, "betas",
                self.betas, "two numbers in [0, 1)")
        require(isinstance(self.warmup_steps, int) and self.warmup_steps >= 0, g, "warmup_steps", self.warmup_steps,
                "an integer >= 0")
        require(self.schedule in ("constant", "cosine"), g, "schedule", self.schedule, "constant | cosine")
        require(finite(self.grad_clip), g, "grad_clip", self.grad_clip, "a finite number (<= 0: no clipping)")


@dataclass
class ComputeArgs:
    """How the step's teacher-forced passes run: cut to fit memory (the update does not depend on it, up to
    float rounding) and the precision of their matmuls.

    Attributes:
        micro_batch_size: Responses per forward/backward (gradient accumulation over the B·G batch).
        logprob_chunk: Positions per chunk of the log-prob head, bounding its extra memory.
        autocast: Run the loss, π_old and reference passes under ``torch.autocast`` in this dtype: none |
            bfloat16 | float16. bfloat16 halves the loss pass's forward and backward on CPUs with AVX-512 BF16
            (docs/performance.md) and on GPUs; log-softmax stays float32. The weights keep ``lora.dtype``.
        preflight: Before the first step, run the worst step the run can meet once (the longest training prompt,
            ``max_new_tokens`` for every row, this micro-batch; with vLLM its KV cache against B·G such sequences)
            and stop in one line with the settings that fit if it runs out of memory (lampo_pl/preflight.py).
    """

    micro_batch_size: int = 8
    logprob_chunk: int = 1024
    autocast: Literal["none", "bfloat16", "float16"] = "none"
    preflight: bool = True

    def __post_init__(self) -> None:
        g = "model.compute"
        require(isinstance(self.micro_batch_size, int) and self.micro_batch_size >= 1, g, "micro_batch_size",
                self.micro_batch_size, "an integer >= 1 dividing prompts_per_step × group_size")
        require(isinstance(self.logprob_chunk, int) and self.logprob_chunk >= 1, g, "logprob_chunk",
                self.logprob_chunk, "an integer >= 1")
        require(self.autocast in ("none", "bfloat16", "float16"), g, "autocast", self.autocast,
                "none | bfloat16 | float16")


@dataclass
class RewardArgs:
    """Which rewards make r_i = Σ_k c_k r_k.

    Attributes:
        correctness: Weight of the verifiable outcome reward (math-verify / choice letter).
        density: Weight α of the ROUGE-L semantic-density reward (0 disables it).
        format: Weight of the format reward (closed reasoning block and a boxed answer).
        custom: Your own TRL-style reward functions: [{function: my_module.my_reward, weight: 0.5}, ...]
            (each also takes name, timeout_s, completion_format: auto | text | messages, memory_limit_gib).
        failure_limit: A custom reward that fails on this many batches in a row stops the run (a failure on
            the first batch always does: it is the preflight).
    """

    correctness: float = 1.0
    density: float = 0.0
    format: float = 0.0
    custom: tuple[CustomReward, ...] = ()
    failure_limit: int = 3

    def __post_init__(self) -> None:
        g = "model.rewards"
        require(isinstance(self.failure_limit, int) and self.failure_limit >= 1, g, "failure_limit",
                self.failure_limit, "an integer >= 1")
        require(finite(self.correctness), g, "correctness", self.correctness, "a finite number")
        require(finite(self.density) and self.density >= 0, g, "density", self.density, "density >= 0")
        require(finite(self.format), g, "format", self.format, "a finite number")
        # With every weight 0 each reward is 0, every advantage is 0 and nothing would ever be learnt.
        require(any((self.correctness, self.density, self.format)) or bool(self.custom), g, "correctness",
                self.correctness, "at least one of correctness, density, format non-zero, or a custom reward")


@dataclass
class PromptArgs:
    """How a problem becomes the chat prompt.

    Attributes:
        system_prompt: System message; null keeps the chat template's default.
        enable_thinking: Passed to chat templates that support it (Qwen3); null: template default.
        one_shot: Prepend a worked example as a user/assistant turn (teaches small models the format).
        instruction: Appended to each question after a blank line. The default is the math benchmarks' published
            one (DeepSeek-R1, DAPO, Dr. GRPO; multiple-choice sets ask for the letter instead); "" appends
            nothing. Problems given as chat ``messages`` are rendered verbatim, without it.
    """

    system_prompt: str | None = None
    enable_thinking: bool | None = None
    one_shot: bool = False
    instruction: str = DEFAULT_INSTRUCTION

    def __post_init__(self) -> None:
        require(isinstance(self.instruction, str), "model.prompt", "instruction", self.instruction,
                'text ("" for none)')

    @property
    def instruction_or_none(self) -> str | None:
        """The instruction as ``render_prompt`` takes it (``None``: none)."""
        return self.instruction or None


def check_batch_shape(prompts_per_step: int, group_size: int, micro_batch_size: int, num_iterations: int) -> None:
    """Reject at start-up batch sizes that do not divide, saying which numbers to change."""
    if prompts_per_step < 1 or group_size < 1 or micro_batch_size < 1 or num_iterations < 1:
        raise ValueError(
            f"prompts_per_step ({prompts_per_step}), group_size ({group_size}), compute.micro_batch_size "
            f"({micro_batch_size}) and method.num_iterations ({num_iterations}) must all be >= 1"
        )
    n = prompts_per_step * group_size
    if n % micro_batch_size != 0:
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        raise ValueError(
            f"compute.micro_batch_size={micro_batch_size} does not divide the {n} responses of a step "
            f"(prompts_per_step={prompts_per_step} × group_size={group_size}); "
            f"choose micro_batch_size in {divisors} or change prompts_per_step/group_size"
        )


def filter_signal_of(method: MethodArgs, rewards: RewardArgs) -> Literal["correctness", "total"] | None:
    """The signal DAPO dynamic sampling filters groups on; ``None`` without dynamic sampling.

    ``auto`` is correctness when it weighs in the reward (DAPO's own rule), else the total reward. Filtering
    on correctness at weight 0 would drop groups by a number the loss never sees (and, with only
    shaped rewards, could drop every group): refused in one line.
    """
    if not method.dynamic_sampling:
        return None
    if method.filter_signal == "auto":
        return "correctness" if rewards.correctness != 0 else "total"
    require(method.filter_signal != "correctness" or rewards.correctness != 0, "model.method", "filter_signal",
            method.filter_signal, "auto | total while model.rewards.correctness is 0 (correctness does not "
            "weigh in the reward, so filtering on it keeps or drops groups by a signal the loss never sees)")
    return method.filter_signal
