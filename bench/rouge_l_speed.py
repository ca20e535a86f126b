"""ROUGE-L speed: rouge-score's ``RougeScorer(["rougeL"])`` against `lampo_pl.rewards.rouge_l`.

    .venv/bin/python bench/rouge_l_speed.py                      # 4,000 vs 1,000 tokens, 5 pairs
    .venv/bin/python bench/rouge_l_speed.py --candidate-tokens 8000 --pairs 2

Texts are Zipf-distributed words from a fixed vocabulary, with the reference partly copied from
the candidate so the LCS is long, as between a reasoning trace and its reference solution. Both
sides are timed end to end (strings in, F-measure out, tokenization included), one after the
other — never run this beside another job on a 2-core machine. The values are checked to be
identical.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from rouge_score import rouge_scorer

from lampo_pl.rewards import rouge_l


def make_pair(rng: random.Random, candidate_tokens: int, reference_tokens: int, vocabulary: int) -> tuple[str, str]:
    words = [f"word{i}" for i in range(vocabulary)]
    weights = [1.0 / (rank + 1) for rank in range(vocabulary)]
    candidate = rng.choices(words, weights=weights, k=candidate_tokens)
    # Half of the reference is an ordered sample of the candidate, half fresh words.
    copied = sorted(rng.sample(range(candidate_tokens), min(candidate_tokens, reference_tokens // 2)))
    reference = [candidate[i] for i in copied]
    for _ in range(reference_tokens - len(reference)):
        reference.insert(rng.randrange(len(reference) + 1), rng.choices(words, weights=weights)[0])
    return " ".join(candidate), " ".join(reference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidate-tokens", type=int, default=4000, help="tokens per candidate")
    parser.add_argument("--reference-tokens", type=int, default=1000, help="tokens per reference")
    parser.add_argument("--pairs", type=int, default=5, help="number of (candidate, reference) pairs")
    parser.add_argument("--vocabulary", type=int, default=2000, help="distinct words")
    parser.add_argument("--repeats", type=int, default=20, help="timed repetitions of ours (the median is kept)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    pairs = [make_pair(rng, args.candidate_tokens, args.reference_tokens, args.vocabulary) for _ in range(args.pairs)]
    candidates, references = [c for c, _ in pairs], [r for _, r in pairs]

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    start = time.perf_counter()
    expected = [scorer.score(r, c)["rougeL"].fmeasure for c, r in pairs]
    oracle_s = time.perf_counter() - start

    timings = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = rouge_l(candidates, references)
        timings.append(time.perf_counter() - start)
    ours_s = statistics.median(timings)

    assert ours == expected, "rouge_l differs from rouge-score"
    per_pair = 1000 / args.pairs
    print(f"{args.pairs} pairs, {args.candidate_tokens} candidate vs {args.reference_tokens} reference tokens")
    print(f"mean ROUGE-L F       {sum(ours) / len(ours):.4f} (identical to rouge-score)")
    print(f"rouge-score          {oracle_s * per_pair:10.2f} ms/pair")
    print(f"lampo_pl rouge_l     {ours_s * per_pair:10.2f} ms/pair (median of {args.repeats})")
    print(f"speed-up             {oracle_s / ours_s:10.1f}x")


if __name__ == "__main__":
    main()
