r"""Synthetic arithmetic word problems: the embedded default's offline training and evaluation set.

Sized for SmolLM2-135M-Instruct, which solves one-digit sums about half the time and two-digit
sums or differences about a tenth of the time (docs/ENVIRONMENT.md), so that a group of samples
has mixed rewards and RL has a signal to follow. Four levels:

    1  one-digit sum                  "What is 3 + 5?"
    2  two-digit sum or difference    "What is 47 - 23?"
    3  word problem, two operations   "Tom has 12 apples. Tom buys 7 more and then gives 5 to a
                                       friend. How many apples does Tom have now?"
    4  word problem, three steps      "Anna buys 3 bags of marbles with 6 marbles in each bag. ..."

Each reference solution is a few step-by-step sentences ending "The answer is \boxed{N}." and the
answer is the integer N as text (never negative). Generation is deterministic: a
``random.Random`` seeded with the string ``"synthetic:<split>:<seed>"`` (string seeds are hashed
with SHA-512, not salted per process), levels taken in turn so each is equally represented, ids
``synthetic-<split>-<seed>-<i>``. Different splits draw different problems, but level 1 has only
81 distinct problems, so train and test overlap there by construction.

Sample (level 3):
    prompt:   "Tom has 12 apples. Tom buys 7 more and then gives 5 to a friend. How many apples
               does Tom have now?"
    solution: "Tom starts with 12 apples. After buying 7 more, Tom has 12 + 7 = 19 apples. After
               giving away 5, Tom has 19 - 5 = 14 apples. The answer is \boxed{14}."
    answer:   "14"
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from lampo_pl.data.record import Problem

LEVELS = (1, 2, 3, 4)
DEFAULT_SIZE = 1000  # problems per split when `load_problems("synthetic")` gets no limit
NAMES = ("Tom", "Anna", "Ben", "Maria", "Sam", "Lily", "Omar", "Mia")
ITEMS = ("apples", "marbles", "stickers", "pencils", "cookies", "books", "stamps", "shells")
Drawn = tuple[str, str, int]  # (prompt, step-by-step solution without the final sentence, answer)


def _level1(rng: random.Random) -> Drawn:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    prompt = rng.choice(("What is {a} + {b}?", "Compute {a} + {b}.", "What is the sum of {a} and {b}?"))
    return prompt.format(a=a, b=b), f"We add {a} and {b}: {a} + {b} = {a + b}.", a + b


def _level2(rng: random.Random) -> Drawn:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    op = rng.choice("+-")
    if op == "-":
        a, b = max(a, b), min(a, b)
    tens, ones = b - b % 10, b % 10
    step = a + tens if op == "+" else a - tens
    answer = a + b if op == "+" else a - b
    verb = "add" if op == "+" else "subtract"
    solution = f"We {verb} the tens first: {a} {op} {tens} = {step}."
    if ones:
        solution += f" Then we {verb} the ones: {step} {op} {ones} = {answer}."
    prompt = rng.choice(("What is {a} {op} {b}?", "Compute {a} {op} {b}."))
    return prompt.format(a=a, op=op, b=b), solution, answer


def _level3(rng: random.Random) -> Drawn:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(5, 20), rng.randint(2, 12)
    if rng.random() < 0.5:
        c = rng.randint(1, a + b)
        prompt = f"{name} has {a} {item}. {name} buys {b} more and then gives {c} to a friend."
        steps = f"After buying {b} more, {name} has {a} + {b} = {a + b} {item}. After giving away {c}, "
        steps += f"{name} has {a + b} - {c} = {a + b - c} {item}."
        answer = a + b - c
    else:
        b, c = rng.randint(1, a), rng.randint(2, 12)
        prompt = f"{name} had {a} {item}. {name} lost {b} of them and then found {c} more."
        steps = f"After losing {b}, {name} has {a} - {b} = {a - b} {item}. After finding {c} more, "
        steps += f"{name} has {a - b} + {c} = {a - b + c} {item}."
        answer = a - b + c
    question = f"{prompt} How many {item} does {name} have now?"
    return question, f"{name} starts with {a} {item}. {steps}", answer


def _level4(rng: random.Random) -> Drawn:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, d = rng.randint(2, 6), rng.randint(2, 9), rng.randint(2, 15)
    c = rng.randint(1, a * b)
    prompt = (
        f"{name} buys {a} bags of {item} with {b} {item} in each bag. {name} gives away {c} {item} "
        f"and then finds {d} more. How many {item} does {name} have now?"
    )
    solution = (
        f"{name} buys {a} * {b} = {a * b} {item}. After giving away {c}, {name} has "
        f"{a * b} - {c} = {a * b - c} {item}. After finding {d} more, {name} has "
        f"{a * b - c} + {d} = {a * b - c + d} {item}."
    )
    return prompt, solution, a * b - c + d


DRAW: dict[int, Callable[[random.Random], Drawn]] = {1: _level1, 2: _level2, 3: _level3, 4: _level4}


def generate_synthetic(n: int, *, levels: Sequence[int] = LEVELS, seed: int = 0, split: str = "train") -> list[Problem]:
    """``n`` problems cycling through ``levels``; the same arguments give the same problems."""
    if n < 1 or not levels or not set(levels) <= set(LEVELS):
        raise ValueError(f"need n >= 1 and levels among {LEVELS}, got n={n}, levels={list(levels)}")
    rng = random.Random(f"synthetic:{split}:{seed}")
    problems = []
    for i in range(n):
        level = levels[i % len(levels)]
        prompt, steps, answer = DRAW[level](rng)
        problems.append(
            Problem(
                id=f"synthetic-{split}-{seed}-{i}",
                prompt=prompt,
                answer=str(answer),
                solution=f"{steps} The answer is \\boxed{{{answer}}}.",
                metadata={"source": "synthetic", "level": level, "split": split},
            )
        )
    return problems

