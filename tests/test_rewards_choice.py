"""Multiple-choice letter extraction and grading (GPQA-Diamond)."""

from __future__ import annotations

import pytest

from lampo_pl.rewards import choice_reward, extract_choice, grade_choice

CASES = [
    ("The answer is (B)", "B"),
    ("\\boxed{C}", "C"),
    ("Answer: D", "D"),
    ("**Answer:** (C) 42 kg", "C"),
    ("Final Answer: \\boxed{\\text{(B)}}", "B"),
    ("\\boxed{\\textbf{D}}", "D"),
    ("\\boxed{B) 4.2 eV}", "B"),
    ("\\boxed{b}", "B"),
    ("The correct option is C.", "C"),
    ("The best answer would be B because the others fail.", "B"),
    ("Answer: $C$", "C"),
    ("The answer is: **C**", "C"),
    ("Answer - B", "B"),
    ("The answer is (b).", "B"),
    ("Options (A) and (B) fail, so the answer is (D).", "D"),
    ("First I said the answer is A. Actually, the answer is D.", "D"),
    ("the answer is a bit tricky. Answer: C", "C"),
    ("Let me think...\n\nC", "C"),
    ("...\n**(A)**", "A"),
    ("Therefore (C).", "C"),
    ("<think>The answer is A.</think>The answer is C.", "C"),
    # no single letter: hedges, prose, truncation, letters outside the choices
    ("I think it's A or B.", None),
    ("The answer is A or B.", None),
    ("The answer is A/B", None),
    ("\\boxed{A, C}", None),
    ("(A) is wrong and (B) is wrong.", None),
    ("A thorough analysis shows nothing.", None),
    ("<think>The answer is A.", None),
    ("answer: E", None),
    ("\\boxed{42}", None),
    ("", None),
]


@pytest.mark.parametrize(("response", "letter"), CASES, ids=[c[0][:40] for c in CASES])
def test_extract_choice(response: str, letter: str | None) -> None:
    assert extract_choice(response) == letter


def test_more_letters_when_configured() -> None:
    assert extract_choice("answer: E", letters="ABCDE") == "E"


def test_grade_choice_scores_and_diagnostics() -> None:
    grades = grade_choice(["The answer is (B)", "Answer: C", "A or B", None], ["B", "b", "A", "A"])  # type: ignore[list-item]
    assert grades.scores == [1.0, 0.0, 0.0, 0.0]
    assert grades.extracted == ["B", "C", None, None]
    assert grades.n_no_answer == 2 and grades.diagnostics() == {"choice_no_answer": 2.0}


def test_choice_reward_and_key_case() -> None:
    assert choice_reward(["\\boxed{D}", "\\boxed{D}"], ["d", "A"]) == [1.0, 0.0]


def test_length_mismatch() -> None:
    with pytest.raises(ValueError, match=r"1 responses and 2 correct_letters"):
        grade_choice(["A"], ["A", "B"])
