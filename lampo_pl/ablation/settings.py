"""What one ablation shares across its arms and seeds, and the embedded presets.

- ``tiny`` (the default, the quick check): the tiny Qwen3 after 150 steps of supervised warm-up
  (``tiny:qwen3-sft``, lampo_pl/tiny_sft.py) on one-digit sums, where it starts near 55 % held-out
  accuracy; the five methods and LamPO + ROUGE-L, 5 paired seeds, ~0.4 s per step on one CPU core.
- ``tiny-room`` (room to learn): the same model stopped after 100 warm-up steps (``tiny:qwen3-sft100``),
  which starts near 0.28 held-out (0.22 training) accuracy, far below the ceiling; measured, the
  methods barely use that room in 80 steps (README); the five methods with binary rewards,
  LamPO's τ sweep {0, 0.5, 1, 2, 4}, and the five methods with the ROUGE-L density reward (14 arms).
  A level mix was measured first and rejected: warmed up 400 steps on one- and two-digit sums the
  tiny model starts at 0.48 and GRPO gained nothing in 60 steps (two-digit sums are beyond it).
- ``smollm2``: the packaged SmolLM2-135M-Instruct on one- and two-digit problems with a worked example
  in the prompt (the ``make demo`` setting), sampled with vLLM: GRPO ± ROUGE-L, Dr. GRPO and
  LamPO ± ROUGE-L, 6 seeds of 10 steps; ~40 s per step on one core of the CPU machine that ran most
  runs (~7 min a run), ~2 min on the one that ran the first five (23-33 min a run).

- ``smollm2-resolution``: the ``smollm2`` training setting unchanged (so the committed runs' variance
  applies), with GRPO, LamPO, DelTA, GSPO and DAPO over 24 paired seeds, held-out 64 problems × 4
  samples at steps 0 and 10, KL tracked only where it is penalised (GRPO): sized so the 95 % half-width
  of LamPO − GRPO and DelTA − GRPO AUC is about 0.015 (docs/ablations.md, "The resolution run").
  Resumable; run GRPO, LamPO and DelTA first (~8 CPU-hours), then GSPO and DAPO on the same seeds.

For a real model, replace fields (``dataclasses.replace`` or the notebook's settings cell): e.g.
``model="Qwen/Qwen3-1.7B", quantization="4bit"``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from lampo_pl.ablation.methods import method_preset


@dataclass(frozen=True)
class AblationSettings:
    """Settings shared by every (method, seed) run of an ablation.

    Attributes:
        model: Model name as ``model.model`` takes it (``tiny:qwen3-sft``, ``packaged:...``, a Hub id).
        quantization: none | 4bit | 8bit (``model.lora.quantization``).
        dtype: Weights / compute dtype (``model.lora.dtype``).
        methods: Arms, in plotting order: ``<base>[+rouge][@field=value]`` (``lampo_pl.ablation.methods``).
        baseline: The arm every other is compared with, seed by seed (``+rouge`` arms with ``baseline+rouge``).
        contrasts: Further paired comparisons ``(arm, reference)`` between two of ``methods``, e.g.
            ``(("lampo", "delta"),)``: rows of the same tables and the same Holm family as the baseline's.
        seeds: Paired seeds: one run per method per seed; a seed fixes the training-prompt order, the LoRA
            initialisation and every sample, the same for all methods.
        steps: Training steps per run (rollout batches; μ = 1 in every preset).
        prompts_per_step: B.
        group_size: G.
        max_new_tokens: Response budget (training and evaluation).
        temperature: Rollout sampling temperature.
        engine: Sampler of rollouts and evaluations: native | generate | vllm (``SamplingParams.engine``;
            the same distribution, other random draws, so runs of one engine do not resume another's).
        lr: Peak learning rate of the policy adapter (constant after ``warmup_steps``).
        warmup_steps: Linear learning-rate warm-up steps.
        lora_r: LoRA rank. lora_alpha: LoRA alpha.
        micro_batch_size: Responses per forward/backward.
        density_weight: α of the ROUGE-L density reward, for the methods that use it.
        levels: Synthetic difficulty levels trained and evaluated (lampo_pl.data.synthetic).
        one_shot: Prepend a worked example to every prompt.
        eval_every: Held-out evaluation every N steps (and at the start and the end).
        eval_problems: Held-out synthetic problems (split ``test``, fixed across seeds).
        eval_k: Samples per held-out problem (avg@k, pass@k).
        eval_temperature: Sampling temperature of the held-out evaluation.
        threshold: Accuracy that "steps to threshold" waits for (on smoothed training accuracy).
        smooth: Trailing moving-average window (steps) for that accuracy and for the plots.
        track_kl: Measure KL to the reference for methods with β = 0 (one extra no-grad pass per step).
        workers: Runs in parallel (processes); 1 runs in this process.
        threads_per_run: torch CPU threads per run.
    """

    model: str = "tiny:qwen3-sft"
    quantization: str = "none"
    dtype: str = "float32"
    methods: tuple[str, ...] = ("grpo", "dr_grpo", "dapo", "lambda_grpo", "lampo", "lampo+rouge")
    baseline: str = "grpo"
    contrasts: tuple[tuple[str, str], ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    steps: int = 80
    prompts_per_step: int = 4
    group_size: int = 8
    max_new_tokens: int = 32
    temperature: float = 1.0
    engine: Literal["native", "generate", "vllm"] = "native"
    lr: float = 2.5e-3
    warmup_steps: int = 0
    lora_r: int = 8
    lora_alpha: int = 16
    micro_batch_size: int = 32
    density_weight: float = 0.2
    levels: tuple[int, ...] = (1,)
    one_shot: bool = False
    eval_every: int = 20
    eval_problems: int = 64
    eval_k: int = 4
    eval_temperature: float = 1.0
    threshold: float = 0.6
    smooth: int = 10
    track_kl: bool = True
    workers: int = 2
    threads_per_run: int = 1

    def __post_init__(self) -> None:
        for name in (*self.methods, self.baseline):
            method_preset(name)
        if bad := [pair for pair in self.contrasts if len(pair) != 2 or not set(pair) <= set(self.methods)
                   or pair[0] == pair[1]]:  # fmt: skip
            raise ValueError(f"each contrast is (arm, reference), two different arms of methods; got {bad}")
        positive = ("steps", "prompts_per_step", "group_size", "max_new_tokens", "micro_batch_size", "eval_problems",
                    "eval_k", "smooth", "workers", "threads_per_run", "lora_r")
        if bad := [f"{n}={getattr(self, n)}" for n in positive if getattr(self, n) < 1]:
            raise ValueError(f"ablation settings must be >= 1: {', '.join(bad)}")
        if not self.seeds or not self.methods or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"need at least one method and distinct seeds, got {self.methods} and {self.seeds}")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold is an accuracy in (0, 1], got {self.threshold}")

    def run_identity(self) -> dict[str, Any]:
        """The fields a run's numbers depend on (not how many run in parallel): resumed runs must match them."""
        skip = {"methods", "baseline", "contrasts", "seeds", "workers", "threshold", "smooth"}
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name not in skip}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


ROOM_ARMS = (
    "grpo", "dr_grpo", "dapo", "lambda_grpo", "lampo",  # binary rewards
    "lampo@tau=0", "lampo@tau=0.5", "lampo@tau=2", "lampo@tau=4",  # τ sweep (τ = 1 is "lampo")
    "grpo+rouge", "dr_grpo+rouge", "dapo+rouge", "lambda_grpo+rouge", "lampo+rouge",  # graded rewards
)

PRESETS: dict[str, AblationSettings] = {
    "tiny": AblationSettings(),
    "tiny-room": AblationSettings(
        model="tiny:qwen3-sft100", methods=ROOM_ARMS, seeds=(0, 1, 2, 3, 4, 5), eval_every=40, threshold=0.3,
        workers=1,
    ),
    "smollm2": AblationSettings(
        model="packaged:smollm2-135m-instruct", methods=("grpo", "dr_grpo", "lampo", "grpo+rouge", "lampo+rouge"),
        seeds=(0, 1, 2, 3, 4, 5),
        steps=10, prompts_per_step=2, group_size=8, max_new_tokens=64, temperature=0.7, engine="vllm", lr=2e-4,
        warmup_steps=1, lora_r=16, lora_alpha=32, micro_batch_size=4, levels=(1, 2), one_shot=True, eval_every=5,
        eval_problems=32, eval_k=2, eval_temperature=0.6, threshold=0.5, smooth=3, workers=1, threads_per_run=1,
    ),
}


# The resolution run (docs/ablations.md): the smollm2 training setting, 24 seeds, a larger held-out set.
RESOLUTION_ARMS = ("grpo", "lampo", "delta", "gspo", "dapo")
# Presets whose arms this version of lampo_pl lacks: name -> why (``preset`` refuses them in one line).
UNAVAILABLE: dict[str, str] = {}
try:
    PRESETS["smollm2-resolution"] = replace(
        PRESETS["smollm2"], methods=RESOLUTION_ARMS, seeds=tuple(range(24)), eval_every=10, eval_problems=64,
        eval_k=4, track_kl=False, contrasts=(("lampo", "delta"),),  # the two same-day credit-assignment methods
    )
except ValueError as err:  # an arm not yet in ablation/methods.py (DelTA and GSPO land separately)
    UNAVAILABLE["smollm2-resolution"] = str(err)


def preset(name: str) -> AblationSettings:
    """The embedded preset ``name`` (``tiny``, ``tiny-room``, ``smollm2``, ``smollm2-resolution``)."""
    if name in UNAVAILABLE:
        raise ValueError(f"ablation preset {name!r} is not available in this version: {UNAVAILABLE[name]}")
    if name not in PRESETS:
        raise ValueError(f"unknown ablation preset {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]
