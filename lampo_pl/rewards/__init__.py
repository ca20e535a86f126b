"""Rewards: pure, batched functions over responses that return floats and per-call diagnostics.

- `math_reward` / `grade_math`: final answer (last ``\\boxed{}``, then anchored fallbacks) checked
  with math-verify in a bounded-time worker; timeouts and parse failures give 0 and are counted.
- `choice_reward` / `grade_choice`: the chosen letter of a multiple-choice (GPQA) response.
- `format_reward`: closed reasoning block (thinking templates) and a ``\\boxed{}`` answer.
- `rouge_l` / `semantic_density`: ROUGE-L F, identical to rouge-score's ``rougeL``, bit-parallel.
- `CustomReward`: a user's TRL-style reward function, bounded in time in a child process.
- `score_responses`: the weighted composition the training loop calls.
"""

from lampo_pl.rewards.choice import ChoiceGrades, choice_reward, extract_choice, grade_choice
from lampo_pl.rewards.compose import (
    REWARD_NAMES,
    RewardBatch,
    RewardName,
    RewardSpec,
    score_responses,
)
from lampo_pl.rewards.custom import CustomReward, check_custom_rewards
from lampo_pl.rewards.extraction import MathExtraction, extract_math_answer
from lampo_pl.rewards.format import format_reward, has_expected_format
from lampo_pl.rewards.math_grading import GradeStatus, MathGrades, grade_math, math_reward
from lampo_pl.rewards.semantic import rouge_l, rouge_tokenize, semantic_density
from lampo_pl.rewards.thinking import reasoning_text, split_thinking
from lampo_pl.rewards.verifier import MathVerifier, shared_verifier

__all__ = [
    "REWARD_NAMES",
    "ChoiceGrades",
    "CustomReward",
    "GradeStatus",
    "MathExtraction",
    "MathGrades",
    "MathVerifier",
    "RewardBatch",
    "RewardName",
    "RewardSpec",
    "check_custom_rewards",
    "choice_reward",
    "extract_choice",
    "extract_math_answer",
    "format_reward",
    "grade_choice",
    "grade_math",
    "has_expected_format",
    "math_reward",
    "reasoning_text",
    "rouge_l",
    "rouge_tokenize",
    "score_responses",
    "semantic_density",
    "shared_verifier",
    "split_thinking",
]
