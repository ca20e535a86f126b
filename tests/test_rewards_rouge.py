"""ROUGE-L: identical to rouge-score (the oracle), the bit-parallel LCS, and its speed."""

from __future__ import annotations

import random
import time

import pytest
from rouge_score import rouge_scorer
from rouge_score.tokenize import tokenize as oracle_tokenize

from lampo_pl.rewards import rouge_l, rouge_tokenize, semantic_density
from lampo_pl.rewards.semantic import lcs_length, match_masks

HANDCRAFTED = [
    "",
    "   \n\t ",
    "!!! ... ??? --- $$$",
    "The cat sat on the mat.",
    "the the the the cat cat",
    "x^2 + y^2 = 1, so \\frac{a}{b} = 3.5; answer: \\boxed{42}",
    "Ünïcödé wörds: naïve café, Straße, İstanbul, Kelvin \u212a, ﬁnal",
    "漢字とかなの文 with 한국어 and emoji 🎉🎉 mixed in",
    "123 456 7890 1e10 3.14159",
    "UPPER lower MiXeD case CASE case",
    "tabs\tand\nnewlines\r\nand\u00a0nbsp\u2003em-space",
    "a",
    "A",
    "<think>We add 2 and 2.</think> The answer is \\boxed{4}.",
]


def _random_text(rng: random.Random) -> str:
    # A small vocabulary makes repeated tokens (the hard case for LCS) common.
    vocabulary = ["the", "a", "of", "x", "2", "=", "sum", "Sum", "SUM!", "é", "\\frac{1}{2}", "...", "is", "we"]
    return " ".join(rng.choice(vocabulary) for _ in range(rng.randint(0, 120)))


def _corpus() -> list[tuple[str, str]]:
    rng = random.Random(0)
    pairs = [(c, r) for c in HANDCRAFTED for r in HANDCRAFTED]
    pairs += [(_random_text(rng), _random_text(rng)) for _ in range(300)]
    return pairs


def _oracle(candidate: str, reference: str) -> float:
    scorer = rouge_scorer.RougeScorer(["rougeL"])  # defaults: no stemmer, default tokenizer
    return scorer.score(reference, candidate)["rougeL"].fmeasure


def test_identical_to_rouge_score_on_a_varied_corpus() -> None:
    pairs = _corpus()
    ours = rouge_l([c for c, _ in pairs], [r for _, r in pairs])
    expected = [_oracle(c, r) for c, r in pairs]
    mismatches = [(p, o, e) for p, o, e in zip(pairs, ours, expected, strict=True) if o != e]
    assert not mismatches  # exact float equality: same arithmetic, same order
    assert 0.0 < sum(ours) / len(ours) < 1.0  # the corpus is not degenerate


def test_tokenizer_is_rouge_scores_default() -> None:
    for text in HANDCRAFTED + [_random_text(random.Random(seed)) for seed in range(20)]:
        assert rouge_tokenize(text) == oracle_tokenize(text, None)


@pytest.mark.parametrize(
    ("candidate", "reference"), [("", ""), ("", "some words"), ("some words", ""), ("!!!", "words"), ("漢字", "漢字")]
)
def test_empty_conventions_match_rouge_score(candidate: str, reference: str) -> None:
    assert rouge_l([candidate], [reference]) == [_oracle(candidate, reference)] == [0.0]


def test_hand_computed_value() -> None:
    # candidate "a b c d" (4 tokens), reference "a c e" (3): LCS "a c" = 2,
    # P = 2/4, R = 2/3, F = 2·(1/2)(2/3)/(1/2 + 2/3) = (2/3)/(7/6) = 4/7.
    assert rouge_l(["a b c d"], ["a c e"]) == pytest.approx([4 / 7], abs=1e-15)


def _dp_lcs(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


@pytest.mark.parametrize("seed", range(10))
def test_bit_parallel_lcs_equals_dynamic_programming(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = "abcd"[: rng.randint(1, 4)]
    a = [rng.choice(alphabet) for _ in range(rng.randint(0, 200))]
    b = [rng.choice(alphabet) for _ in range(rng.randint(0, 200))]
    assert lcs_length(match_masks(a), len(a), b) == _dp_lcs(a, b)


def test_length_mismatch() -> None:
    with pytest.raises(ValueError, match=r"2 candidates and 1 references"):
        rouge_l(["a", "b"], ["a"])


def test_semantic_density_scores_the_reasoning_and_skips_missing_solutions() -> None:
    responses = ["<think>add two and two</think> \\boxed{4}", "add two and two \\boxed{4}", "anything"]
    solutions = ["add two and two", "add two and two", None]
    scores = semantic_density(responses, solutions)
    assert scores[0] == 1.0  # only the think block is compared
    assert scores[1] == rouge_l(["add two and two \\boxed{4}"], ["add two and two"])[0] < 1.0
    assert scores[2] == 0.0


def test_at_least_20x_faster_than_rouge_score() -> None:
    # Smaller than the 4,000 × 1,000 of bench/rouge_l_speed.py to stay fast; the speed-up grows
    # with length (O(n·m/w) against O(n·m)), so this is the conservative case.
    rng = random.Random(1)
    words = [f"w{i}" for i in range(300)]
    candidate = " ".join(rng.choices(words, k=1200))
    reference = " ".join(rng.choices(words, k=300))
    start = time.perf_counter()
    expected = _oracle(candidate, reference)
    oracle_s = time.perf_counter() - start
    start = time.perf_counter()
    ours = rouge_l([candidate], [reference])[0]
    ours_s = time.perf_counter() - start
    assert ours == expected
    assert oracle_s / ours_s >= 20, (oracle_s, ours_s)
