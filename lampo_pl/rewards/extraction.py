"""Final-answer extraction for math responses, done before math-verify sees anything.

math-verify's own `parse` searches the whole response and evaluates whatever it finds, so a
response that restates the question ("the answer to 21 - 11 is ...", "7 + 7") is graded correct:
11–20 of ~50–70 "correct" zero-shot SmolLM2 answers were such echoes (ENVIRONMENT.md, "Pitfalls
seen"), and a policy would learn them. Here we extract one final value ourselves and hand only
that to math-verify. Rules, applied to the answer part of the response (after the last
``</think>``; nothing when the reasoning block was never closed); the first rule that yields a
value wins:

1. **Boxed**: the last ``\\boxed{...}`` or ``\\fbox{...}`` (`last_box`), nested braces balanced
   (escaped ``\\{ \\}`` ignored). When that last box is unclosed (a response cut while writing
   its answer) there is **no answer**: no earlier box and no fallback rule stands in for it, so
   ``\\boxed{12`` scores 0 (issue 12 item 4).
2. **Anchored statement**, anchors searched from the end of the text: "final answer ...",
   "the / my / our / correct answer ...", "the / final result ...", "Answer:", and GSM8K's "####".
   The value is what
   follows the first *is*, *are*, *equals*, ``:`` or ``=`` after the anchor ("####" needs none,
   nor does a "**Final Answer**" heading followed by a new line or by math), up to the end of
   that sentence, or the math environment (``$...$``, ``\\[...\\]``) that follows; then a
   trailing clause (", which ...", " because ...") is cut and only what follows the last
   remaining *is* is kept. So "the answer to 21 - 11 is 10" gives "10", never "21 - 11", and
   "The answer to 21 - 11." gives nothing. ("Therefore the result is 7." gives "7", issue 25 item 9.)
3. **Final equation**: the right-hand side of the last ``=`` (not ``<=``, ``>=``, ``!=``, ``==``)
   that yields a value, up to the end of its sentence, math environment or trailing clause: that
   side when it reads as math ("6 + 9 = 15, which is the sum of 6 and 9" gives "15",
   "$x = \\frac{1}{2}$" gives "\\frac{1}{2}"), else the number it starts with ("We get x = 12
   after dividing by 3." gives "12", where a last-number rule reads 3). An equation is graded on
   what it states: "10 + 20 = 20." gives "20" (its arithmetic is wrong, its stated result is what
   a reader takes as the answer, and what every grader below reads too).
4. **Bare answer**: the whole answer part is one short line that reads as math, not prose
   ("14", "$\\frac12$", "7 + 7").

There is deliberately no "last number in the text" rule: it grades echoes of the question and
intermediate values (ENVIRONMENT.md, "Pitfalls seen"). The order follows the published graders, which all put a box
first and an answer statement next: Qwen2.5-Math ``evaluation/parser.py`` ``extract_answer``
(``\\boxed``, then "he answer is", then "final answer is", then the last number);
lm-evaluation-harness ``minerva_math`` ("Final Answer: The final answer is ... I hope it is
correct.") and ``gsm8k`` (strict "#### N", flexible: the last number); OpenAI simple-evals
``math_eval.py`` (``(?i)Answer\\s*:\\s*([^\\n]+)``); math-verify 0.9 ``parser.py``
``make_expr_extraction_regexes`` ("final answer is" priority 0/50, "answer ... = value" after the
last ``=`` 100/200, then any expression 300). Rule 3 is that last-``=`` rule of math-verify's,
without its "answer" anchor, which lampo-pl's responses rarely write.

Then the **echo rule** (`is_echo`): a value whose last right-hand side is unevaluated arithmetic
on plain numbers ("7 + 7", "21 - 11", "3 \\cdot 4", "1/2 + 1/3") restates a computation instead
of stating its result, and is graded 0 — unless the reference answer is itself written that way.
Fractions ("3/4"), powers ("2^{10}") and scientific notation ("3 \\times 10^{8}") are final forms.
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

from lampo_pl.rewards.thinking import split_thinking

ExtractionSource = Literal["boxed", "anchor", "equation", "bare"]

# Bounds that keep extraction linear on adversarial (huge or repetitive) responses.
_MAX_ANCHOR_TRIES = 16
_ANCHOR_WINDOW = 600
_MAX_BARE_CHARS = 64

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BOX_OPEN_RE = re.compile(r"\s*\{")
_BRACE_TOKEN_RE = re.compile(r"\\.|[{}]", re.DOTALL)
_BOX_TOKEN_RE = re.compile(r"\s+([^\s$]+)")
_ANCHOR_RE = re.compile(
    r"(?P<final>\bfinal\s+answer\b)"
    r"|\b(?:the|my|our|correct)\s+answer\b"
    r"|\b(?:the|final)\s+result\b"
    r"|\banswer\b(?=[^\S\n]*(?:\*\*)?[^\S\n]*:)"
    r"|(?P<hash>####)",
    re.IGNORECASE,
)
# Text between an anchor and its separator stays inside one sentence; a "." followed by a digit
# is a decimal point, not a full stop ("the answer to 2.5 + 1 is 3.5").
_SEPARATOR_RE = re.compile(r"(?:[^.\n:=?!]|\.(?=\d)){0,100}?(?:\b(?:is|are|equals)\b|:|=)", re.IGNORECASE)
# "**Final Answer**" as a heading: the value starts on the next line or in a math environment.
_HEADING_RE = re.compile(r"[^\S\n]*(?:\*\*)?[^\S\n]*(?:\n|\$|\\\[|\\\()")
_LEAD_IN_RE = re.compile(r"^[\s*]*(?:(?:as\s+follows|the\s+following)[\s*]*:?)?[\s*]*", re.IGNORECASE)
_MATH_ENV_RE = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\$([^$\n]+?)\$|\\\((.+?)\\\)", re.DOTALL)
_SENTENCE_END_RE = re.compile(r"\n|[.?!](?=\s|$)")
_CLAUSE_RE = re.compile(
    r",?\s+(?:which|because|since|as|so|where|hence|thus|therefore|and\s+(?:so|thus|hence))\b",
    re.IGNORECASE,
)
_LAST_IS_RE = re.compile(r".*\s(?:is|equals)\s", re.IGNORECASE | re.DOTALL)
_LATEX_COMMAND_RE = re.compile(r"\\[A-Za-z]+")
# Rule 3: an equals sign of an equation (not <=, >=, !=, :=, ==); its right side ends like a sentence or
# at a math delimiter; a currency sign in front of the number is dropped.
_EQUALS_RE = re.compile(r"(?<![<>!=:])=(?!=)")
_RHS_END_RE = re.compile(r"\n|[.?!;](?=\s|$)|(?<!\\)\$|\\\]|\\\)")
_CURRENCY_RE = re.compile(r"^\s*\\?\$(?=\s*-?\d)")
_LEADING_NUMBER_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,])|-?\d+(?:\.\d+)?")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_PROSE_RE = re.compile(r"[A-Za-z]{3,}")

# Echo rule: plain numbers joined by arithmetic operators, after LaTeX operators are rewritten.
_ECHO_REWRITES = (
    ("\\left", ""),
    ("\\right", ""),
    ("\\cdot", "*"),
    ("\\times", "*"),
    ("\\div", "/"),
    ("×", "*"),
    ("·", "*"),
    ("÷", "/"),
    ("−", "-"),
    ("{", "("),
    ("}", ")"),
    ("\\,", ""),
)
_NUMBER = r"\d+(?:\.\d+)?"
_OPERAND = rf"\(*-?{_NUMBER}\)*"
_ARITHMETIC_RE = re.compile(rf"-?{_OPERAND}(?:[-+*/^]{_OPERAND})+")
_BINARY_OP_RE = re.compile(r"[+*]|(?<=[\d)])-")
_SCIENTIFIC_RE = re.compile(rf"-?{_NUMBER}\*10\^\(?-?\d+\)?")


class MathExtraction(NamedTuple):
    """The final value stated by a response, and which rule found it (both ``None``: no answer)."""

    value: str | None
    source: ExtractionSource | None


class Box(NamedTuple):
    """The last box command of a text: its content and where it lies.

    Attributes:
        content: What the box holds, stripped; ``None`` when the box is unclosed (truncated).
        start: Index of the box command's backslash.
        end: Index just past the closing brace (the text's end when unclosed).
    """

    content: str | None
    start: int
    end: int


def last_box(text: str) -> Box | None:
    """The last ``\\boxed`` / ``\\fbox`` of ``text``; ``None`` when there is none.

    The rule of the MATH dataset's ``last_boxed_only_string`` (Hendrycks et al. 2021), which
    verl's ``utils/reward_score/math.py`` and lighteval keep: only the LAST box command counts;
    braces are matched (escaped ``\\{``/``\\}`` do not count); ``\\boxed 5`` (no braces) holds the
    token up to the next space or ``$``; a box that never closes holds nothing (``content=None``).
    One routine for reference solutions (``data/math_train.py``) and for graded responses.
    """
    commands = list(_BOX_RE.finditer(text))
    if not commands:
        return None
    match = commands[-1]
    opened = _BOX_OPEN_RE.match(text, match.end())
    if opened is not None:
        depth = 1
        for token in _BRACE_TOKEN_RE.finditer(text, opened.end()):
            depth += {"{": 1, "}": -1}.get(token.group(), 0)
            if depth == 0:
                return Box(text[opened.end() : token.start()].strip(), match.start(), token.end())
        return Box(None, match.start(), len(text))
    bare = _BOX_TOKEN_RE.match(text, match.end())
    if bare is not None:
        return Box(bare.group(1), match.start(), bare.end())
    return Box(None, match.start(), len(text))


def last_boxed(text: str) -> str | None:
    """Content of the last box of ``text`` (`last_box`); ``None`` when there is none or it is unclosed."""
    box = last_box(text)
    return None if box is None else box.content


def extract_math_answer(response: str) -> MathExtraction:
    """The final value a response states (module docstring, rules 1–3)."""
    answer_part = split_thinking(response).answer
    box = last_box(answer_part)
    if box is not None:  # an unclosed or empty last box is no answer: no fallback stands in for it
        value = _clean(box.content or "")
        return MathExtraction(value, "boxed") if value else MathExtraction(None, None)
    anchored = _anchored_value(answer_part)
    if anchored:
        return MathExtraction(anchored, "anchor")
    equation = _equation_value(answer_part)
    if equation:
        return MathExtraction(equation, "equation")
    bare = _bare_value(answer_part)
    if bare:
        return MathExtraction(bare, "bare")
    return MathExtraction(None, None)


def _anchored_value(text: str) -> str | None:
    anchors = list(_ANCHOR_RE.finditer(text))
    for anchor in reversed(anchors[-_MAX_ANCHOR_TRIES:]):
        rest = text[anchor.end() : anchor.end() + _ANCHOR_WINDOW]
        separator = _SEPARATOR_RE.match(rest)
        if separator is not None:
            rest = rest[separator.end() :]
        elif not (anchor.group("hash") or (anchor.group("final") and _HEADING_RE.match(rest))):
            continue
        value = _value_after_separator(rest)
        if value:
            return value
    return None


def _value_after_separator(text: str) -> str | None:
    text = text[_LEAD_IN_RE.match(text).end() :]  # "is as follows:\n\n$$14$$", "Answer:\n 14"
    env = _MATH_ENV_RE.match(text)
    if env is not None:
        return _clean(next(group for group in env.groups() if group is not None))
    sentence = _SENTENCE_END_RE.split(text, maxsplit=1)[0]
    sentence = _CLAUSE_RE.split(sentence, maxsplit=1)[0]
    last_is = _LAST_IS_RE.match(sentence)
    if last_is is not None:
        sentence = sentence[last_is.end() :]
    return _clean(sentence)


def _equation_value(text: str) -> str | None:
    """Rule 3: the right-hand side of the last equation that yields a value."""
    signs = list(_EQUALS_RE.finditer(text))
    for sign in reversed(signs[-_MAX_ANCHOR_TRIES:]):
        rhs = _CURRENCY_RE.sub("", text[sign.end() : sign.end() + _ANCHOR_WINDOW])
        rhs = _RHS_END_RE.split(rhs, maxsplit=1)[0]
        value = _clean(_CLAUSE_RE.split(rhs, maxsplit=1)[0])
        if value and _reads_as_math(value):
            return value.replace(",", "") if _THOUSANDS_RE.fullmatch(value) else value
        number = _LEADING_NUMBER_RE.match(value)  # "12 after dividing by 3", "17 apples"
        if number is not None:
            return number.group().replace(",", "")
    return None


def _reads_as_math(value: str) -> bool:
    """Short, one line, a digit or a LaTeX command, and no prose word (LaTeX command names aside)."""
    if len(value) > _MAX_BARE_CHARS or "\n" in value:
        return False
    return not _PROSE_RE.search(_LATEX_COMMAND_RE.sub(" ", value)) and re.search(r"[\d\\]", value) is not None


def _bare_value(text: str) -> str | None:
    value = _clean(text)
    return value if value and _reads_as_math(value) else None


def _clean(value: str) -> str:
    """Strip markdown emphasis, math delimiters and trailing punctuation around a value."""
    value = value.strip().strip("*").strip()
    for opener, closer in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")):
        if value.startswith(opener) and value.endswith(closer) and len(value) >= len(opener) + len(closer):
            value = value[len(opener) : len(value) - len(closer)].strip()
    return value.rstrip(".,;:").strip()


def is_unevaluated_arithmetic(value: str) -> bool:
    """Whether the last right-hand side of ``value`` is arithmetic on plain numbers, not a result."""
    rhs = value.rsplit("=", 1)[-1]
    for old, new in _ECHO_REWRITES:
        rhs = rhs.replace(old, new)
    rhs = "".join(rhs.split()).strip("$")
    if _ARITHMETIC_RE.fullmatch(rhs) is None or _SCIENTIFIC_RE.fullmatch(rhs) is not None:
        return False
    return _BINARY_OP_RE.search(rhs) is not None


def is_echo(value: str, reference: str) -> bool:
    """The echo rule (module docstring): unevaluated arithmetic is wrong unless the reference is too."""
    return is_unevaluated_arithmetic(value) and not is_unevaluated_arithmetic(reference)
