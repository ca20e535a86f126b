"""Typed, documented settings groups of the LightningModule (each field shows in ``lampo fit --help``).

They are plain dataclasses so that a YAML config stays flat: ``model.method.estimator: lampo``
needs no ``class_path``. The baseline configs differ from the LamPO one only in ``method``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lampo_pl.advantages import AdvantageScale, ConfidenceScore, Estimator
from lampo_pl.losses import H_MIN, R_LEN, AggregationMode, KLEstimator


@dataclass
class MethodArgs:
    """The RL algorithm: advantage estimator, clipped loss, KL, aggregation (docs/ALGORITHMS.md).

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
        dynamic_sampling: DAPO dynamic sampling: drop groups whose correctness rewards are all equal from
            the loss and its normalisers (no refill yet: the step trains on the remaining groups).
        lambda_init: Initial λ of the λ-GRPO aggregation.
        lambda_lr: Learning rate of λ (its own parameter group, no weight decay).
        r_len: λ-GRPO length sensitivity r_len.
        h_min: λ-GRPO floor on h_i, keeping h^λ finite.
        tis_cap: Truncated importance sampling for the sampler–trainer mismatch: each token's policy loss
            is weighted by min(π_old / π_sampler, tis_cap) (TRL's token_truncate, verl's TIS;
            lampo_pl/mismatch.py), e.g. 2.0 with ``sampling.engine: vllm``; null is off.
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
    lambda_init: float = 0.0
    lambda_lr: float = 1e-2
    r_len: float = R_LEN
    h_min: float = H_MIN
    tis_cap: float | None = None


@dataclass
class LoraArgs:
    """The base model's loading and its two LoRA adapters (``policy`` trained, ``reference`` frozen).

    Attributes:
        dtype: Weights dtype: float32 | bfloat16 | float16 (4-bit: the compute dtype).
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


@dataclass
class OptimArgs:
    """Optimiser and schedule of the policy adapter.

    Attributes:
        lr: Peak learning rate of the LoRA parameters (AdamW).
        weight_decay: AdamW weight decay of the LoRA parameters.
        betas: AdamW betas.
        warmup_steps: Linear warm-up steps from 0 to lr.
        schedule: After warm-up: constant | cosine (to 0 at the trainer's max_steps).
        grad_clip: Max global grad-norm (policy and λ); <= 0 disables clipping.
        micro_batch_size: Responses per forward/backward (gradient accumulation over the B·G batch).
        logprob_chunk: Positions per chunk of the log-prob head, bounding its extra memory.
    """

    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    grad_clip: float = 1.0
    micro_batch_size: int = 8
    logprob_chunk: int = 1024


@dataclass
class RewardArgs:
    """Which rewards make r_i = Σ_k c_k r_k.

    Attributes:
        correctness: Weight of the verifiable outcome reward (math-verify / choice letter).
        density: Weight α of the ROUGE-L semantic-density reward (0 disables it).
        format: Weight of the format reward (closed reasoning block and a boxed answer).
    """

    correctness: float = 1.0
    density: float = 0.0
    format: float = 0.0


@dataclass
class PromptArgs:
    """How a problem becomes the chat prompt.

    Attributes:
        system_prompt: System message; null keeps the chat template's default.
        enable_thinking: Passed to chat templates that support it (Qwen3); null: template default.
        one_shot: Prepend a worked example as a user/assistant turn (teaches small models the format).
    """

    system_prompt: str | None = None
    enable_thinking: bool | None = None
    one_shot: bool = False
