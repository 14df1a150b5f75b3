"""Accuracy, part 1: find the final answer and try the cheap relaxed-match rules.

The final answer is what follows `</think>`: an answer written only inside the thinking
does not count. In that tail the boxed answers (`\\boxed{}`) count, then `<answer>` tags,
then an "answer is ..." / "Answer: ..." phrase, whose math is taken, not its words ("The
largest n is 34" gives 34). A "final answer" statement written after the last box wins
over a box in the working. Several different boxed (or tagged) answers are all kept,
joined by commas: against a gold of one part they are a hedge and score 0; against a
multi-part gold (`1,-2`) they must give its parts (any order: a bare list is a set).

Numbers: integers compare exactly, decimals within 1e-6 relative; a percent has one
reading, decided by the gold (a gold in percent: both sides in percent units; a
fractional gold below 1: `50%` is 0.5; any other gold: percent units); only real units
(lengths, masses, times, `\\text{cm}`, degrees, currency) are stripped from a number, and
any other words next to it ("12 thousand", "5 or more") make the rules call it wrong.

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
    "QA",
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
RULE_HEDGE = "rule:hedge"  # several different answers for a gold of one part
RULE_PARTS = "rule:parts"  # several answers against a gold of several parts
RULE_WORDS = "rule:words"  # a number with words that are not units

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"[{}]")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_ANSWER_IS = re.compile(r"(?:final answer|answer)\s*(?:is|:|=)\s*[:\s]*(.+?)(?:\n|$)", re.I)
_FINAL_STATEMENT = re.compile(r"final answer\s*(?:is|:|=)", re.I)
_INLINE_MATH = re.compile(r"\$+([^$]+)\$+")
_LAST_IS = re.compile(r".*\b(?:is|are|equals|=)\s+(.+)$", re.I | re.S)
# Answers longer than this are not "short final answers"; the tail of the text is kept.
_MAX_PHRASE = 300
# Longer strings are not plain numbers; a 50,000-digit "number" is left to math-verify's
# limits instead of these regexes (whose backtracking on it is quadratic).
_MAX_NUMBER_CHARS = 100
# Beyond this only exact equality is tried by the rules.
_MAX_RULE_CHARS = 2000


@dataclass(frozen=True)
class QA:
    """One answer to decide, as the rules, math-verify and the judge read it (frozen, so
    it is also the judge's cache key)."""

    question: str  # "" when the data has none
    gold: str
    answer: str | None = None  # the response's final answer; None until it is extracted


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
    boxes = _all_boxed(tail)
    statement = _last_final_statement(tail)
    if boxes and not (statement and statement[0] > boxes[-1][0]):
        return _joined([text for _, text in boxes], "boxed")
    if statement:
        return statement[1], "final answer statement"
    tags = [t.strip() for t in _ANSWER_TAG.findall(tail)]
    if tags:
        return _joined(tags, "answer tag")
    said = _ANSWER_IS.findall(tail)
    if said:
        return _phrase_math(said[-1]), "answer is"
    return None, "no final answer after the thinking"


def _joined(answers: list[str], how: str) -> tuple[str, str]:
    """One answer, or the distinct ones (by normalized text) joined by commas."""
    distinct = list({normalize_answer(a): a for a in answers}.values())
    if len(distinct) == 1:
        return distinct[0], how
    return ", ".join(distinct), f"{how}: {len(distinct)} different answers"


def _all_boxed(text: str) -> list[tuple[int, str]]:
    """(end offset, content) of every balanced `\\boxed{...}`, in order (nested braces
    included; an unbalanced one, as in a truncated response, is left out)."""
    found = []
    scan = 0  # boxes inside a box are part of its content
    for match in _BOXED.finditer(text):
        if match.start() < scan:
            continue
        depth, start = 1, match.end()
        for brace in _BRACE.finditer(text, start):  # jumps from brace to brace: fast on long text
            depth += 1 if brace.group() == "{" else -1
            if depth == 0:
                found.append((brace.end(), text[start : brace.start()].strip()))
                scan = brace.end()
                break
    return found


def _last_final_statement(tail: str) -> tuple[int, str] | None:
    """(start offset, math) of the last "final answer is/: ..." statement, if any."""
    matches = list(_FINAL_STATEMENT.finditer(tail))
    if not matches:
        return None
    said = _ANSWER_IS.findall(tail[matches[-1].start() :])
    return (matches[-1].start(), _phrase_math(said[0])) if said else None


def _phrase_math(phrase: str) -> str:
    """The answer a phrase states: its last inline math, else what follows its last
    "is"/"=" ("The largest n is 34" -> "34"), without emphasis and the full stop."""
    phrase = phrase.strip().strip("*").strip()[-_MAX_PHRASE:]
    maths = _INLINE_MATH.findall(phrase)
    if maths:
        phrase = maths[-1]
    else:
        said = _LAST_IS.match(phrase)
        if said:
            phrase = said.group(1)
    return phrase.strip().strip("*").rstrip(".").strip()


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
# Units a number may carry ("12 cm", "3 m^2", "7 units"): stripped. Any other words next to
# a number are not units ("12 thousand", "5 or more", "3 approximately").
_UNITS = (
    "mm|cm|km|m|nm|kg|mg|g|t|ml|l|s|ms|min|mins|h|hr|hrs|hz|khz|mhz|n|j|kj|w|kw|v|pa|kpa|mol|k|c|f"
    "|meters?|metres?|centimeters?|centimetres?|millimeters?|millimetres?|kilometers?|kilometres?"
    "|grams?|kilograms?|tons?|tonnes?|liters?|litres?|milliliters?|millilitres?"
    "|seconds?|minutes?|hours?|days?|weeks?|months?|years?"
    "|inch|inches|in|foot|feet|ft|yards?|yd|miles?|mi|mph|km/h|m/s|pounds?|lbs?|oz|ounces?"
    "|newtons?|joules?|watts?|volts?|amps?|ohms?|calories?|cal|kcal|units?"
    "|(?:square|sq|cubic) (?:units?|meters?|metres?|centimeters?|cm|m|inches|feet|ft)"
)
_NUMBER_WITH_UNIT = re.compile(
    rf"^([+-]?(?:\d+\.?\d*|\.\d+))\s*(?:{_UNITS})(?:\s*\^?\s*\{{?[23]\}}?)?$"
)
_NUMBER_WITH_WORDS = re.compile(
    r"^[+-]?(?:\d+\.?\d*|\.\d+)\s+[a-z]|[a-z]\s+[+-]?(?:\d+\.?\d*|\.\d+)$"
)
_DECIMAL = re.compile(r"[.e]")
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


@dataclass(frozen=True)
class _Number:
    """A plain number as written: its value, a percent sign, a decimal point or exponent."""

    value: Fraction
    percent: bool
    decimal: bool


def _parse_number(norm: str) -> _Number | str | None:
    """The number a normalized answer is, "words" when a number stands with words that are
    not units, else None (not a plain number)."""
    if len(norm) > _MAX_NUMBER_CHARS:  # also keeps the regexes below from backtracking for ages
        return None
    percent = bool(_PERCENT.search(norm))
    s = _PERCENT.sub("", norm).strip()
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    unit = _NUMBER_WITH_UNIT.match(s)
    if unit:
        s = unit.group(1)
    elif _NUMBER_WITH_WORDS.search(s):
        return "words"
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
    return _Number(value, percent, bool(_DECIMAL.search(s)))


def _numbers_equal(pred: _Number, gold: _Number) -> bool:
    """One reading of each side, decided by the gold; exact unless a side is a decimal."""
    p, g = pred.value, gold.value
    if pred.percent and not gold.percent and g.denominator != 1 and abs(g) < 1:
        p = p / 100  # a fractional gold: 50% is 0.5
    # otherwise both sides are in the gold's units (a gold in percent, or a percent sign
    # on an answer to a whole-number gold, is read as percent units)
    if p == g:
        return True
    if not (pred.decimal or gold.decimal):
        return False  # integers and fractions compare exactly
    return abs(p - g) <= Fraction(1, 10**6) * max(1, abs(p), abs(g))


# ---------------------------------------------------------------------------------------
# Several parts

_OPEN, _CLOSE = "([{", ")]}"


def split_parts(norm: str) -> list[str]:
    """Top-level comma-separated parts ("1, -2" -> ["1", "-2"]; "(1, 2)" is one part)."""
    if _THOUSANDS.match(norm.replace(" ", "")):
        return [norm]
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(norm):
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(norm[start:i])
            start = i + 1
    parts.append(norm[start:])
    parts = [p.strip() for p in parts if p.strip()]
    return list(dict.fromkeys(parts)) or [norm]


def _match_parts(pred: list[str], gold: list[str], question: str | None) -> Decision:
    """Several answers against a gold of several parts: the same count, matched one to one
    in any order (a bare list is a set); undecided when a pair is undecided."""
    if len(pred) != len(gold):
        return Decision(False, RULE_PARTS)
    left = list(gold)
    for part in pred:
        decisions = [relaxed_match(part, g, question) for g in left]
        hit = next((i for i, d in enumerate(decisions) if d.correct), None)
        if hit is None:
            if all(d.correct is False for d in decisions):
                return Decision(False, RULE_PARTS)
            return Decision(None, "")
        left.pop(hit)
    return Decision(True, RULE_PARTS)


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
    pred_parts, gold_parts = split_parts(p), split_parts(g)
    if len(pred_parts) > 1 and len(gold_parts) == 1:
        return Decision(False, RULE_HEDGE)
    if len(gold_parts) > 1 and (len(pred_parts) > 1 or len(pred_parts) != len(gold_parts)):
        return _match_parts(pred_parts, gold_parts, question)
    choice = _match_choice(p, g, parse_choices(question))
    if choice is not None:
        return choice
    pv, gv = _parse_number(p), _parse_number(g)
    if isinstance(gv, _Number) and pv == "words":
        return Decision(False, RULE_WORDS)
    if isinstance(pv, _Number) and isinstance(gv, _Number):
        return Decision(_numbers_equal(pv, gv), RULE_NUMBER)
    return Decision(None, "")
