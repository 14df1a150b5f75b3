"""mmr.data.synthetic: determinism, held-out split, exact answers, teacher traces, parquet."""

from __future__ import annotations

import io
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from mmr.data.io import read_samples
from mmr.data.schema import Sample, check_sample, count_placeholders
from mmr.data.synthetic import (
    INK,
    KINDS,
    PALETTE,
    chance_accuracy,
    describe,
    generate_descriptions,
    generate_tasks,
    main,
    recheck_count,
    render,
    score_description,
    skips_lookup,
    teacher_response,
    write_synthetic,
)
from mmr.rewards.accuracy import extract_final_answer

N = 300  # 20 tasks of each kind and level


@pytest.fixture(scope="module")
def train() -> list[Sample]:
    return generate_tasks(N, seed=0, split="train")


@pytest.fixture(scope="module")
def test() -> list[Sample]:
    return generate_tasks(N, seed=0, split="test")


def _recompute(meta: dict) -> str:
    """The answer from the scene, written independently of the generator's `solve`."""
    scene = meta["scene"]
    if meta["kind"] == "colour":
        (only,) = scene["objects"]
        return only["colour"]
    if meta["kind"] == "count":
        target = scene["target"]
        hits = [
            o
            for o in scene["objects"]
            if o["colour"] == target["colour"]
            and (target["shape"] is None or o["shape"] == target["shape"])
        ]
        return str(len(hits))
    if meta["kind"] == "digits":
        a, b = scene["digits"]
        return str({"sum": a + b, "product": a * b}[meta["form"]])
    if meta["form"] == "diff":
        height = {b["colour"]: b["value"] for b in scene["bars"]}
        return str(height[scene["compare"][0]] - height[scene["compare"][1]])
    if meta["kind"] == "bars":
        ranked = sorted(scene["bars"], key=lambda b: b["value"])
        colour = ranked[-1 if meta["form"] == "tallest" else 0]["colour"]
    else:
        colour = sorted(scene["objects"], key=lambda o: o["size"])[-1]["colour"]
    return "ABCD"[meta["options"].index(colour)]


def _pixel(image: Image.Image, x: int, y: int) -> tuple[int, int, int]:
    return image.getpixel((x, y))


def _check_image_shows_scene(image: Image.Image, meta: dict) -> None:
    """Probe pixels: every object, bar and digit segment in `meta` is where it says."""
    scene = meta["scene"]
    if meta["kind"] in ("colour", "count", "largest"):
        for o in scene["objects"]:
            assert _pixel(image, o["x"], o["y"]) == PALETTE[o["colour"]]
    elif meta["kind"] == "bars":
        for b in scene["bars"]:
            top = scene["baseline"] - b["value"] * scene["unit"]
            x = (b["x0"] + b["x1"]) // 2
            assert _pixel(image, x, top) == PALETTE[b["colour"]]
            assert _pixel(image, x, top - 1) != PALETTE[b["colour"]]
    else:
        segments = ("abcdef", "bc", "abdeg", "abcdg", "bcfg", "acdfg", "acdefg", "abc", "abcdefg")
        segments += ("abcdfg",)
        for digit, (x, y, w, h, t) in zip(scene["digits"], scene["boxes"]):
            centres = {
                "a": (x + w // 2, y + t // 2),
                "b": (x + w - 1 - t // 2, y + h // 4),
                "c": (x + w - 1 - t // 2, y + 3 * h // 4),
                "d": (x + w // 2, y + h - 1 - t // 2),
                "e": (x + t // 2, y + 3 * h // 4),
                "f": (x + t // 2, y + h // 4),
                "g": (x + w // 2, y + h // 2),
            }
            for seg, (px, py) in centres.items():
                lit = _pixel(image, px, py) == INK[scene["ink"]]
                assert lit == (seg in segments[digit]), (digit, seg)


def test_same_seed_gives_identical_samples(train: list[Sample]) -> None:
    assert generate_tasks(N, seed=0, split="train") == train  # images' bytes included
    assert generate_tasks(N // 2, seed=0, split="train") == train[: N // 2]
    other = generate_tasks(N // 2, seed=1, split="train")
    assert not {s.id for s in other} & {s.id for s in train}


def test_train_and_test_never_share_a_task(train: list[Sample], test: list[Sample]) -> None:
    other_seed = generate_tasks(N, seed=7, split="test")
    for held_out in (test, other_seed):
        assert not {s.id for s in train} & {s.id for s in held_out}
        shown = {(s.question, s.images[0]) for s in train}
        assert not any((s.question, s.images[0]) in shown for s in held_out)
    assert len({s.id for s in train}) == len(train)
    assert {s.meta["split"] for s in test} == {"test"}


def test_answers_are_exact_and_images_show_the_scene(
    train: list[Sample], test: list[Sample]
) -> None:
    for sample in train + test:
        assert sample.answer == _recompute(sample.meta), sample.id
        image = Image.open(io.BytesIO(sample.images[0]))
        image.load()
        assert image.format == "PNG"
        assert list(image.size) == sample.meta["image_size"]
        assert image.size[0] % 28 == 0 and image.size[1] % 28 == 0
        _check_image_shows_scene(image.convert("RGB"), sample.meta)
        assert render(sample.meta).tobytes() == image.convert("RGB").tobytes()


def test_teacher_traces_are_short_correct_and_well_formed(train: list[Sample]) -> None:
    shape = re.compile(r"<think>[^<>]+</think>\n\\boxed\{[^{}]+\}")
    for sample in train:
        response = sample.response
        assert response == teacher_response(sample) == teacher_response(sample.meta)
        assert shape.fullmatch(response), response
        assert response.count("<think>") == response.count("</think>") == 1
        assert extract_final_answer(response) == (sample.answer, "boxed")
        assert len(response.split()) < 60
    bare = generate_tasks(8, with_response=False)
    assert all(s.response is None for s in bare)
    assert [s.answer for s in bare] == [s.answer for s in train[:8]]


def test_traces_state_the_deciding_fact_before_the_answer(train: list[Sample]) -> None:
    # The colour a multiple-choice task turns on comes before the option letter, and a
    # count before anything derived from it: the image, not the trace's own text, is
    # then the only source of that token (see _think).
    for sample in train:
        meta, think = sample.meta, sample.response.split("</think>")[0]
        if meta.get("options"):
            # The colour first, then the options read out in order up to the answer's.
            k = "ABCD".index(sample.answer)
            colour, read = meta["options"][k], think.lower()
            steps = [f"option {x} is {c}".lower() for x, c in zip("ABCD", meta["options"])]
            assert read.index(colour) < read.index(steps[0]), think
            assert (
                ", ".join(steps[: k + 1]) + f". so the answer is {sample.answer.lower()}." in read
            )
            assert k == 3 or steps[k + 1] not in read, think
        elif meta["kind"] == "colour":
            assert think.endswith(f" is {sample.answer}."), think
        elif meta["kind"] == "count":
            assert f"There are {sample.answer} " in think, think


def test_rechecks_follow_the_task_hash_not_the_answer(train: list[Sample]) -> None:
    from mmr.data.pipeline.select import find_repeated_ngram

    counts = Counter()
    by_answer: dict[str, set[int]] = {}
    for sample in train:
        plain, verbose = teacher_response(sample), teacher_response(sample, max_rechecks=3)
        k = recheck_count(sample.meta, 3)
        # The same task: the same count, with what a pipeline adds to meta or not.
        assert k == recheck_count({**sample.meta, "path": 0, "teacher": "rule-teacher"}, 3)
        assert teacher_response(sample.meta, max_rechecks=3) == verbose
        think, plain_think = verbose.split("</think>")[0], plain.split("</think>")[0]
        # The first sentence(s) and the answer exactly as without re-checks; k sentences more.
        assert verbose.startswith(plain_think + (" " if k else "</think>")), verbose
        assert verbose.split("</think>")[1] == plain.split("</think>")[1]
        assert extract_final_answer(verbose) == (sample.answer, "boxed")
        extra = think[len(plain_think) :]
        assert extra.count(". ") + extra.endswith(".") == k, verbose
        # Varied wording: no opening twice, and no 8-word run the templated filter drops.
        openings = [part.split(",")[0].split(":")[0] for part in extra.split(". ")]
        assert len(set(openings)) == len(openings), verbose
        assert find_repeated_ngram(verbose, 8, 3) is None, verbose
        counts[k] += 1
        by_answer.setdefault(f"{sample.meta['kind']}/{sample.answer}", set()).add(k)
    assert set(counts) == {0, 1, 2, 3} and min(counts.values()) > len(train) / 8, counts
    # Independent of the answer: an answer seen often gets most counts, not one of them.
    answers = Counter(f"{s.meta['kind']}/{s.answer}" for s in train)
    for answer, n in answers.items():
        assert n < 12 or len(by_answer[answer]) >= 3, (answer, by_answer[answer])
    assert recheck_count(train[0].meta, 0) == 0
    assert teacher_response(train[0], max_rechecks=0) == train[0].response
    with pytest.raises(ValueError, match="max_rechecks"):
        teacher_response(train[0], max_rechecks=7)


def test_skipped_lookups_follow_the_task_hash_and_stay_correct(train: list[Sample]) -> None:
    skipped, by_answer = Counter(), {}
    for sample in train:
        meta = sample.meta
        lookup = meta["kind"] == "largest" or (meta["kind"] == "bars" and meta["form"] != "diff")
        short = teacher_response(sample, skip_lookup=0.6)
        # The same task, the same choice, whatever a pipeline adds to meta.
        skip = skips_lookup(meta, 0.6)
        assert skip == skips_lookup({**meta, "path": 0, "teacher": "rule-teacher"}, 0.6)
        assert not skips_lookup(meta, 0.0) and skips_lookup(meta, 1.0) == lookup
        assert extract_final_answer(short) == (sample.answer, "boxed")
        if not skip:
            assert short == sample.response, short
            continue
        assert lookup, meta
        # The colour the answer turns on, then the letter at once: no option read out.
        head = sample.response.split(". ")[0]
        assert short == (
            f"{head}, which is option {sample.answer}. So the answer is "
            f"{sample.answer}.</think>\n\\boxed{{{sample.answer}}}"
        ), short
        assert "option a is" not in short.lower()
        skipped[meta["kind"]] += 1
        by_answer.setdefault(sample.answer, 0)
        by_answer[sample.answer] += 1
    n = sum(s.meta["kind"] == "largest" for s in train)
    assert 0.4 * n < skipped["largest"] < 0.8 * n, (skipped, n)
    assert set(by_answer) == set("ABCD"), by_answer  # independent of the answer
    # With re-checks too: the skipped step and the re-checks compose.
    both = teacher_response(train[0], max_rechecks=3, skip_lookup=1.0)
    assert both.startswith(teacher_response(train[0], skip_lookup=1.0).split("</think>")[0])
    for bad in (-0.1, 1.5, "half"):
        with pytest.raises(ValueError, match="skip_lookup"):
            teacher_response(train[0], skip_lookup=bad)
    # skip_form="answer": the same tasks skip every step, the letter alone.
    for sample in train:
        bare = teacher_response(sample, skip_lookup=0.6, skip_form="answer")
        if skips_lookup(sample.meta, 0.6):
            assert bare == (
                f"<think>The answer is option {sample.answer}.</think>\n\\boxed{{{sample.answer}}}"
            )
        else:
            assert bare == sample.response
    with pytest.raises(ValueError, match="skip_form"):
        teacher_response(train[0], skip_lookup=0.5, skip_form="colour")


def test_colour_tasks_show_one_shape_that_shrinks_with_level(train: list[Sample]) -> None:
    colour = [s for s in train if s.meta["kind"] == "colour"]
    assert {s.meta["level"] for s in colour} == {1, 2, 3}
    for sample in colour:
        (shape,) = sample.meta["scene"]["objects"]
        low, high = ((40, 56), (26, 40), (16, 26))[sample.meta["level"] - 1]
        assert low <= shape["size"] <= high
        assert sample.answer == shape["colour"] and sample.meta["options"] is None


def test_questions_placeholders_and_options(train: list[Sample]) -> None:
    letters: Counter[str] = Counter()
    for sample in train:
        check_sample(sample)
        assert count_placeholders(sample.question) == len(sample.images) == 1
        assert "\\boxed{}" in sample.question
        assert sample.source == f"synthetic/{sample.meta['kind']}"
        options = re.findall(r"^([A-D])\. (\w+)$", sample.question, re.M)
        if sample.meta["options"]:
            assert [letter for letter, _ in options] == list("ABCD")
            assert len({colour for _, colour in options}) == 4
            letters[sample.answer] += 1
        else:
            assert not options
            assert sample.answer.isdigit() or sample.answer in PALETTE
    # Shuffled options: every letter is the answer about a quarter of the time.
    assert min(letters.values()) > 0.15 * sum(letters.values())


def test_kinds_and_levels_are_balanced_and_recorded(train: list[Sample]) -> None:
    cells = Counter((s.meta["kind"], s.meta["level"]) for s in train)
    assert set(cells) == {(k, level) for k in KINDS for level in (1, 2, 3)}
    assert set(cells.values()) == {N // 15}
    only = generate_tasks(9, kinds=["digits"], levels=[3])
    assert {(s.meta["kind"], s.meta["level"]) for s in only} == {("digits", 3)}
    with pytest.raises(ValueError):
        generate_tasks(1, split="validation")
    with pytest.raises(ValueError):
        generate_tasks(1, kinds=["nope"])


@pytest.mark.parametrize("split", ["train", "test"])
def test_answers_are_balanced_so_a_constant_scores_one_in_k(split: str) -> None:
    # The demo's kinds: each count, option letter and colour equally often (+-1) within a
    # kind/level/form, so a policy that collapses to one answer gains nothing over 1/k.
    tasks = generate_tasks(600, split=split, kinds=["colour", "count", "largest"], levels=[1])
    for kind, k in (("colour", 6), ("count", 4), ("largest", 4)):
        answers = Counter(s.answer for s in tasks if s.meta["kind"] == kind)
        assert len(answers) == k and max(answers.values()) - min(answers.values()) <= 1, answers
        assert chance_accuracy([s for s in tasks if s.meta["kind"] == kind]) <= 1 / k + 0.01
    # A longer call still extends a shorter one: balancing depends on the draws before only.
    assert [s.id for s in generate_tasks(60, split=split)] == [
        s.id for s in generate_tasks(90, split=split)[:60]
    ]


def test_levels_bring_values_closer(train: list[Sample]) -> None:
    for sample in train:
        meta = sample.meta
        if meta["kind"] == "bars" and meta["form"] != "diff":
            values = sorted(b["value"] for b in meta["scene"]["bars"])
            gap = values[-1] - values[-2] if meta["form"] == "tallest" else values[1] - values[0]
            assert gap >= 3 if meta["level"] == 1 else gap == 4 - meta["level"]
        if meta["kind"] == "largest":
            sizes = sorted(o["size"] for o in meta["scene"]["objects"])
            assert len(sizes) == meta["level"] + 1
            low, high = ((14, 20), (8, 12), (4, 6))[meta["level"] - 1]
            assert low <= sizes[-1] - sizes[-2] <= high


def test_chance_accuracy_is_low(train: list[Sample], test: list[Sample]) -> None:
    assert chance_accuracy(train) < 0.4
    assert chance_accuracy(test) < 0.4
    for kind in KINDS:
        assert chance_accuracy([s for s in train if s.meta["kind"] == kind]) < 0.5
    constant = [Sample(id=str(i), source="x", question="q", answer="1") for i in range(5)]
    assert chance_accuracy(constant) == 1.0
    assert chance_accuracy([]) == 0.0


def test_parquet_round_trip_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_synthetic(tmp_path / "tasks.parquet", 24, seed=3, split="test")
    assert list(read_samples(path)) == generate_tasks(24, seed=3, split="test")
    out = tmp_path / "cli.parquet"
    main(["--n", "8", "--split", "train", "--kinds", "bars,count", "--out", str(out)])
    read = list(read_samples(out))
    assert read == generate_tasks(8, kinds=["bars", "count"])
    assert "wrote 8 train tasks" in capsys.readouterr().out


def test_descriptions_are_the_tasks_scenes_field_by_field(train):
    described = generate_descriptions(N, seed=0, split="train")
    for task, d in zip(train, described):
        assert d.images == task.images  # the same scene, drawn the same
        assert {**d.meta, "task": None} == {**task.meta, "task": None}
        assert d.source == f"describe/{task.meta['kind']}" and d.answer == d.response
        check_sample(d)
        assert all(score_description(d.response, d.meta).values())
        assert "<think>" not in d.response and "boxed" not in d.response
    colour = next(d for d in described if d.meta["kind"] == "colour")
    fields = describe(colour.meta)
    assert list(fields) == ["colour", "shape", "size", "position"]
    wrong = colour.response.replace(f"colour: {fields['colour']}", "colour: nope")
    assert score_description(wrong, colour.meta) == {**dict.fromkeys(fields, True), "colour": False}
    assert not any(score_description("a red thing", colour.meta).values())  # no fields: all wrong
    count = next(d for d in described if d.meta["kind"] == "count")
    tally = Counter(o["colour"] for o in count.meta["scene"]["objects"])
    assert describe(count.meta) == {
        **{c: str(tally[c]) for c in PALETTE if tally[c]},
        "total": str(sum(tally.values())),
    }
    largest = next(d for d in described if d.meta["kind"] == "largest")
    assert (
        describe(largest.meta)["largest"]
        == max(largest.meta["scene"]["objects"], key=lambda o: o["size"])["colour"]
    )
    assert generate_descriptions(6, seed=0, split="test", kinds=["bars", "digits"]) == (
        generate_descriptions(6, seed=0, split="test", kinds=["bars", "digits"])
    )
