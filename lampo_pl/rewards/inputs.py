"""Input checks shared by the reward functions: equal batch lengths, tolerant text coercion."""

from __future__ import annotations

from collections.abc import Sized


def check_lengths(first: Sized, second: Sized, first_name: str, second_name: str) -> None:
    """Raise ``ValueError`` naming both lengths when two parallel batches differ in size.

    A mismatch is a caller bug (responses not repeated G times, say), not bad model output, so
    it is the one error the rewards raise.
    """
    if len(first) != len(second):
        raise ValueError(
            f"{first_name} and {second_name} must have the same length, "
            f"got {len(first)} {first_name} and {len(second)} {second_name}"
        )


def as_text(value: object) -> str:
    """``value`` as a string; ``None`` (a missing generation) becomes ``""``."""
    if isinstance(value, str):
        return value
    return "" if value is None else str(value)


# The keyword arguments TRL 1.16's GRPOTrainer gives a reward function besides the dataset's columns
# (trl/trainer/grpo_trainer.py, _calculate_rewards, lines 1584-1598 and 1626-1628). A data column of one of
# these names would replace the real argument, so it is refused when the data loads.
RESERVED_ARGUMENTS = (
    "prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric", "environments",
)
