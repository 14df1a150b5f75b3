"""Procedurally generated visual reasoning tasks with exact answers, and a rule-based teacher.

Tests and the CPU demo cannot download data, so they train and evaluate on these. Five kinds:

- `colour`:  one shape; "what colour is the shape" (a colour name). The easy rung: a random
             vision tower learns to look from it first, and the other kinds then build on
             what it learned (without it, the demo's tiny model left the image unused).
- `count`:   shapes on a 4x4 grid; "how many red shapes" (level 3: "how many red circles").
- `bars`:    a four-bar chart on a unit grid; "which bar is the tallest/shortest" (A-D) or
             "how many units taller is X than Y" (a number).
- `digits`:  two seven-segment digits; "what is their sum/product" (a number).
- `largest`: 2-4 shapes of one type and different colours; "which colour is largest" (A-D).

Levels 1-3 add objects and bring values closer (colour: a smaller shape and grey specks;
count: more distractors, colour+shape at
level 3; bars/largest: a smaller gap between the answer and the runner-up; digits: wider
range, coloured ink, noise). Images are 112x112 PNG: 4x4 cells of 28 px, the tiny models'
whole pixel budget (16 merged tokens of Qwen2.5-VL), so nothing is resized away.

Everything a task shows lives in `meta` (`kind`, `level`, `form`, `scene`, `options`):
`render(meta)` redraws the image from it, `solve(meta)` gives the answer and
`teacher_response(meta)` writes a short `<think>` trace that "reads" the scene from it,
stating the visual fact that decides the answer before deriving the answer from it
(`max_rechecks=N`: then 0..N redundant re-checks of that fact, a hash of the task;
`skip_lookup=p`: a share p of the option-letter traces name the letter without reading the
options out, another hash).

`generate_descriptions` draws the same scenes and asks for what they show instead, field by
field (`describe`: colours, counts, sizes, positions), with `score_description` matching
each field exactly: perception data for pretraining a model's vision from scratch.

Splits are held-out *scenes*: a task's content hashes into train or test (1 scene in 4 is
reserved for test) and a draw that lands in the other split is drawn again, so no seed ever
gives the same task in both. Task i of a split draws from `Random(f"{seed}/{split}/{i}")`,
so the splits also use disjoint seeds. Both splits have the same distribution (i.i.d., not
compositional held-out), which is what comparing accuracies before and after training needs.
Answers are balanced: of the draws of task i, the first whose answer is among the least
given so far for its kind, level and form is kept (else the least given one found), so each
count, option letter or colour comes up about equally often. A model that answers one
constant (a collapsed policy) then scores 1/k on a k-answer kind, and no more: on unbalanced
draws it could gain accuracy by moving its constant to the commonest answer, which is
learning the label prior, not the task.

    python -m mmr.data.synthetic --n 200 --split train --out runs/demo/tasks_train.parquet
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from mmr.data.io import write_samples
from mmr.data.schema import IMAGE_PLACEHOLDER, Sample

__all__ = [
    "KINDS",
    "SKIP_FORMS",
    "chance_accuracy",
    "check_max_rechecks",
    "check_skip_lookup",
    "describe",
    "description_text",
    "generate_descriptions",
    "generate_tasks",
    "lookup_way",
    "parse_description",
    "recheck_count",
    "render",
    "score_description",
    "skips_lookup",
    "solve",
    "teacher_response",
    "write_synthetic",
]

KINDS = ("colour", "count", "bars", "digits", "largest")
LEVELS = (1, 2, 3)
SPLITS = ("train", "test")
SIZE = 112
CELL = 28
# Six colours near the corners of the RGB cube, each far from the hull of the other five
# (>= 1.2 in units of the image processor's channel std): an orange between red and
# yellow and a purple near the midpoint of red and blue, as the palette had them, were
# the colours the demo's frozen-tower SFT model sampled evenly with a neighbour (purple
# with blue; with purple moved, orange with yellow): issue 16, session 14.
PALETTE = {
    "red": (220, 30, 30),
    "green": (30, 190, 40),
    "blue": (40, 60, 230),
    "yellow": (235, 215, 20),
    "purple": (190, 20, 210),
    "cyan": (20, 200, 220),
}
INK = {"black": (0, 0, 0), **PALETTE}
SHAPES = ("circle", "square", "triangle")
LETTERS = "ABCD"
BAR_BASE, BAR_UNIT = 104, 10  # baseline y and pixels per unit: value 9 reaches y=14
TEST_SHARE = 4  # one scene in TEST_SHARE belongs to the test split
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

# Seven-segment digits: which of the segments a-g (top, upper right, lower right, bottom,
# lower left, upper left, middle) are lit. Drawn as rectangles, so no font is involved and
# the pixels do not depend on the Pillow version or the fonts installed.
SEGMENTS = ("abcdef", "bc", "abdeg", "abcdg", "bcfg", "acdfg", "acdefg", "abc", "abcdefg", "abcdfg")


# ---------------------------------------------------------------------------------------
# Scenes: rng -> meta (kind, level, form, scene, options). Integers only, so JSON is exact.


def _sample_colour(rng: random.Random, level: int) -> dict[str, Any]:
    # One shape; levels make it smaller and add grey distractor specks.
    size = rng.randint(*((40, 56), (26, 40), (16, 26))[level - 1])
    slack = (SIZE - size) // 2 - 2
    obj = {
        "shape": rng.choice(SHAPES),
        "colour": rng.choice(list(PALETTE)),
        "x": SIZE // 2 + rng.randint(-slack, slack),
        "y": SIZE // 2 + rng.randint(-slack, slack),
        "size": size,
    }
    specks = [[rng.randrange(SIZE), rng.randrange(SIZE)] for _ in range(20 * (level - 1))]
    return {"form": "colour", "scene": {"objects": [obj], "specks": specks}}


def _sample_count(rng: random.Random, level: int) -> dict[str, Any]:
    pool = rng.sample(list(PALETTE), 2 + level)
    colour, by_shape = pool[0], level == 3
    shape = rng.choice(SHAPES) if by_shape else None
    # Answers start at 1 and spread to 7 so that no constant answer is right often.
    k = rng.randint(*((1, 4), (2, 6), (2, 7))[level - 1])
    n_other = rng.randint(*((1, 3), (2, 5), (3, 7))[level - 1])
    specs = [(colour, shape or rng.choice(SHAPES)) for _ in range(k)]
    while len(specs) < k + n_other:
        spec = (rng.choice(pool), rng.choice(SHAPES))
        if spec[0] != colour or (by_shape and spec[1] != shape):
            specs.append(spec)
    rng.shuffle(specs)
    objects = []
    for cell, (c, s) in zip(sorted(rng.sample(range(16), len(specs))), specs):
        size = 20 if level == 1 else rng.randint(14, 22)
        slack = (CELL - size) // 2 - 1
        x = cell % 4 * CELL + CELL // 2 + rng.randint(-slack, slack)
        y = cell // 4 * CELL + CELL // 2 + rng.randint(-slack, slack)
        objects.append({"shape": s, "colour": c, "x": x, "y": y, "size": size})
    form = "colour_shape" if by_shape else "colour"
    return {
        "form": form,
        "scene": {"target": {"colour": colour, "shape": shape}, "objects": objects},
    }


def _sample_bars(rng: random.Random, level: int) -> dict[str, Any]:
    colours = rng.sample(list(PALETTE), 4)
    form = rng.choice(("tallest", "shortest", "diff"))
    values = [rng.randint(1, 9) for _ in range(4)]
    compare = None
    if form == "diff":
        i, j = rng.sample(range(4), 2)
        d = rng.randint(*((4, 8), (2, 5), (1, 3))[level - 1])
        values[j] = rng.randint(1, 9 - d)
        values[i] = values[j] + d
        compare = [colours[i], colours[j]]
    else:
        # The answer beats every other bar by `gap` units or more and the runner-up by exactly
        # `gap`: large at level 1, one unit at level 3. "shortest" is "tallest" upside down.
        gap = rng.randint(3, 5) if level == 1 else 4 - level
        top = rng.randint(1 + gap, 9)
        values = [top, top - gap] + [rng.randint(1, top - gap) for _ in range(2)]
        rng.shuffle(values)
        values = [10 - v for v in values] if form == "shortest" else values
    bars = [
        {"colour": c, "value": v, "x0": k * CELL + 5, "x1": k * CELL + 22}
        for k, (c, v) in enumerate(zip(colours, values))
    ]
    scene = {"bars": bars, "baseline": BAR_BASE, "unit": BAR_UNIT, "compare": compare}
    options = None if form == "diff" else rng.sample(colours, 4)
    return {"form": form, "scene": scene, "options": options}


def _sample_digits(rng: random.Random, level: int) -> dict[str, Any]:
    low, high = ((1, 5), (1, 9), (0, 9))[level - 1]
    digits = [rng.randint(low, high), rng.randint(low, high)]
    boxes = []
    for half in (0, 1):
        w = 36 if level == 1 else rng.randint(26, 36)
        h = 64 if level == 1 else rng.randint(48, 64)
        t = 8 if level < 3 else 6
        x = half * 56 + (56 - w) // 2 + rng.randint(-4, 4)
        y = (SIZE - h) // 2 + rng.randint(-8, 8)
        boxes.append([x, y, w, h, t])
    ink = "black" if level == 1 else rng.choice(list(INK))
    # Light grey specks at level 3: clutter that never matches the ink colour.
    specks = [[rng.randrange(SIZE), rng.randrange(SIZE)] for _ in range(30 if level == 3 else 0)]
    scene = {"digits": digits, "boxes": boxes, "ink": ink, "specks": specks}
    return {"form": rng.choice(("sum", "product")), "scene": scene}


def _sample_largest(rng: random.Random, level: int) -> dict[str, Any]:
    n = level + 1
    colours = rng.sample(list(PALETTE), n)
    # One shape type per scene: then "largest" means the same thing for every object.
    shape = rng.choice(SHAPES)
    gap = (rng.randint(14, 20), rng.randint(8, 12), rng.randint(4, 6))[level - 1]
    top = rng.randint(14 + gap, 48)
    sizes = [top, top - gap] + [rng.randint(14, top - gap) for _ in range(n - 2)]
    rng.shuffle(sizes)
    objects = []
    for cell, colour, size in zip(sorted(rng.sample(range(4), n)), colours, sizes):
        slack = (56 - size) // 2 - 2
        x = cell % 2 * 56 + 28 + rng.randint(-slack, slack)
        y = cell // 2 * 56 + 28 + rng.randint(-slack, slack)
        objects.append({"colour": colour, "x": x, "y": y, "size": size})
    absent = [c for c in PALETTE if c not in colours]
    options = rng.sample(colours + rng.sample(absent, 4 - n), 4)
    return {"form": "largest", "scene": {"shape": shape, "objects": objects}, "options": options}


# ---------------------------------------------------------------------------------------
# Drawing: meta -> image, a pure function of the scene.


def _shape(draw: ImageDraw.ImageDraw, shape: str, x: int, y: int, size: int, rgb: tuple) -> None:
    h = size // 2
    box = (x - h, y - h, x - h + size - 1, y - h + size - 1)
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "square":
        draw.rectangle(box, fill=rgb)
    else:
        draw.polygon([(x, box[1]), (box[0], box[3]), (box[2], box[3])], fill=rgb)


def _segment_boxes(x: int, y: int, w: int, h: int, t: int) -> dict[str, tuple[int, ...]]:
    """Segment rectangles (x0, y0, x1, y1, inclusive) of a digit in box (x, y, w, h)."""
    m = y + h // 2
    return {
        "a": (x, y, x + w - 1, y + t - 1),
        "b": (x + w - t, y, x + w - 1, m),
        "c": (x + w - t, m, x + w - 1, y + h - 1),
        "d": (x, y + h - t, x + w - 1, y + h - 1),
        "e": (x, m, x + t - 1, y + h - 1),
        "f": (x, y, x + t - 1, m),
        "g": (x, m - t // 2, x + w - 1, m - t // 2 + t - 1),
    }


def render(meta: dict[str, Any]) -> Image.Image:
    """The task's image, drawn from its `meta` alone."""
    image = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    kind, scene = meta["kind"], meta["scene"]
    for x, y in scene.get("specks", ()):  # clutter (colour, digits), under everything else
        draw.rectangle((x, y, x + 1, y + 1), fill=(200, 200, 200))
    if kind in ("colour", "count"):
        for o in scene["objects"]:
            _shape(draw, o["shape"], o["x"], o["y"], o["size"], PALETTE[o["colour"]])
    elif kind == "bars":
        for u in range(1, 10):  # the unit grid is what makes heights readable as numbers
            y = scene["baseline"] - u * scene["unit"]
            draw.line([(0, y), (SIZE - 1, y)], fill=(215, 215, 215))
        for b in scene["bars"]:
            top = scene["baseline"] - b["value"] * scene["unit"]
            draw.rectangle(
                (b["x0"], top, b["x1"], scene["baseline"] - 1), fill=PALETTE[b["colour"]]
            )
        draw.line([(0, scene["baseline"]), (SIZE - 1, scene["baseline"])], fill=(0, 0, 0), width=2)
    elif kind == "digits":
        for digit, box in zip(scene["digits"], scene["boxes"]):
            rects = _segment_boxes(*box)
            for seg in SEGMENTS[digit]:
                draw.rectangle(rects[seg], fill=INK[scene["ink"]])
    elif kind == "largest":
        for o in scene["objects"]:
            _shape(draw, scene["shape"], o["x"], o["y"], o["size"], PALETTE[o["colour"]])
    else:
        raise ValueError(f"unknown synthetic task kind {kind!r}")
    return image


# ---------------------------------------------------------------------------------------
# Questions, answers and the teacher's traces, all from meta.


def _ask(meta: dict[str, Any]) -> str:
    scene, form = meta["scene"], meta["form"]
    if meta["kind"] == "colour":
        text = "What colour is the shape in the image?"
    elif meta["kind"] == "count":
        text = f"How many {_target(meta)[0]} are there in the image?"
    elif meta["kind"] == "bars" and form == "diff":
        x, y = scene["compare"]
        text = (
            "The grid lines of the bar chart are 1 unit apart. "
            f"How many units taller is the {x} bar than the {y} bar?"
        )
    elif meta["kind"] == "bars":
        text = f"Which bar in the chart is the {form}?"
    elif meta["kind"] == "digits":
        text = f"The image shows two digits. What is their {form}?"
    else:
        text = "Which colour is the largest shape in the image?"
    if meta.get("options"):
        lines = [f"{letter}. {c}" for letter, c in zip(LETTERS, meta["options"])]
        text += "\n" + "\n".join(lines) + "\nAnswer with the option's letter."
    return f"{IMAGE_PLACEHOLDER}\n{text}\n{INSTRUCTION}"


def _target(meta: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """What a count task counts ("red shapes", "red circles") and the objects that match."""
    t = meta["scene"]["target"]
    hits = [o for o in meta["scene"]["objects"] if o["colour"] == t["colour"]]
    hits = [o for o in hits if t["shape"] in (None, o["shape"])]
    return f"{t['colour']} {t['shape'] or 'shape'}s", hits


def _pick(meta: dict[str, Any]) -> str:
    """The colour an MCQ task asks for."""
    scene, form = meta["scene"], meta["form"]
    if meta["kind"] == "bars":
        pick = max if form == "tallest" else min
        return pick(scene["bars"], key=lambda b: b["value"])["colour"]
    return max(scene["objects"], key=lambda o: o["size"])["colour"]


def solve(meta: dict[str, Any]) -> str:
    """The exact answer of a task: a number, or the option letter for multiple choice."""
    kind, form, scene = meta["kind"], meta["form"], meta["scene"]
    if meta.get("options"):
        return LETTERS[meta["options"].index(_pick(meta))]
    if kind == "colour":
        return scene["objects"][0]["colour"]
    if kind == "count":
        return str(len(_target(meta)[1]))
    if kind == "bars":
        value = {b["colour"]: b["value"] for b in scene["bars"]}
        x, y = scene["compare"]
        return str(value[x] - value[y])
    a, b = scene["digits"]
    return str(a + b if form == "sum" else a * b)


def _units(n: int) -> str:
    return f"{n} unit" if n == 1 else f"{n} units"


def _think(meta: dict[str, Any], skip: bool = False, skip_form: str = "lookup") -> str:
    """The trace states the visual fact that decides the answer first, then derives it.

    Order matters for what a model learns from these traces: a trace that first lists fine
    details (exact sizes, shapes in reading order) lets every later token, the answer
    included, be copied from the trace's own text, so the only image-dependent targets are
    the hardest ones. Stating the deciding fact first ("the largest shape is cyan")
    makes the image the only source of that token.
    """
    kind, form, scene = meta["kind"], meta["form"], meta["scene"]
    answer = solve(meta)
    if skip and skip_form == "answer":  # the letter alone: no colour named, nothing read out
        return f"{SKIPPED_ANSWER}{answer}."
    if kind == "colour":
        return f"The {scene['objects'][0]['shape']} in the image is {answer}."
    if kind == "count":
        what = _target(meta)[0]
        return f"I look for {what}. There are {answer} {what} in the image."
    if kind == "digits":
        a, b = scene["digits"]
        op = "+" if form == "sum" else "\\times"
        return f"The digits are {a} and {b}. {a} {op} {b} = {answer}."
    if kind == "bars":
        values = {b["colour"]: b["value"] for b in scene["bars"]}
        if form == "diff":
            x, y = scene["compare"]
            return (
                f"The {x} bar is {_units(values[x])} tall and the {y} bar is "
                f"{_units(values[y])} tall. {values[x]} - {values[y]} = {answer}."
            )
        return f"The {form} bar is {_pick(meta)}{_lookup(meta, skip)}"
    return f"The largest shape is {_pick(meta)}{_lookup(meta, skip)}"


def _lookup(meta: dict[str, Any], skip: bool = False) -> str:
    """The option letter, found by reading the options in order up to the picked colour.

    "which is option C" right after the colour asks a model to find that colour among the
    options and emit the letter before it in one token; the demo's tiny model never learned
    it (it named the largest shape's colour right in 95% of held-out tasks and the letter at
    chance, issue 16). Read out one by one, each step is a copy from the prompt and a yes/no
    comparison with the colour already named, and the letter is the one just written.

    `skip`: the teacher names the letter at once (", which is option C."), the lookup done
    in its head: as right as the read-out, and a step the tiny student copies only at chance.
    """
    answer = solve(meta)
    if skip:
        return f"{SKIPPED_LOOKUP}{answer}. So the answer is {answer}."
    read = [f"option {letter} is {colour}" for letter, colour in zip(LETTERS, meta["options"])]
    read = ", ".join(read[: LETTERS.index(answer) + 1])
    return f". O{read[1:]}. So the answer is {answer}."


# Redundant re-checks a long-CoT teacher writes, each restating the deciding fact. The
# openings end on different words and the facts are at most six words, so no 8-word run
# repeats in one trace (the demo's `select.templated` drops a run repeated 3 times).
RECHECKS = (
    "Let me check again: {}.",
    "Looking at the image once more, {}.",
    "To be sure, I verify it: {}.",
    "Wait, I look one more time: {}.",
    "On a second look, {}.",
    "Checking the image again, yes, {}.",
)


def _fact(meta: dict[str, Any]) -> str:
    """The deciding fact, restated in six words or fewer."""
    kind, form, scene = meta["kind"], meta["form"], meta["scene"]
    answer = solve(meta)
    if kind == "colour":
        return f"the {scene['objects'][0]['shape']} is {answer}"
    if kind == "count":
        return f"there are {answer} {_target(meta)[0]}"
    if kind == "digits":
        a, b = scene["digits"]
        op = "+" if form == "sum" else "\\times"
        return f"{a} {op} {b} = {answer}"
    if kind == "bars" and form == "diff":
        values = {b["colour"]: b["value"] for b in scene["bars"]}
        x, y = scene["compare"]
        return f"{values[x]} - {values[y]} = {answer}"
    if kind == "bars":
        return f"the {form} bar is {_pick(meta)}"
    return f"the largest shape is {_pick(meta)}"


def check_max_rechecks(max_rechecks: int) -> None:
    """ValueError unless 0 <= max_rechecks <= len(RECHECKS) (each re-check is worded apart)."""
    if not 0 <= max_rechecks <= len(RECHECKS):
        raise ValueError(f"max_rechecks must be in 0..{len(RECHECKS)}, got {max_rechecks}")


def _task_hash(meta: dict[str, Any], salt: str) -> str:
    """A hash of what the task shows and asks (its id's content), not of the keys a
    pipeline adds to meta later (the distill stage's `path`, `teacher`, ...)."""
    task = {k: meta.get(k) for k in ("kind", "level", "form", "scene", "options")}
    return hashlib.sha1(f"{salt}/{json.dumps(task, sort_keys=True)}".encode()).hexdigest()


def recheck_count(meta: dict[str, Any], max_rechecks: int) -> int:
    """How many re-checks the task's trace gets, 0..max_rechecks: a hash of the task's
    content, so the same task always gets the same count and the count says nothing
    about the answer or whether a model could find it."""
    check_max_rechecks(max_rechecks)
    return int(_task_hash(meta, "rechecks")[:8], 16) % (max_rechecks + 1)


def _rechecks(meta: dict[str, Any], max_rechecks: int) -> str:
    count = recheck_count(meta, max_rechecks)
    if not count:
        return ""
    # The wording, too, from the task (another hash): varied, and reproducible.
    seed = _task_hash(meta, "wording")
    fact = _fact(meta)
    return "".join(" " + t.format(fact) for t in random.Random(seed).sample(RECHECKS, count))


# What a skipped trace leaves out: the lookup ("The largest shape is green, which is
# option B."), or every step ("The answer is option B."). The words before the letter of
# each, written by `_lookup` / `_think` and read back by `lookup_way`.
SKIP_FORMS = ("lookup", "answer")
SKIPPED_LOOKUP, SKIPPED_ANSWER = ", which is option ", "The answer is option "
_READ_OUT = re.compile(r"\b[Oo]ption A is ")  # `_lookup`'s read-out always starts at A


def lookup_way(text: str) -> str:
    """How a response to an option-letter task found its letter, in the teacher's words:
    `skipped` (either skip form), `read_out` (the options read out in order) or `other`."""
    if SKIPPED_LOOKUP in text or SKIPPED_ANSWER in text:
        return "skipped"
    return "read_out" if _READ_OUT.search(text) else "other"


def check_skip_lookup(skip_lookup: float, skip_form: str = "lookup") -> None:
    """ValueError unless 0 <= skip_lookup <= 1 (a share of the option-lookup traces) and
    skip_form is one of SKIP_FORMS."""
    if not (isinstance(skip_lookup, (int, float)) and 0.0 <= skip_lookup <= 1.0):
        raise ValueError(f"skip_lookup must be a share in [0, 1], got {skip_lookup!r}")
    if skip_form not in SKIP_FORMS:
        raise ValueError(f"skip_form must be one of {SKIP_FORMS}, got {skip_form!r}")


def skips_lookup(meta: dict[str, Any], skip_lookup: float) -> bool:
    """Whether the task's trace names the option letter at once instead of reading the
    options out (`_lookup`): tasks answered by an option letter only (`largest`, the
    tallest/shortest `bars`), a share `skip_lookup` of them by a hash of the task's
    content, so the choice says nothing about the answer or the task's difficulty."""
    check_skip_lookup(skip_lookup)
    return _skips_lookup(meta, skip_lookup)


def _skips_lookup(meta: dict[str, Any], skip_lookup: float) -> bool:
    if not meta.get("options"):  # not answered by an option letter
        return False
    return int(_task_hash(meta, "skip_lookup")[:8], 16) < skip_lookup * 16**8


def teacher_response(
    sample_or_task: Sample | dict[str, Any],
    max_rechecks: int = 0,
    skip_lookup: float = 0.0,
    skip_form: str = "lookup",
) -> str:
    """A correct, short `<think>...</think>` trace followed by `\\boxed{answer}`.

    `max_rechecks` > 0 makes the traces vary in verbosity independently of correctness, as
    long-CoT teachers' do: 0..max_rechecks redundant re-checking sentences (`RECHECKS`,
    `recheck_count`) before `</think>`; the first sentence and the answer stay the same.
    `skip_lookup` > 0 makes the teacher skip a step in that share of the option-letter
    traces (`skips_lookup`), as a strong teacher leaves out steps it does in its head: the
    letter named right after the colour instead of read out from the options. Both
    traces are correct (the pipeline's answer check keeps both); a small student copies
    the read-out reliably and the skipped step at chance, so its traces mix a strategy
    that works with one that does not: what RL on verifiable rewards can choose between.
    `skip_form="answer"` skips every step of those traces ("The answer is option B."), as
    a teacher that answers an easy-looking question without reasoning.
    """
    meta = sample_or_task.meta if isinstance(sample_or_task, Sample) else sample_or_task
    check_skip_lookup(skip_lookup, skip_form)
    skip = _skips_lookup(meta, skip_lookup)
    think = _think(meta, skip, skip_form) + _rechecks(meta, max_rechecks)
    return f"<think>{think}</think>\n\\boxed{{{solve(meta)}}}"


# ---------------------------------------------------------------------------------------
# Descriptions: what a scene shows, field by field, for perception pretraining.

# Where an object's centre lies: thirds of the image, row and column.
_ROWS, _COLUMNS = ("top", "middle", "bottom"), ("left", "centre", "right")
_CELLS = ("top left", "top right", "bottom left", "bottom right")  # largest's 2x2 cells


def _third(v: int) -> int:
    return min(3 * v // SIZE, 2)


def _size_word(size: int) -> str:
    return "small" if size < 30 else "medium" if size < 45 else "large"


def describe(meta: dict[str, Any]) -> dict[str, str]:
    """The scene's visible facts as ordered (field, value) pairs: colours, counts, sizes,
    positions. Nothing the question adds (options, the compared pair) is in them."""
    kind, scene = meta["kind"], meta["scene"]
    if kind == "colour":
        o = scene["objects"][0]
        where = f"{_ROWS[_third(o['y'])]} {_COLUMNS[_third(o['x'])]}"
        return {"colour": o["colour"], "shape": o["shape"], "size": _size_word(o["size"]),
                "position": where}  # fmt: skip
    if kind == "count":
        counts = Counter(o["colour"] for o in scene["objects"])
        fields = {c: str(counts[c]) for c in PALETTE if counts[c]}
        return {**fields, "total": str(len(scene["objects"]))}
    if kind == "largest":
        by_size = sorted(scene["objects"], key=lambda o: -o["size"])
        cells = {_CELLS[2 * (o["y"] >= 56) + (o["x"] >= 56)]: o["colour"] for o in by_size}
        return {"shape": scene["shape"], "largest": by_size[0]["colour"],
                "smallest": by_size[-1]["colour"],
                **{cell: cells[cell] for cell in _CELLS if cell in cells}}  # fmt: skip
    if kind == "bars":
        bars = scene["bars"]
        return {**{b["colour"]: str(b["value"]) for b in bars},
                "tallest": max(bars, key=lambda b: b["value"])["colour"],
                "shortest": min(bars, key=lambda b: b["value"])["colour"]}  # fmt: skip
    a, b = scene["digits"]
    return {"left digit": str(a), "right digit": str(b), "ink": scene["ink"]}


_DESCRIBE = {
    "colour": "Describe the shape: its colour, shape, size and position.",
    "count": "How many shapes of each colour are there, and how many in all?",
    "largest": "Describe the shapes: their type, the largest and the smallest, and the "
    "colour in each occupied corner.",
    "bars": "Give each bar's height in units, and the tallest and the shortest bar.",
    "digits": "Read the two digits and the colour of their ink.",
}


def description_text(fields: dict[str, str]) -> str:
    """One `field: value` line per field."""
    return "\n".join(f"{k}: {v}" for k, v in fields.items())


def parse_description(text: str) -> dict[str, str]:
    """`field: value` lines back to fields (the first of a repeated field wins)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip().lower())
    return fields


def score_description(text: str, meta: dict[str, Any]) -> dict[str, bool]:
    """Exact match per field of the scene's description; a missing field is wrong."""
    got = parse_description(text)
    return {k: got.get(k) == v for k, v in describe(meta).items()}


def generate_descriptions(
    n: int,
    *,
    seed: int = 0,
    split: str = "train",
    kinds: Sequence[str] | None = None,
    levels: Sequence[int] = LEVELS,
) -> list[Sample]:
    """`n` describe-the-scene Samples from the same scenes as `generate_tasks` (same
    arguments, same scenes): the question names the fields, the response (and the answer)
    is `description_text(describe(meta))`. The stand-in for a vendor's perception data."""
    samples = []
    for key, meta in _scenes(n, seed, split, kinds, levels):
        text = description_text(describe(meta))
        samples.append(Sample(
            id=f"describe-{meta['kind']}-{key[:12]}", source=f"describe/{meta['kind']}",
            question=f"{IMAGE_PLACEHOLDER}\n{_DESCRIBE[meta['kind']]}", answer=text,
            images=[_png(render(meta))], response=text, meta={**meta, "task": "describe"},
        ))  # fmt: skip
    return samples


# ---------------------------------------------------------------------------------------
# Generation


_SAMPLERS = {
    "colour": _sample_colour,
    "count": _sample_count,
    "bars": _sample_bars,
    "digits": _sample_digits,
    "largest": _sample_largest,
}


def _split_of(key: str) -> str:
    return "test" if int(key[:8], 16) % TEST_SHARE == 0 else "train"


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _scenes(
    n: int, seed: int, split: str, kinds: Sequence[str] | None, levels: Sequence[int]
) -> Iterable[tuple[str, dict[str, Any]]]:
    """`n` (content hash, meta) scenes of `split`: the draws behind `generate_tasks`."""
    kinds = tuple(kinds or KINDS)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not kinds or not set(kinds) <= set(KINDS) or not levels or not set(levels) <= {1, 2, 3}:
        raise ValueError(f"kinds must come from {KINDS} and levels from {LEVELS}")
    seen: set[str] = set()
    answers: dict[str, Counter[str]] = defaultdict(Counter)  # per kind/level/form, so far
    for i in range(n):
        kind, level = kinds[i % len(kinds)], levels[i // len(kinds) % len(levels)]
        rng = random.Random(f"{seed}/{split}/{i}")
        best: tuple[int, str, dict[str, Any], Counter[str], str] | None = None
        for _ in range(1000):
            meta = {"kind": kind, "level": level, "options": None, **_SAMPLERS[kind](rng, level)}
            key = hashlib.sha1(json.dumps(meta, sort_keys=True).encode()).hexdigest()
            if _split_of(key) != split or key in seen:
                continue
            # Balanced answers: the draw is kept when its answer is among the least given so
            # far for its kind/level/form (or new); else the least given one found is kept.
            used, answer = answers[f"{kind}/{level}/{meta['form']}"], solve(meta)
            if best is None or used[answer] < best[0]:
                best = (used[answer], key, meta, used, answer)
            if best[0] <= min(used.values(), default=0):
                break
        if best is None:
            raise RuntimeError(f"no new {split} task of kind {kind} level {level} in 1000 draws")
        _, key, meta, used, answer = best
        used[answer] += 1
        seen.add(key)
        meta.update(image_size=[SIZE, SIZE], split=split, seed=seed, index=i)
        yield key, meta


def generate_tasks(
    n: int,
    *,
    seed: int = 0,
    split: str = "train",
    kinds: Sequence[str] | None = None,
    levels: Sequence[int] = LEVELS,
    with_response: bool = True,
) -> list[Sample]:
    """`n` synthetic tasks as Samples, the same for the same arguments.

    `kinds` (default all of KINDS) and `levels` take turns, so any prefix is balanced and a
    longer call extends a shorter one. `response` holds the teacher's trace when
    `with_response`. Ids derive from the task's content: stable, and never shared between
    splits. `meta` holds kind, level, form, scene, options (MCQ), image_size (width, height),
    split, seed and index.
    """
    return [
        Sample(
            id=f"synthetic-{meta['kind']}-{key[:12]}",
            source=f"synthetic/{meta['kind']}",
            question=_ask(meta),
            answer=solve(meta),
            images=[_png(render(meta))],
            response=teacher_response(meta) if with_response else None,
            meta=meta,
        )
        for key, meta in _scenes(n, seed, split, kinds, levels)
    ]


def _task_type(sample: Sample) -> str:
    meta = sample.meta
    return f"{meta['kind']}/{meta['form']}" if "kind" in meta else sample.source


def chance_accuracy(samples: Iterable[Sample]) -> float:
    """Accuracy of the best constant answer per task type (kind/form), e.g. always "B" or "4".

    This is at least what guessing uniformly among the options would get on balanced data.
    """
    answers: dict[str, Counter[str]] = defaultdict(Counter)
    for sample in samples:
        answers[_task_type(sample)][sample.answer] += 1
    total = sum(sum(c.values()) for c in answers.values())
    if not total:
        return 0.0
    return sum(c.most_common(1)[0][1] for c in answers.values()) / total


def write_synthetic(
    path: str | Path, n: int, *, seed: int = 0, split: str = "train", **kw: Any
) -> Path:
    """Write `n` tasks (see `generate_tasks` for `kw`) to a parquet (or .jsonl) file."""
    write_samples(path, generate_tasks(n, seed=seed, split=split, **kw))
    return Path(path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write synthetic visual reasoning tasks.")
    parser.add_argument("--n", type=int, default=200, help="number of tasks")
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated kinds")
    parser.add_argument("--levels", default="1,2,3", help="comma-separated levels")
    parser.add_argument("--no-response", action="store_true", help="leave out teacher traces")
    parser.add_argument("--out", required=True, help="output .parquet (or .jsonl)")
    args = parser.parse_args(argv)
    samples = generate_tasks(
        args.n,
        seed=args.seed,
        split=args.split,
        kinds=args.kinds.split(","),
        levels=[int(x) for x in args.levels.split(",")],
        with_response=not args.no_response,
    )
    write_samples(args.out, samples)
    print(f"wrote {len(samples)} {args.split} tasks to {args.out}")
    print(f"chance accuracy (best constant answer per kind/form): {chance_accuracy(samples):.3f}")


if __name__ == "__main__":
    main()
