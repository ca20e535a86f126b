"""Reward composition used by the training loop: r_i = Σ_k c_k · r_k (ALGORITHMS.md, "Rewards").

1. ``correctness`` dispatches on ``Problem.kind``: ``math`` is graded by math-verify against
   ``Problem.answer`` (`grade_math`), ``choice`` by letter (`grade_choice`). It is computed on
   every call — also when it has no spec — because accuracy metrics need it.
2. ``density`` is the ROUGE-L semantic density against ``Problem.solution``; 0 where the problem
   has no solution (counted as ``density_missing_solution``).
3. ``format`` is `format_reward` with the chat template's thinking mode.
4. Users' own functions (`CustomReward`, ``model.rewards.custom``) are called as TRL calls them
   (`lampo_pl.rewards.custom`); a ``None`` (NaN) value is left out of the sum, as TRL's ``nansum``.
   One that fails its first batch, or too many in a row, stops the run (`RewardGuard`).
Components are reported unweighted, one list per configured name, so each can be logged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from lampo_pl.data.record import Problem
from lampo_pl.rewards.choice import grade_choice
from lampo_pl.rewards.custom import CustomReward, Messages, RewardGuard, TrainerProgress, score_custom
from lampo_pl.rewards.format import format_reward
from lampo_pl.rewards.inputs import check_lengths
from lampo_pl.rewards.math_grading import grade_math
from lampo_pl.rewards.semantic import semantic_density

RewardName = Literal["correctness", "density", "format"]
REWARD_NAMES: tuple[str, ...] = get_args(RewardName)


@dataclass(frozen=True)
class RewardSpec:
    """One term c_k · r_k of the total reward.

    Attributes:
        name: ``correctness`` (r_out ∈ {0, 1}), ``density`` (ROUGE-L r_sd ∈ [0, 1]) or
            ``format`` (∈ {0, 1}).
        weight: c_k.
    """

    name: RewardName
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in REWARD_NAMES:
            raise ValueError(f"unknown reward {self.name!r}; valid rewards: {', '.join(REWARD_NAMES)}")


@dataclass(frozen=True)
class RewardBatch:
    """Rewards of one batch of N = B·G responses.

    Attributes:
        total: Σ_k weight_k · component_k, one per response.                   [N]
        components: Unweighted values per configured reward name (NaN: None). {name: [N]}
        correct: The correctness component (0/1), always computed.           [N]
        diagnostics: Counts for the logs (``math_timeouts``, ``math_parse_failures``,
            ``math_no_answer``, ``math_echoes``, ``math_errors``, ``choice_no_answer``,
            ``density_missing_solution``).
    """

    total: list[float]
    components: dict[str, list[float]]
    correct: list[float]
    diagnostics: dict[str, float]


def _correctness(
    responses: Sequence[str], problems: Sequence[Problem], timeout_s: float
) -> tuple[list[float], dict[str, float]]:
    kinds = {problem.kind for problem in problems}
    if not kinds <= {"math", "choice"}:
        raise ValueError(f"unknown problem kind(s) {sorted(kinds - {'math', 'choice'})}; valid: math, choice")
    correct = [0.0] * len(responses)
    diagnostics: dict[str, float] = {}
    math_idx = [i for i, p in enumerate(problems) if p.kind == "math"]
    choice_idx = [i for i, p in enumerate(problems) if p.kind == "choice"]
    if math_idx:
        grades = grade_math(
            [responses[i] for i in math_idx], [problems[i].answer for i in math_idx], timeout_s=timeout_s
        )
        for i, score in zip(math_idx, grades.scores, strict=True):
            correct[i] = score
        diagnostics.update(grades.diagnostics())
    if choice_idx:
        letters = [problems[i].answer for i in choice_idx]
        choice_grades = grade_choice([responses[i] for i in choice_idx], letters)
        for i, score in zip(choice_idx, choice_grades.scores, strict=True):
            correct[i] = score
        diagnostics.update(choice_grades.diagnostics())
    return correct, diagnostics


def score_responses(
    responses: list[str],
    problems: Sequence[Problem],
    specs: Sequence[RewardSpec],
    *,
    thinking: bool = False,
    timeout_s: float = 5.0,
    custom: Sequence[CustomReward] = (),
    completion_ids: Sequence[Sequence[int]] | None = None,
    state: TrainerProgress | None = None,
    prompt_messages: Sequence[Messages] | None = None,
    guard: RewardGuard | None = None,
) -> RewardBatch:
    """Score responses with the configured rewards (module docstring).

    Args:
        responses: N generated responses.
        problems: The problem each response answers (each repeated G times by the caller).
        specs: The rewards and their weights, names unique.
        thinking: Whether the chat template is in thinking mode (`format_reward`).
        timeout_s: Time bound of one math-verify check (`grade_math`).
        custom: Users' reward functions, each its own component (NaN where it returned None).
        completion_ids: Token ids of each response, for ``custom`` (TRL's ``completion_ids``).
        state: Where the run stands, for ``custom`` (``trainer_state``: global_step, max_steps, epoch).
        prompt_messages: Per response, the chat messages its prompt was rendered from, for ``custom``
            (TRL's conversational format); ``None``: plain-text prompts.
        guard: Stops the run when a custom reward fails its preflight batch or too many in a row.

    Raises:
        ValueError: lengths differ, a reward name is unknown or repeated, or a problem kind is
            unknown — caller bugs. Grading failures never raise; they score 0 and are counted.
    """
    check_lengths(responses, problems, "responses", "problems")
    names = [spec.name for spec in specs] + [reward.key for reward in custom]
    for name in names[: len(specs)]:
        if name not in REWARD_NAMES:
            raise ValueError(f"unknown reward {name!r}; valid rewards: {', '.join(REWARD_NAMES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"each reward may appear once, got {names}")
    correct, diagnostics = _correctness(responses, problems, timeout_s)
    components: dict[str, list[float]] = {}
    for name in names:
        if name == "correctness":
            components[name] = correct
        elif name == "density":
            solutions = [problem.solution for problem in problems]
            components[name] = semantic_density(responses, solutions)
            diagnostics["density_missing_solution"] = float(solutions.count(None))
        else:
            components[name] = format_reward(responses, thinking=thinking)
    custom_components, custom_diagnostics = score_custom(custom, responses, problems, completion_ids=completion_ids,
                                                         state=state, prompt_messages=prompt_messages, guard=guard)
    components |= custom_components
    diagnostics |= custom_diagnostics
    weights = [(spec.name, spec.weight) for spec in specs] + [(reward.key, reward.weight) for reward in custom]
    total = [
        sum((w * components[name][i] for name, w in weights if not math.isnan(components[name][i])), 0.0)
        for i in range(len(responses))
    ]
    return RewardBatch(total, components, correct, diagnostics)
