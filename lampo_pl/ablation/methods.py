"""The methods an ablation compares (its *arms*), as the ``model.method`` and density reward they set.

Each base preset is the ``method`` block of the matching ``configs/qwen3-1.7b*.yaml`` (a test keeps
them equal), so a notebook result and a GPU run of a config mean the same algorithm. Everything else
(model, data, optimiser, sampling, seeds) is shared by all arms of one ablation. The formulas are in
docs/ablations.md and the shared docs/ALGORITHMS.md.

An arm is named by a spec: a base name, optionally ``+delta`` (DelTA's per-token reshaping of the base's
advantage, ``method.delta``), optionally ``+rouge`` (the ROUGE-L density reward on, with the ablation's
``density_weight``), optionally ``@field=value`` (a ``MethodArgs`` field changed):

    grpo               GRPO, binary reward
    delta              GRPO + DelTA as in its paper (configs/qwen3-1.7b-delta.yaml)
    lampo+delta        LamPO's advantage reshaped per token by DelTA
    grpo+rouge         GRPO with r = r_correct + α·ROUGE-L(o, solution)
    lampo@tau=0.5      LamPO with τ = 0.5 (τ = 0: Dr. GRPO's advantage under LamPO's loss)
    lampo+rouge@tau=2  both

The policy-loss arms ``gspo``, ``cispo`` and ``sapo`` run μ = 2 passes per rollout batch (at μ = 1 their
gradient is GRPO's; docs/algorithms.md). Each pass is one optimiser step, so at the same ``steps`` they see
half the rollout batches of the other arms: ``grpo@num_iterations=2`` is their like-for-like reference.

Specs are also the run files' names (``<spec>_seed<seed>.json``), so they use no path characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Any

from lampo_pl.losses import R_LEN
from lampo_pl.settings import MethodArgs


@dataclass(frozen=True)
class MethodPreset:
    """One arm of the ablation.

    Attributes:
        label: Name in plots and tables.
        method: The algorithm (advantage estimator, clipping, KL, aggregation, DAPO switches).
        density: Uses the ROUGE-L semantic-density reward (weight ``AblationSettings.density_weight``).
        config: The config file whose ``model.method`` block the base preset equals.
        base: The base preset's name (``lampo`` for ``lampo+rouge@tau=2``).
    """

    label: str
    method: MethodArgs
    density: bool
    config: str
    base: str = ""


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
    "gspo": MethodPreset(
        "GSPO",
        MethodArgs(estimator="grpo", policy_loss="gspo", aggregation="seq_mean_token_mean", eps_low=3e-4,
                   eps_high=4e-4, beta=0.0, num_iterations=2),
        density=False, config="configs/qwen3-1.7b-gspo.yaml",
    ),
    "cispo": MethodPreset(
        "CISPO",
        MethodArgs(estimator="grpo", policy_loss="cispo", cispo_cap=5.0, aggregation="token_mean", beta=0.0,
                   num_iterations=2),
        density=False, config="configs/qwen3-1.7b-cispo.yaml",
    ),
    "sapo": MethodPreset(
        "SAPO",
        MethodArgs(estimator="grpo", policy_loss="sapo", sapo_tau_pos=1.0, sapo_tau_neg=1.05,
                   aggregation="seq_mean_token_mean", beta=0.0, num_iterations=2),
        density=False, config="configs/qwen3-1.7b-sapo.yaml",
    ),
    "lampo": MethodPreset(
        "LamPO",
        MethodArgs(estimator="lampo", tau=1.0, confidence="mean", scale="none", aggregation="token_mean",
                   eps_low=0.2, eps_high=0.28, beta=0.0),
        density=False, config="configs/qwen3-1.7b.yaml",
    ),
    "delta": MethodPreset(
        "GRPO + DelTA",
        MethodArgs(estimator="grpo", aggregation="token_mean", eps_low=0.2, eps_high=0.28, beta=0.0, delta=True,
                   delta_rounds=1, delta_weight_min=0.8, delta_weight_max=1.2),
        density=False, config="configs/qwen3-1.7b-delta.yaml",
    ),
}


# Greek letters for the labels of the fields a sweep usually changes.
_SYMBOL = {"tau": "τ", "beta": "β", "eps_high": "ε_high", "eps_low": "ε_low"}
_SPEC = re.compile(r"^(?P<base>[a-z_]+)(?P<delta>\+delta)?(?P<rouge>\+rouge)?(?P<changes>(@[a-z_]+=[^@/\\\s]+)*)$")


def method_preset(spec: str) -> MethodPreset:
    """The arm named ``spec`` (``lampo``, ``grpo+rouge``, ``lampo@tau=0.5``); the error says what is wrong."""
    match = _SPEC.match(spec)
    if match is None or match["base"] not in METHODS:
        raise ValueError(f"unknown ablation method {spec!r}: expected <base>[+delta][+rouge][@field=value...] with "
                         f"<base> one of {', '.join(METHODS)}")
    preset = METHODS[match["base"]]
    changes = dict(part.split("=", 1) for part in match["changes"].split("@")[1:])
    method = replace(preset.method, **{name: _parse_field(spec, name, value) for name, value in changes.items()})
    method = replace(method, delta=True) if match["delta"] else method
    label = preset.label + (" + DelTA" if match["delta"] and not preset.method.delta else "")
    label += " + ROUGE-L" if match["rouge"] else ""
    if changes:
        label += " " + ", ".join(f"{_SYMBOL.get(k, k)}={v}" for k, v in changes.items())
    return MethodPreset(label, method, density=bool(match["rouge"]), config=preset.config, base=match["base"])


def _parse_field(spec: str, name: str, text: str) -> Any:
    """``text`` as the type of ``MethodArgs.name`` (float, int, bool, str or None)."""
    kinds = {f.name: str(f.type) for f in fields(MethodArgs)}
    if name not in kinds:
        raise ValueError(f"ablation method {spec!r}: MethodArgs has no field {name!r}")
    kind = kinds[name]
    if text in ("null", "none", "None") and "None" in kind:
        return None
    try:
        if kind.startswith("bool"):
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            return float(text)
    except ValueError:
        raise ValueError(f"ablation method {spec!r}: {name}={text!r} is not a {kind}") from None
    return text


def reference_arm(spec: str, baseline: str) -> str:
    """The arm ``spec`` is compared with: ``baseline`` under the same reward (``+rouge`` kept)."""
    return baseline + ("+rouge" if method_preset(spec).density and not method_preset(baseline).density else "")


def binary_arm(spec: str) -> str:
    """The same arm without the density reward (``lampo+rouge@tau=2`` -> ``lampo@tau=2``); ``spec`` if it has none."""
    return spec.replace("+rouge", "", 1) if method_preset(spec).density else spec
