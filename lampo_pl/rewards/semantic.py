"""Semantic density reward r_sd ∈ [0, 1]: ROUGE-L F-measure between a response's reasoning and
the reference solution (ALGORITHMS.md, "Rewards"; LamPO abstract).

How it differs from ``rouge_score.rouge_scorer.RougeScorer(["rougeL"]).score(ref, cand)``, and
why — the values are identical (tests compare them exactly on a varied corpus):
1. Same tokenizer as rouge-score's default (``use_stemmer=False``; rouge_score/tokenize.py):
   lower-case, every run of characters outside ``[a-z0-9]`` becomes a space, split. Unicode
   letters are therefore separators, exactly as there.
2. The LCS length comes from the bit-parallel algorithm of Allison & Dix (1986) in Hyyrö's form
   ("Bit-parallel LCS-length computation revisited", 2004): one Python big integer holds a bit
   per reference token, and each candidate token costs four big-int operations, O(n·m/w) instead
   of rouge-score's O(n·m) Python-level table. Measured on 4,000 vs 1,000 tokens, 2 CPU cores:
   2.8 ms against 1.67 s per pair, ~600x (bench/rouge_l_speed.py).
3. The per-reference match masks are built once per distinct reference in a call (the G
   responses to one problem share their solution).
Precision, recall and F are then computed with rouge-score's exact arithmetic
(rouge_score/scoring.py ``fmeasure``), and either side empty gives 0.0, as there.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from lampo_pl.rewards.inputs import as_text, check_lengths
from lampo_pl.rewards.thinking import reasoning_text

_NON_ALPHANUMERIC_RE = re.compile(r"[^a-z0-9]+")  # rouge_score.tokenize.NON_ALPHANUM_PATTERN


def rouge_tokenize(text: str) -> list[str]:
    """rouge-score's default tokenization (no stemming)."""
    return _NON_ALPHANUMERIC_RE.sub(" ", text.lower()).split()


def match_masks(tokens: Sequence[str]) -> dict[str, int]:
    """For each distinct token, an integer with bit i set where ``tokens[i]`` is that token."""
    masks: dict[str, int] = {}
    for i, token in enumerate(tokens):
        masks[token] = masks.get(token, 0) | (1 << i)
    return masks


def lcs_length(masks: dict[str, int], n_reference: int, candidate: Sequence[str]) -> int:
    """Length of the longest common subsequence of the reference (as `match_masks`) and ``candidate``.

    Hyyrö (2004), Fig. 3: V starts all ones; per candidate token with match mask M,
    U = V & M; V = (V + U) | (V − U). The LCS length is the number of zero bits of V among the
    reference's ``n_reference`` positions. Carries out of the top bit only grow V above those
    positions, which the final mask ignores, so no per-step masking is needed.
    """
    full = (1 << n_reference) - 1
    v = full
    get = masks.get
    for token in candidate:
        mask = get(token)
        if mask is not None:  # no match: U = 0 and V is unchanged
            u = v & mask
            v = (v + u) | (v - u)
    return n_reference - (v & full).bit_count()


def _fmeasure(lcs: int, n_candidate: int, n_reference: int) -> float:
    # rouge_score.rouge_scorer._score_lcs and scoring.fmeasure, operation for operation.
    precision = lcs / n_candidate
    recall = lcs / n_reference
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def rouge_l(candidates: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure of each candidate against its reference, == rouge-score's ``rougeL``.

    Raises:
        ValueError: ``candidates`` and ``references`` differ in length.
    """
    check_lengths(candidates, references, "candidates", "references")
    prepared: dict[str, tuple[dict[str, int], int]] = {}
    scores: list[float] = []
    for candidate, reference in zip(candidates, references, strict=True):
        reference = as_text(reference)
        if reference not in prepared:
            tokens = rouge_tokenize(reference)
            prepared[reference] = (match_masks(tokens), len(tokens))
        masks, n_reference = prepared[reference]
        candidate_tokens = rouge_tokenize(as_text(candidate))
        if not candidate_tokens or not n_reference:
            scores.append(0.0)
            continue
        lcs = lcs_length(masks, n_reference, candidate_tokens)
        scores.append(_fmeasure(lcs, len(candidate_tokens), n_reference))
    return scores


def semantic_density(responses: Sequence[str], solutions: Sequence[str | None]) -> list[float]:
    """ROUGE-L F of each response's reasoning (`thinking.reasoning_text`) against its reference
    solution; 0.0 where the solution is ``None`` (no reference solution, no density signal).

    Raises:
        ValueError: ``responses`` and ``solutions`` differ in length.
    """
    check_lengths(responses, solutions, "responses", "solutions")
    live = [i for i, solution in enumerate(solutions) if solution is not None]
    scores = [0.0] * len(responses)
    values = rouge_l([reasoning_text(as_text(responses[i])) for i in live], [as_text(solutions[i]) for i in live])
    for i, value in zip(live, values, strict=True):
        scores[i] = value
    return scores
