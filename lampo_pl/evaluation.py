"""Benchmark evaluation: k samples per problem, avg@k and the unbiased pass@k.

Conventions of reasoning-RL papers (docs/ALGORITHMS.md, "Evaluation conventions"): sampling
temperature 0.6, top-p 0.95; avg@k is the mean accuracy over all k samples of all problems;
pass@j is the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained
on Code", eq. 1) averaged over problems: ``1 − C(n−c, j) / C(n, j)`` for n samples with c correct.
It is reported for j = 1, 2, 4, ... up to k and for k itself (pass@1 equals avg@k).

Nothing here knows about Lightning or models: ``evaluate`` takes any ``generate(problems, k)``
(the policy, the base model, a saved adapter, or a scripted stand-in in tests).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from lampo_pl.data.record import Problem
from lampo_pl.rewards import RewardSpec, score_responses

BREAKDOWN_KEYS = ("subject", "level")  # MATH-500's metadata; other sets simply have neither
Generate = Callable[[list[Problem], int], list[str]]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples of which ``c`` are correct (k <= n)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # 1 − Π_{i=n−c+1}^{n} (1 − k/i): the numerically stable product form of Chen et al.
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_ks(k: int) -> list[int]:
    """The j of the reported pass@j: powers of two below k, and k (``pass_ks(6) == [1, 2, 4, 6]``)."""
    ks, j = [], 1
    while j < k:
        ks.append(j)
        j *= 2
    return [*ks, k]


@dataclass(frozen=True)
class Bucket:
    """The numbers of one slice of a benchmark (e.g. MATH-500's ``subject=Algebra``)."""

    num_problems: int
    avg_at_k: float
    pass_at_k: float


@dataclass(frozen=True)
class EvalResult:
    """One benchmark's numbers.

    Attributes:
        name: Benchmark name.
        num_problems: Problems evaluated.
        k: Samples per problem.
        num_samples: Responses graded (``num_problems · k``).
        avg_at_k: Mean accuracy over all samples.
        pass_at: Mean unbiased pass@j over problems, for each j of ``pass_ks(k)``.
        breakdown: ``{"subject=Algebra": Bucket, "level=3": Bucket, ...}`` where problems carry such metadata.
        per_problem: Correct samples per problem id.
    """

    name: str
    num_problems: int
    k: int
    num_samples: int
    avg_at_k: float
    pass_at: dict[int, float]
    breakdown: dict[str, Bucket] = field(default_factory=dict)
    per_problem: dict[str, int] = field(default_factory=dict)

    @property
    def pass_at_k(self) -> float:
        return self.pass_at[self.k]


def _mean_pass(hits: Sequence[int], k: int, j: int) -> float:
    return sum(pass_at_k(k, h, j) for h in hits) / len(hits) if hits else float("nan")


def summarise(name: str, problems: Sequence[Problem], correct: Sequence[float], k: int) -> EvalResult:
    """avg@k, pass@j and a subject/level breakdown from ``len(problems)·k`` 0/1 scores (groups contiguous)."""
    if len(correct) != len(problems) * k:
        raise ValueError(f"{len(correct)} scores for {len(problems)} problems × k={k}")
    c = torch.tensor(correct, dtype=torch.float64).view(len(problems), k)  # [P, k]
    hits = [int(x) for x in c.sum(dim=1).round().tolist()]  # [P]
    groups: dict[str, list[int]] = defaultdict(list)  # bucket -> problem indices
    for i, problem in enumerate(problems):
        for key in BREAKDOWN_KEYS:
            if problem.metadata.get(key) is not None:
                groups[f"{key}={problem.metadata[key]}"].append(i)
    breakdown = {
        b: Bucket(len(idx), float(c[idx].mean()), _mean_pass([hits[i] for i in idx], k, k))
        for b, idx in sorted(groups.items())
    }
    return EvalResult(
        name=name,
        num_problems=len(problems),
        k=k,
        num_samples=len(correct),
        avg_at_k=float(c.mean()) if problems else float("nan"),
        pass_at={j: _mean_pass(hits, k, j) for j in pass_ks(k)},
        breakdown=breakdown,
        per_problem={p.id: h for p, h in zip(problems, hits, strict=True)},
    )


def evaluate(
    name: str,
    problems: Sequence[Problem],
    generate: Generate,
    *,
    k: int = 1,
    batch_size: int = 16,
    thinking: bool = False,
    progress: bool = False,
) -> EvalResult:
    """Sample ``k`` responses per problem with ``generate(problems, k)`` and grade their correctness.

    Args:
        name: Benchmark name (for the result and the progress bar).
        problems: The problems.
        generate: Returns ``len(problems)·k`` texts, each problem's k contiguous.
        k: Samples per problem.
        batch_size: Problems per ``generate`` call (each sampled k times).
        thinking: Responses come from a thinking-mode template: grade the text after the reasoning block.
        progress: Show a progress bar (problems done).
    """
    if k < 1 or batch_size < 1:
        raise ValueError(f"k ({k}) and batch_size ({batch_size}) must be >= 1")
    correct: list[float] = []
    with tqdm(total=len(problems), desc=f"eval {name}", unit="problem", disable=not progress, leave=False) as bar:
        for i in range(0, len(problems), batch_size):
            chunk = list(problems[i : i + batch_size])
            texts = generate(chunk, k)
            if len(texts) != len(chunk) * k:
                raise ValueError(f"generator returned {len(texts)} texts for {len(chunk)} problems × k={k}")
            repeated = [q for q in chunk for _ in range(k)]
            scored = score_responses(texts, repeated, [RewardSpec("correctness", 1.0)], thinking=thinking)
            correct.extend(scored.correct)
            bar.update(len(chunk))
    return summarise(name, problems, correct, k)


def format_table(results: Sequence[EvalResult]) -> str:
    """A fixed-width table: one row per benchmark, then its breakdown rows indented."""
    lines = [f"{'benchmark':<24} {'problems':>8} {'samples':>8} {'avg@k':>7} {'pass@k':>7}"]
    for r in results:
        lines.append(f"{r.name:<24} {r.num_problems:>8} {r.num_samples:>8} {r.avg_at_k:>7.3f} {r.pass_at_k:>7.3f}")
        for bucket, b in r.breakdown.items():
            label = f"  {bucket}"[:24]
            lines.append(
                f"{label:<24} {b.num_problems:>8} {b.num_problems * r.k:>8} {b.avg_at_k:>7.3f} {b.pass_at_k:>7.3f}"
            )
    return "\n".join(lines)
