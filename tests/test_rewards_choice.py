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


THINK = "<think>\nLet me weigh each option. A fails the symmetry test; B and D ignore the 2:1 ratio.\n</think>\n\n"

# How reasoning models (DeepSeek-R1, Qwen3, QwQ, Phi-4-mini) state a GPQA answer, and the letter
# each one chooses. Option texts hold capitals of their own (issue 12 item 4).
GPQA_STYLES = [
    # boxed letter, with or without the option's text
    (THINK + "The correct answer is \\boxed{C}.", "C"),
    (THINK + "**Final Answer**\n\\boxed{C}", "C"),
    (THINK + "**Final Answer**\n\n\\[\n\\boxed{C}\n\\]", "C"),
    (THINK + "\\boxed{C) A 2:1 mixture of enantiomers}", "C"),
    (THINK + "\\boxed{D) D-glucose}", "D"),
    (THINK + "\\boxed{B. The reaction is under Kinetic control}", "B"),
    (THINK + "\\boxed{A: A and B are both isomers}", "A"),
    (THINK + "\\boxed{Option C}", "C"),
    (THINK + "\\boxed{(c)}", "C"),
    # \text{} / \textbf{} / \mathrm{} inside the box
    (THINK + "\\boxed{\\text{C) A 2:1 mixture}}", "C"),
    (THINK + "\\boxed{\\textbf{(B)} 4.2 eV}", "B"),
    (THINK + "\\boxed{\\text{(A) } A\\ 2:1\\text{ mixture}}", "A"),
    (THINK + "$\\boxed{\\mathrm{D}}$", "D"),
    (THINK + "Final Answer: The final answer is $\\boxed{\\text{C}}$. I hope it is correct.", "C"),
    # bold "Final Answer" and "Answer: (D) ..." without a box
    (THINK + "**Final Answer:** **C** — the 2:1 mixture", "C"),
    (THINK + "**Final Answer**\n\n**(C)**", "C"),
    (THINK + "**Answer: (D) 10^{-4} M**", "D"),
    (THINK + "Answer: (D) Both A and B", "D"),
    (THINK + "Answer: (D) D-glucose", "D"),
    (THINK + "The answer is **(B) 4.2 eV**.", "B"),
    (THINK + "ANSWER: C", "C"),
    (THINK + "The correct answer choice is A.", "A"),
    (THINK + "Among the options, A and B are incorrect, so the correct answer is D.", "D"),
    # second thoughts after a first guess: the final statement counts
    (THINK + "Answer: B\n\nWait, the stereocentre inverts. Actually, the answer is C.", "C"),
    (THINK + "\\boxed{B}\n\nHmm, wait. Reconsidering the symmetry, the answer is (C).", "C"),
    (THINK + "My first guess was \\boxed{A}, but after checking the units: \\boxed{C}.", "C"),
    (THINK + "The answer is A.\n\nOn reflection:\n\n\\boxed{D}", "D"),
    # an explanation after the box is no new answer
    (THINK + "\\boxed{C}\n\nNote: answer choice A would be wrong because it ignores the ratio.", "C"),
    (THINK + "\\boxed{C}\n\nThe correct answer is not A: A ignores the ratio.", "C"),
    # a lower-case letter with more in the box is a variable, not an option
    (THINK + "\\boxed{b = 5}", None),
    (THINK + "We get \\boxed{b = 5}, so the answer is (A).", "A"),
    # hedges: no answer
    (THINK + "The answer is either B or C.", None),
    (THINK + "\\boxed{B or C}", None),
    (THINK + "\\boxed{B} or \\boxed{C}", None),
    (THINK + "$\\boxed{B}$ or $\\boxed{C}$", None),
    (THINK + "The answer is B (or possibly C).", None),
    (THINK + "Answer: **A** or **B**", None),
    (THINK + "I'd go with B, but C is also plausible.", None),
    # option text without its letter, truncation
    (THINK + "\\boxed{D-glucose}", None),
    (THINK + "Answer: D-glucose", None),
    (THINK + "The answer is C.\n\n\\boxed{C", None),
    ("<think>\nThe ratio is 2:1, so the answer is \\boxed{C}", None),
]


@pytest.mark.parametrize(("response", "letter"), GPQA_STYLES, ids=[c[0].removeprefix(THINK)[:48] for c in GPQA_STYLES])
def test_gpqa_answer_styles(response: str, letter: str | None) -> None:
    assert extract_choice(response) == letter
    if letter is not None:  # graded: the key scores 1, any other letter 0
        assert grade_choice([response, response], [letter, "A" if letter != "A" else "B"]).scores == [1.0, 0.0]


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
