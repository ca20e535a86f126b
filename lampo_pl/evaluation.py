"""Benchmark evaluation: k samples per problem from any ``Sampler``; avg@k, pass@k, maj@k, truncation.

Evaluation is a plain function of (sampler, problems, prompts, k, sampling settings), with no
Lightning and no model in sight: ``evaluate`` below. The ``BenchmarkEvaluation`` callback (fit,
``lampo validate``, ``lampo test``) calls its two halves per batch, ``sample_and_grade`` then
``summarise``; a script can call ``evaluate`` with a vLLM sampler (``lampo_pl/sampler.py``).

The numbers (docs/evaluation.md):
- avg@k: mean correctness over all k samples of all problems (lighteval's ``pass@1`` with n = k).
- pass@j: the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on
  Code", eq. 1), ``1 − C(n−c, j) / C(n, j)``, averaged over problems, for j = 1, 2, 4, … and k.
- maj@k: a problem counts when the most frequent final answer of its k samples is correct. Math
  answers fall into math-verify equivalence classes (``1/2`` and ``0.5`` vote together), choice
  answers by letter; samples without an answer do not vote; ties go to the answer seen first
  (a ``max`` over counts in insertion order, as common maj@k implementations do).
- truncated: the fraction of samples that hit ``max_new_tokens`` without an end of sequence. A
  reasoning model cut inside ``<think>`` has no answer and scores 0: a high fraction means the
  budget, not the model, sets the score.

Sampling defaults per benchmark (``PUBLISHED``) follow open-r1's README (temperature 0.6, top-p 0.95,
32,768 new tokens for every task, the settings under which it reproduces DeepSeek-R1's numbers)
and lighteval's task files (``generation_size`` 32,768 for ``math_500`` and ``gpqa:diamond``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from lampo_pl.data.record import Problem
from lampo_pl.rewards import grade_choice, grade_math, shared_verifier
from lampo_pl.rollout import SamplingParams
from lampo_pl.sampler import Completion, Sampler

BREAKDOWN_KEYS = ("subject", "level")  # MATH-500's metadata; other sets simply have neither


@dataclass(frozen=True)
class BenchmarkProtocol:
    """How a benchmark is sampled when the evaluation's settings leave it open (null)."""

    max_new_tokens: int
    temperature: float = 0.6
    top_p: float = 0.95
    source: str = "open-r1 README (lighteval generation_parameters)"


REASONING = BenchmarkProtocol(32768)  # open-r1: max_new_tokens 32768, temperature 0.6, top_p 0.95 for every task
PUBLISHED: dict[str, BenchmarkProtocol] = {
    "math500": BenchmarkProtocol(32768, source="lighteval tasks/math_500.py generation_size; open-r1 README"),
    "gpqa_diamond": BenchmarkProtocol(32768, source="lighteval tasks/gpqa.py gpqa:diamond; open-r1 README"),
    "aime24": REASONING,  # lighteval's aime24 has generation_size None: the model length, 32768 in open-r1
    "aime25": REASONING,  # lighteval's own aime25 task stops at 10,000; open-r1's 32,768 overrides it
    "champ": REASONING,
    "math_train": REASONING,
    "gsm8k": REASONING,  # lighteval's few-shot gsm8k (256 tokens) is a base-model protocol, not a reasoning one
    # lampo-pl's own offline set: arithmetic whose worked answers take well under 100 tokens.
    "synthetic": BenchmarkProtocol(512, source="lampo-pl (short arithmetic; no published protocol)"),
}


def protocol(name: str) -> BenchmarkProtocol:
    """The published sampling protocol of a benchmark (``REASONING`` for names without an entry)."""
    return PUBLISHED.get(name, REASONING)


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


def majority_vote(answers: Sequence[str | None], same: Callable[[str, str], bool]) -> int | None:
    """Index of the first member of the largest class of equal answers (``None``: no sample answered).

    ``same(a, b)`` decides equality between an answer and a class's first member; ``None`` answers do
    not vote. Ties go to the class that appeared first.
    """
    representatives: list[str] = []  # each class's first answer
    members: list[list[int]] = []  # each class's indices into answers
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        home = next((c for c, rep in enumerate(representatives) if answer == rep or same(answer, rep)), None)
        if home is None:
            representatives.append(answer)
            members.append([i])
        else:
            members[home].append(i)
    if not members:
        return None
    return max(members, key=len)[0]  # max keeps the first of equal lengths


@dataclass
class Graded:
    """Graded samples of P problems, k each (lists are per problem, in problem order).

    Attributes:
        correct: [P][k] 1.0 where the sample's final answer is right.
        truncated: [P][k] True where the sample hit ``max_new_tokens`` without an end of sequence.
        majority: [P] 1.0 where the majority answer (``majority_vote``) is right.
        grader_failures: Samples the grader could not judge (math-verify timed out or failed) and
            scored 0: not the model's doing, so a score with any is reported with their count.
        responses: [P][k] each sample as ``{"text", "extracted", "grade"}``: what was graded, the answer the
            grader read (``None``: none) and why it scored what it did (``MathGrades.status``).
    """

    correct: list[list[float]] = field(default_factory=list)
    truncated: list[list[bool]] = field(default_factory=list)
    majority: list[float] = field(default_factory=list)
    grader_failures: int = 0
    responses: list[list[dict[str, str | None]]] = field(default_factory=list)

    def extend(self, other: Graded) -> None:
        """Append another batch's problems."""
        self.correct += other.correct
        self.truncated += other.truncated
        self.majority += other.majority
        self.grader_failures += other.grader_failures
        self.responses += other.responses


def grade(problems: Sequence[Problem], completions: Sequence[Sequence[Completion]], *,
          timeout_s: float = 5.0) -> Graded:
    """Correctness of every sample (the training reward's graders) and each problem's majority answer."""
    if len(completions) != len(problems):
        raise ValueError(f"sampler returned {len(completions)} groups for {len(problems)} problems")
    out = Graded()
    verifier = shared_verifier()

    def equivalent(a: str, b: str) -> bool:  # math-verify in its time-bounded worker (rewards/verifier.py)
        return verifier.verify([(a, b)], timeout_s)[0] == "correct"

    for problem, group in zip(problems, completions, strict=True):
        texts = [c.text for c in group]
        if problem.kind == "choice":
            choices = grade_choice(texts, [problem.answer] * len(texts))
            scores, answers, same = choices.scores, choices.extracted, str.__eq__
            read = answers
            status = ["no_answer" if a is None else "correct" if s else "wrong" for a, s in zip(answers, scores,
                                                                                             strict=True)]
        else:
            grades = grade_math(texts, [problem.answer] * len(texts), timeout_s=timeout_s)
            scores, same = grades.scores, equivalent
            read, status = grades.extracted, list(grades.status)
            out.grader_failures += sum(status in ("timeout", "error") for status in grades.status)
            # Only answers math-verify could read vote (no answer, echoes, parse failures do not).
            answers = [v if s in ("correct", "wrong") else None for v, s in zip(grades.extracted, grades.status,
                                                                                 strict=True)]
        winner = majority_vote(answers, same)
        out.correct.append(list(scores))
        out.truncated.append([c.truncated for c in group])
        out.majority.append(0.0 if winner is None else scores[winner])
        out.responses.append([{"text": t, "extracted": a, "grade": g} for t, a, g in zip(texts, read, status,
                                                                                       strict=True)])
    return out


def sample_and_grade(sampler: Sampler, problems: Sequence[Problem], prompts: list[str], k: int,
                     params: SamplingParams) -> Graded:
    """One batch: ``k`` samples per rendered prompt from ``sampler``, graded."""
    if len(prompts) != len(problems):
        raise ValueError(f"{len(prompts)} prompts for {len(problems)} problems")
    completions = sampler(prompts, k, params)
    if any(len(group) != k for group in completions):
        raise ValueError(f"sampler returned groups of sizes {[len(g) for g in completions]}, expected k={k} each")
    return grade(problems, completions)


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
        maj_at_k: Fraction of problems whose majority answer is right.
        truncated: Fraction of samples cut at ``max_new_tokens``.
        breakdown: ``{"subject=Algebra": Bucket, "level=3": Bucket, ...}`` where problems carry such metadata.
        per_problem: Correct samples per problem id.
        grader_failures: Samples scored 0 because the grader timed out or failed (``Graded``); 0 is the
            norm, anything else means the score is a lower bound (a slow machine, a pathological answer).
    """

    name: str
    num_problems: int
    k: int
    num_samples: int
    avg_at_k: float
    pass_at: dict[int, float]
    maj_at_k: float = float("nan")
    truncated: float = float("nan")
    breakdown: dict[str, Bucket] = field(default_factory=dict)
    per_problem: dict[str, int] = field(default_factory=dict)
    grader_failures: int = 0

    @property
    def pass_at_k(self) -> float:
        return self.pass_at[self.k]


def _mean_pass(hits: Sequence[int], k: int, j: int) -> float:
    return sum(pass_at_k(k, h, j) for h in hits) / len(hits) if hits else float("nan")


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summarise(name: str, problems: Sequence[Problem], graded: Graded, k: int) -> EvalResult:
    """avg@k, pass@j, maj@k, the truncated fraction and a subject/level breakdown."""
    if len(graded.correct) != len(problems) or any(len(row) != k for row in graded.correct):
        raise ValueError(f"grades of shape {[len(r) for r in graded.correct]} for {len(problems)} problems × k={k}")
    c = torch.tensor(graded.correct, dtype=torch.float64).view(len(problems), k)  # [P, k]
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
        num_samples=len(problems) * k,
        avg_at_k=float(c.mean()) if problems else float("nan"),
        pass_at={j: _mean_pass(hits, k, j) for j in pass_ks(k)},
        maj_at_k=_mean(graded.majority),
        truncated=_mean([float(t) for row in graded.truncated for t in row]),
        breakdown=breakdown,
        per_problem={p.id: h for p, h in zip(problems, hits, strict=True)},
        grader_failures=graded.grader_failures,
    )


def evaluate(
    sampler: Sampler,
    problems: Sequence[Problem],
    prompts: Sequence[str],
    k: int,
    params: SamplingParams,
    *,
    name: str = "eval",
    batch_size: int | None = None,
    progress: bool = False,
) -> EvalResult:
    """Sample ``k`` responses per problem with ``sampler`` and grade them.

    Args:
        sampler: Any ``Sampler`` (``NativeSampler``, a vLLM engine, a scripted stand-in).
        problems: The problems.
        prompts: Each problem's rendered prompt (chat template applied), in the same order.
        k: Samples per problem.
        params: Sampling settings of the evaluation (temperature, top-p, max_new_tokens, ...).
        name: Benchmark name (for the result and the progress bar).
        batch_size: Problems per sampler call (each sampled k times); null: all in one call.
        progress: Show a progress bar (problems done).
    """
    if k < 1 or (batch_size is not None and batch_size < 1):
        raise ValueError(f"k ({k}) and batch_size ({batch_size}) must be >= 1")
    step = batch_size or max(len(problems), 1)
    graded = Graded()
    with tqdm(total=len(problems), desc=f"eval {name}", unit="problem", disable=not progress, leave=False) as bar:
        for i in range(0, len(problems), step):
            graded.extend(sample_and_grade(sampler, problems[i : i + step], list(prompts[i : i + step]), k, params))
            bar.update(len(problems[i : i + step]))
    return summarise(name, problems, graded, k)


def result_metrics(results: list[EvalResult], prefix: str = "eval") -> dict[str, float]:
    """Scalars for the loggers: ``eval/<set>/avg@k``, ``pass@j``, ``maj@k``, ``truncated``, ``<bucket>/avg@k``."""
    metrics: dict[str, float] = {}
    for r in results:
        metrics[f"{prefix}/{r.name}/avg@{r.k}"] = r.avg_at_k
        metrics |= {f"{prefix}/{r.name}/pass@{j}": v for j, v in r.pass_at.items()}
        metrics[f"{prefix}/{r.name}/maj@{r.k}"] = r.maj_at_k
        metrics[f"{prefix}/{r.name}/truncated"] = r.truncated
        metrics[f"{prefix}/{r.name}/grader_failures"] = float(r.grader_failures)
        metrics |= {f"{prefix}/{r.name}/{b}/avg@{r.k}": bucket.avg_at_k for b, bucket in r.breakdown.items()}
    return metrics


def format_table(results: Sequence[EvalResult]) -> str:
    """A fixed-width table: one row per benchmark, then its breakdown rows indented."""
    lines = [f"{'benchmark':<24} {'problems':>8} {'samples':>8} {'avg@k':>7} {'pass@k':>7} {'maj@k':>7} {'trunc':>7}"]
    for r in results:
        lines.append(f"{r.name:<24} {r.num_problems:>8} {r.num_samples:>8} {r.avg_at_k:>7.3f} {r.pass_at_k:>7.3f} "
                     f"{r.maj_at_k:>7.3f} {r.truncated:>7.3f}")
        for bucket, b in r.breakdown.items():
            label = f"  {bucket}"[:24]
            lines.append(
                f"{label:<24} {b.num_problems:>8} {b.num_problems * r.k:>8} {b.avg_at_k:>7.3f} {b.pass_at_k:>7.3f}"
            )
    if failures := {r.name: r.grader_failures for r in results if r.grader_failures}:
        lines.append(f"grader failures (scored 0, not the model's doing): {failures}")
    return "\n".join(lines)
