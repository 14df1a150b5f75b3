"""Accuracy, part 1: find the final answer and try the cheap relaxed-match rules.

The final answer is what follows `</think>`: an answer written only inside the thinking
does not count. In that tail the last `\\boxed{}` wins (so a hedge `\\boxed{A} or
\\boxed{B}` counts as B), then the last `<answer>...</answer>`, then "answer is ..." /
"Answer: ...".

`relaxed_match` returns a `Decision`: `True` (match), `False` when the rules are sure it
is wrong (two plain numbers that differ, two different option letters), or `None` when
only math-verify (mmr/rewards/verify.py) or the judge can tell. Everything here is pure
Python string work (no signals, no timeouts needed): `score_batch` runs it in-process
for small batches and in the worker pool for big ones; math-verify always runs in worker
processes because its timeouts need signals.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "Decision",
    "extract_final_answer",
    "normalize_answer",
    "parse_choices",
    "relaxed_match",
]

# Rule names reported as `decided_by` (and printed by `mmr reward explain`).
RULE_EXACT = "rule:exact"
RULE_NUMBER = "rule:number"
RULE_CHOICE = "rule:choice"

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"[{}]")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_ANSWER_IS = re.compile(r"(?:final answer|answer)\s*(?:is|:|=)\s*[:\s]*(.+?)(?:\n|$)", re.I)
# Answers longer than this are not "short final answers"; the tail of the text is kept.
_MAX_PHRASE = 300
# Longer strings are not plain numbers; a 50,000-digit "number" is left to math-verify's
# limits instead of these regexes (whose backtracking on it is quadratic).
_MAX_NUMBER_CHARS = 100
# Beyond this only exact equality is tried by the rules.
_MAX_RULE_CHARS = 2000


@dataclass(frozen=True)
class Decision:
    """What the relaxed rules concluded: `correct` True/False, or None (undecided)."""

    correct: bool | None
    rule: str = ""


def extract_final_answer(solution: str) -> tuple[str | None, str]:
    """(answer, how it was found) from a response; (None, reason) when there is none."""
    if not isinstance(solution, str) or not solution.strip():
        return None, "empty response"
    close = solution.rfind("</think>")
    if close >= 0:
        tail = solution[close + len("</think>") :]
    elif "<think>" in solution:
        return None, "thinking never closed"
    else:
        tail = solution
    boxed = _last_boxed(tail)
    if boxed is not None:
        return boxed, "boxed"
    tags = _ANSWER_TAG.findall(tail)
    if tags:
        return tags[-1].strip(), "answer tag"
    said = _ANSWER_IS.findall(tail)
    if said:
        phrase = said[-1].strip().strip("*").strip()
        return phrase.rstrip(".").strip()[:_MAX_PHRASE], "answer is"
    return None, "no final answer after the thinking"


def _last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` with balanced braces (nested braces included)."""
    for match in reversed(list(_BOXED.finditer(text))):
        depth, start = 1, match.end()
        for brace in _BRACE.finditer(text, start):  # jumps from brace to brace: fast on long text
            depth += 1 if brace.group() == "{" else -1
            if depth == 0:
                return text[start : brace.start()].strip()
        # unbalanced (a truncated response): try the one before
    return None


# ---------------------------------------------------------------------------------------
# Normalization

_WRAPPERS = re.compile(
    r"\\(?:text|textbf|textit|mathrm|mathbf|mathit|mbox|operatorname|boldsymbol)\s*\{([^{}]*)\}"
)
_SPACING = re.compile(r"\\[,;:! ]|\\(?:quad|qquad|displaystyle|left|right)\b|~")
_DEGREE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\\degree|\bdegrees?\b")
_CURRENCY = re.compile(r"\\\$|\$|€|£|¥|\busd\b|\beur\b|\bdollars?\b|\brmb\b|\byuan\b")
_PERCENT = re.compile(r"\\%|%|\bpercent\b")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?$")
_FRACTION = re.compile(r"^([+-]?)(?:\\frac\{(\d+)\}\{(\d+)\}|(\d+)/(\d+))$")
# A number followed by words ("12 cm", "5 apples", "3 m^2"): the words are units or labels.
_NUMBER_THEN_WORDS = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))\s+[a-z][a-z\s.]*(?:\^?\{?[23]\}?)?$")
_KNOWN_UNIT = re.compile(
    r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:mm|cm|km|m|kg|mg|g|ml|l|s|ms|min|h|hrs?|hz|khz|n|j|w|kw|v"
    r"|pa|kpa|mol|k|cm\^?2|m\^?2|cm\^?3|m\^?3)$"
)
_ASSIGN = re.compile(r"^[a-z]\s*=\s*(?=\S)")


def normalize_answer(text: str) -> str:
    """Canonical text for comparison: no LaTeX wrappers, spacing, `$`, degrees or case."""
    s = text.strip()
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\(", "").replace("\\)", "").replace("\\[", "").replace("\\]", "")
    for _ in range(3):  # nested wrappers: \text{\textbf{B}}
        s = _WRAPPERS.sub(r" \1 ", s)
    s = _SPACING.sub(" ", s)
    s = _DEGREE.sub("", s.lower())
    s = _CURRENCY.sub("", s)
    s = s.replace("\\{", "{").replace("\\}", "}")
    s = " ".join(s.split()).strip().rstrip(".").strip()
    s = _ASSIGN.sub("", s)
    return s


def _number_values(norm: str) -> set[Fraction] | None:
    """The exact values a normalized answer may mean, or None when it is not a plain number.

    `50%` may mean 50 or 0.5, so both are returned.
    """
    if len(norm) > _MAX_NUMBER_CHARS:  # also keeps the regexes below from backtracking for ages
        return None
    percent = bool(_PERCENT.search(norm))
    s = _PERCENT.sub("", norm).strip()
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    unit = _NUMBER_THEN_WORDS.match(s) or _KNOWN_UNIT.match(s)
    if unit:
        s = unit.group(1)
    s = s.replace(" ", "")
    value: Fraction | None = None
    if _NUMBER.match(s) and len(s) <= 40:
        try:
            value = Fraction(s)
        except (ValueError, ZeroDivisionError):
            return None
    else:
        frac = _FRACTION.match(s)
        if frac and len(s) <= 40:
            sign, a, b, c, d = frac.groups()
            num, den = (int(a), int(b)) if a is not None else (int(c), int(d))
            if den == 0:
                return None
            value = Fraction(num, den) * (-1 if sign == "-" else 1)
    if value is None:
        return None
    return {value, value / 100} if percent else {value}


def _numbers_equal(a: set[Fraction], b: set[Fraction]) -> bool:
    for x in a:
        for y in b:
            if x == y or abs(x - y) <= Fraction(1, 10**6) * max(1, abs(x), abs(y)):
                return True
    return False


# ---------------------------------------------------------------------------------------
# Multiple choice

_CHOICE_LINE = re.compile(r"^\s*\(?([A-J])[.):：]\s*(.+?)\s*$", re.M)
_CHOICE_INLINE = re.compile(r"\(([A-J])\)\s*(.+?)(?=\s*\([A-J]\)|$)", re.S)
_LETTER = re.compile(r"^(?:option|choice|answer)?\s*\(?([a-j])\)?(?:[.:)]\s*(.*))?$", re.I | re.S)


@functools.lru_cache(maxsize=4096)
def parse_choices(question: str | None) -> dict[str, str]:
    """Options of a multiple-choice question: `A. text` lines or inline `(A) text` forms."""
    if not question:
        return {}
    found = {m.group(1): m.group(2) for m in _CHOICE_LINE.finditer(question)}
    if len(found) < 2:
        found = {m.group(1): m.group(2).strip() for m in _CHOICE_INLINE.finditer(question)}
    return found if len(found) >= 2 else {}


def _as_letter(norm: str, choices: dict[str, str], strict: bool) -> str | None:
    """The option letter an answer names (`b`, `(b)`, `b.`, `b. 12`), or None.

    `strict`: only a bare letter counts (a gold answer without parsed choices).
    """
    m = _LETTER.match(norm)
    if m is None:
        return None
    letter, rest = m.group(1).upper(), (m.group(2) or "").strip()
    if choices and letter not in choices:
        return None
    if strict and (rest or len(norm.strip("()")) != 1):
        return None
    return letter


def _letter_of_text(norm: str, choices: dict[str, str]) -> str | None:
    for letter, text in choices.items():
        if normalize_answer(text) == norm:
            return letter
    return None


def _match_choice(pred: str, gold: str, choices: dict[str, str]) -> Decision | None:
    gold_letter = _as_letter(gold, choices, strict=not choices)
    if gold_letter is None and choices:
        gold_letter = _letter_of_text(gold, choices)
    if gold_letter is None:
        return None
    pred_letter = _as_letter(pred, choices, strict=False)
    if pred_letter is None and choices:
        pred_letter = _letter_of_text(pred, choices)
    if pred_letter is None:
        return None
    return Decision(pred_letter == gold_letter, RULE_CHOICE)


# ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1 << 16)
def relaxed_match(pred: str, gold: str, question: str | None = None) -> Decision:
    """Compare an extracted answer with the gold answer using string and number rules.

    Cached: the 16 rollouts of a prompt share the gold and the question and often the answer.
    """
    p, g = normalize_answer(pred), normalize_answer(str(gold))
    if not p:
        return Decision(False, "rule:empty")
    if len(p) > _MAX_RULE_CHARS or len(g) > _MAX_RULE_CHARS:
        return Decision(True, RULE_EXACT) if p == g else Decision(None, "")
    if p.replace(" ", "") == g.replace(" ", ""):
        return Decision(True, RULE_EXACT)
    choice = _match_choice(p, g, parse_choices(question))
    if choice is not None:
        return choice
    pv, gv = _number_values(p), _number_values(g)
    if pv is not None and gv is not None:
        return Decision(_numbers_equal(pv, gv), RULE_NUMBER)
    return Decision(None, "")
