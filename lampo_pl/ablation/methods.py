"""The methods an ablation compares, as the ``model.method`` and ``model.rewards.density`` they set.

Each preset is the ``method`` block of the matching ``configs/qwen3-1.7b*.yaml`` (a test keeps them
equal), so a notebook result and a GPU run of a config mean the same algorithm. Everything else
(model, data, optimiser, sampling, seeds) is shared by all methods of one ablation. The formulas are
in docs/ablations.md and the shared docs/ALGORITHMS.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from lampo_pl.losses import R_LEN
from lampo_pl.settings import MethodArgs


@dataclass(frozen=True)
class MethodPreset:
    """One method of the ablation.

    Attributes:
        label: Name in plots and tables.
        method: The algorithm (advantage estimator, clipping, KL, aggregation, DAPO switches).
        density: Uses the ROUGE-L semantic-density reward (weight ``AblationSettings.density_weight``).
        config: The config file whose ``model.method`` block this preset equals.
    """

    label: str
    method: MethodArgs
    density: bool
    config: str


METHODS: dict[str, MethodPreset] = {
    "grpo": MethodPreset(
        "GRPO",
        MethodArgs(estimator="grpo", aggregation="seq_mean_token_mean", eps_low=0.2, eps_high=0.2, beta=0.04,
                   kl_estimator="k3"),
        density=False, config="configs/qwen3-1.7b-grpo.yaml",
    ),
    "dr_grpo": MethodPreset(
        "Dr. GRPO",
        MethodArgs(estimator="dr_grpo", aggregation="seq_mean_token_sum_norm", eps_low=0.2, eps_high=0.2, beta=0.0),
        density=False, config="configs/qwen3-1.7b-dr-grpo.yaml",
    ),
    "dapo": MethodPreset(
        "DAPO",
        MethodArgs(estimator="grpo", aggregation="token_mean", eps_low=0.2, eps_high=0.28, beta=0.0,
                   mask_truncated=True, dynamic_sampling=True, max_refill_rounds=4),
        density=False, config="configs/qwen3-1.7b-dapo.yaml",
    ),
    "lambda_grpo": MethodPreset(
        "λ-GRPO",
        MethodArgs(estimator="grpo", aggregation="lambda", eps_low=0.2, eps_high=0.2, beta=0.0, lambda_init=0.0,
                   r_len=R_LEN),
        density=False, config="configs/qwen3-1.7b-lambda-grpo.yaml",
    ),
    "lampo": MethodPreset(
        "LamPO",
        MethodArgs(estimator="lampo", tau=1.0, confidence="mean", scale="none", aggregation="token_mean",
                   eps_low=0.2, eps_high=0.28, beta=0.0),
        density=False, config="configs/qwen3-1.7b.yaml",
    ),
    "lampo_density": MethodPreset(
        "LamPO + ROUGE-L",
        MethodArgs(estimator="lampo", tau=1.0, confidence="mean", scale="none", aggregation="token_mean",
                   eps_low=0.2, eps_high=0.28, beta=0.0),
        density=True, config="configs/qwen3-1.7b.yaml",
    ),
}


def method_preset(name: str) -> MethodPreset:
    """The preset called ``name``; the error lists the known names."""
    if name not in METHODS:
        raise ValueError(f"unknown ablation method {name!r}; expected one of {', '.join(METHODS)}")
    return METHODS[name]
