"""Selection: each filter on hand-made rows, the stage end to end, the difficulty filter."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pyarrow.dataset as ds
import pytest

from mmr.data.io import write_samples
from mmr.data.pipeline import select as select_module
from mmr.data.pipeline.config import (
    ContentFilterConfig,
    PipelineConfig,
    SelectConfig,
    StructureFilterConfig,
    VerifyConfig,
)
from mmr.data.pipeline.runner import ShardLog
from mmr.data.pipeline.select import (
    check_content,
    check_structure,
    check_templated,
    count_words,
    find_repeated_ngram,
    run_select,
    select_filter,
)
from mmr.data.pipeline.verify import check_answers, reward_config
from tests.data.pipeline.helpers import long_think, sample
from tests.fake_openai import prompt_text


def _naive_repeat(text: str, n: int, freq: int) -> bool:
    words = text.split()
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return any(c >= freq for c in grams.values())


def test_content_filter():
    cfg = ContentFilterConfig()
    assert check_content(sample(1), cfg) is None
    bad = sample(2, response=f"<think>{long_think()} [ERROR] </think><answer>7</answer>")
    assert check_content(bad, cfg)[0] == "error_keyword"
    assert check_content(sample(3, caption="[ERROR] model down"), cfg)[0] == "error_keyword"
    short = sample(4, response=f"<think>{long_think(150)}</think><answer>7</answer>")
    assert check_content(short, cfg)[0] == "short_response"  # 151 words < 200
    assert check_content(sample(5, caption=long_think(99)), cfg)[0] == "short_caption"
    assert check_content(sample(6, caption=None), cfg)[0] == "no_caption"
    assert check_content(sample(6, caption=None), ContentFilterConfig(min_caption_words=0)) is None


def test_structure_filter():
    cfg = StructureFilterConfig(answer_format="answer_tag")
    ok = sample(1)
    assert check_structure(ok, cfg) is None
    cases = {
        "missing_think": "no tags at all <answer>7</answer>",
        "unclosed_think": "<think> never closed <answer>7</answer>",
        "multiple_think": "<think>a</think><think>b</think><answer>7</answer>",
        "no_final_answer": "<think>a</think> the answer is 7",
    }
    for reason, response in cases.items():
        assert check_structure(sample(2, response=response), cfg)[0] == reason
    boxed = sample(3, response="<think>a</think> so \\boxed{7}")
    assert check_structure(boxed, cfg)[0] == "no_final_answer"
    assert check_structure(boxed, StructureFilterConfig(answer_format="either")) is None
    assert check_structure(sample(4, response="<think>a</think><answer> </answer>"), cfg)
    exempt = StructureFilterConfig(answer_format="answer_tag", no_answer_check_sources=["free"])
    assert check_structure(sample(5, response="<think>a</think> 7", source="free"), exempt) is None
    assert check_structure(sample(5, response="<think>a 7", source="free"), exempt)[0] == (
        "unclosed_think"
    )


def test_templated_filter_finds_a_50_gram_repeated_three_times():
    block = long_think(60, 100)
    twice = f"{long_think(100)} {block} middle {block} end"
    thrice = f"{twice} {block}"
    assert find_repeated_ngram(twice, 50, 3) is None
    found = find_repeated_ngram(thrice, 50, 3)
    assert found is not None and len(found.split()) == 50 and found in block
    assert find_repeated_ngram(" ".join(["loop"] * 52), 50, 3) == " ".join(["loop"] * 50)
    assert find_repeated_ngram(" ".join(["loop"] * 51), 50, 3) is None  # 2 overlapping
    # Two repeated bigrams: the one that starts first is named, whatever their hashes.
    rng = random.Random(2)
    for _ in range(20):
        a, b, c, d = rng.sample(WORDS_SMALL, 4)
        assert find_repeated_ngram(f"{a} {b} " * 3 + f"{c} {d} " * 3, 2, 3) == f"{a} {b}"


def test_ngram_and_word_count_agree_with_plain_python():
    rng = random.Random(0)
    vocab = [
        *WORDS_SMALL,
        "\u00e9t\u00e9",
        "a\u00a0b",
        "x\u3000y",
        "\t",
        "\x1c",
        "x\x07y",
        "\u2019s",
    ]
    for trial in range(300):
        words = [rng.choice(vocab) for _ in range(rng.randint(0, 300))]
        if trial % 3 == 0 and len(words) > 40:
            chunk = words[: rng.randint(3, 40)]
            for _ in range(rng.randint(1, 3)):
                at = rng.randint(0, len(words))
                words[at:at] = chunk
        text = rng.choice(["", " ", "\n"]) + " ".join(words)
        assert count_words(text) == len(text.split())
        for n, freq in ((50, 3), (10, 3), (4, 2)):
            assert (find_repeated_ngram(text, n, freq) is not None) == _naive_repeat(text, n, freq)


WORDS_SMALL = [f"v{i}" for i in range(40)]


def test_select_filter_counts_each_drop():
    rows = [
        sample(0),
        sample(1, response=f"<think>{long_think()}</think><answer>8</answer>"),  # wrong
        sample(2, response=f"<think>{long_think(30)}</think><answer>7</answer>"),  # short
        sample(3, response=f"{long_think()}</think><answer>7</answer>"),  # no <think>
        sample(
            4, response="<think>" + " ".join([long_think(60)] * 4) + "</think><answer>7</answer>"
        ),
        sample(5, response=f"<think>{long_think()}</think><answer>\\frac{{14}}{{2}}</answer>"),
    ]
    log = ShardLog()
    kept = select_filter(rows, SelectConfig(), log)
    assert [s.id for s in kept] == ["s000", "s005"]  # 14/2 == 7 through math-verify
    assert log.counts == {
        "dropped/correctness/wrong_answer": 1,
        "dropped/content/short_response": 1,
        "dropped/structure/missing_think": 1,
        "dropped/templated/repeated_ngram": 1,
    }


@pytest.mark.parametrize("num_proc", [1, 2])
def test_select_stage_writes_shards_report_and_same_rows(tmp_path, num_proc):
    rows = [sample(i) for i in range(30)]
    for row in rows[::4]:
        row.answer = "9"  # the response says 7: every 4th is wrong
    write_samples(tmp_path / "in.parquet", rows)
    cfg = PipelineConfig(num_proc=num_proc, shard_rows=8)
    report = run_select(cfg, tmp_path / "in.parquet", tmp_path / "out", quiet=True)
    table = ds.dataset(tmp_path / "out" / "selected", format="parquet").to_table()
    assert table["id"].to_pylist() == [f"s{i:03d}" for i in range(30) if i % 4]
    assert report["rows_in"] == 30 and report["rows_out"] == 22 and report["shards"] == 4
    assert report["filters"] == {"correctness": {"wrong_answer": 8}}
    assert (tmp_path / "out" / "reports" / "select.json").is_file()
    names = {p.name for p in (tmp_path / "out" / "selected").iterdir()}
    assert all(n.startswith("_") or n.startswith("part-") for n in names)


def test_difficulty_filter_rates_with_the_small_model(tmp_path, server):
    # Question i is answered right by the small model in i of its 4 tries.
    counts: Counter[str] = Counter()

    def script(body):
        q = int(prompt_text(body).split(":")[0][1:])
        counts[q] += 1
        return "\\boxed{7}" if counts[q] <= q else "\\boxed{0}"

    server.script = script
    rows = [sample(i) for i in range(5)]
    rows[4].pass_rate = 0.0  # stored: not asked again
    write_samples(tmp_path / "in.parquet", rows)
    cfg = PipelineConfig()
    cfg.select.difficulty.threshold = 0.5
    cfg.select.difficulty.client.api_base = server.base_url
    report = run_select(cfg, tmp_path / "in.parquet", tmp_path / "out", quiet=True)
    table = ds.dataset(tmp_path / "out" / "selected", format="parquet").to_table()
    assert table["id"].to_pylist() == ["s000", "s001", "s002", "s004"]
    assert table["pass_rate"].to_pylist() == [0.0, 0.25, 0.5, 0.0]
    assert report["filters"]["difficulty"] == {"too_easy": 1}
    assert len(server.requests) == 16  # 4 questions x 4 samples


def test_select_needs_no_server_when_difficulty_and_judge_are_off(tmp_path):
    write_samples(tmp_path / "in.parquet", [sample(0)])
    report = run_select(PipelineConfig(), tmp_path / "in.parquet", tmp_path / "out", quiet=True)
    assert report["rows_out"] == 1


def _one_by_one(rows: list, cfg: SelectConfig) -> list:
    """The rule filters applied sample by sample, each counting its own words."""
    out = []
    for row in rows:
        verdict = None
        for name, check, section in (
            ("content", check_content, cfg.content),
            ("structure", check_structure, cfg.structure),
            ("templated", check_templated, cfg.templated),
        ):
            found = check(row, section) if section.enabled else None
            if found is not None:
                verdict = (name, *found)
                break
        out.append(verdict)
    return out


def test_shard_rule_verdicts_equal_the_one_by_one_filters(monkeypatch):
    # Many small blocks: rows shorter and longer than a block, repeats inside a row, the
    # same n-gram in two rows (never a repeat), wide whitespace and control characters.
    monkeypatch.setattr(select_module, "_BLOCK_BYTES", 300)
    rng = random.Random(1)
    vocab = [*WORDS_SMALL[:12], "\u00e9t\u00e9", "a\u00a0b", "x\u3000y", "\t", "\x1c", "\x00"]
    cfg = SelectConfig()
    cfg.content.min_response_words, cfg.content.min_caption_words = 20, 5
    cfg.templated.ngram_n, cfg.templated.ngram_freq = 4, 3
    shared = " ".join(rng.choice(vocab) for _ in range(6))
    rows = []
    for i in range(400):
        words = [rng.choice(vocab) for _ in range(rng.choice([3, 30, 120]))]
        if i % 3 == 0:
            chunk = words[: rng.randint(3, 8)]
            for _ in range(rng.randint(1, 3)):
                at = rng.randint(0, len(words))
                words[at:at] = chunk
        think = " ".join(words) + (f" {shared} " if i % 5 == 0 else "")
        close = rng.choice(["</think>", "</think>", "", "</think></think>"])
        final = rng.choice(["<answer>7</answer>", "\\boxed{7}", "seven"])
        caption = rng.choice([None, "", " ".join(rng.choice(vocab) for _ in range(8))])
        rows.append(sample(i, response=f"<think>{think}{close}{final}", caption=caption))
    expected = _one_by_one(rows, cfg)
    assert select_module._rule_verdicts(rows, cfg) == expected
    assert {v[0] for v in expected if v} == {"content", "structure", "templated"}
    cfg.content.enabled = False  # the templated filter alone also sees the short rows
    assert select_module._rule_verdicts(rows, cfg) == _one_by_one(rows, cfg)


def test_ngrams_across_two_rows_are_not_repeats():
    words, flagged = select_module._text_stats(["a b c d x a b", "c d y", "a b c d"], (4, 2))
    assert words.tolist() == [7, 3, 4] and not flagged.any()
    words, flagged = select_module._text_stats(["a b c d x a b c d", "q"], (4, 2))
    assert flagged.tolist() == [True, False]


def test_answers_are_checked_on_the_final_part_only():
    # check_answers sends what follows the last </think>; mmr.rewards reads nothing else.
    from mmr.rewards import score_batch

    cases = [
        "<think>so \\boxed{3}</think> the answer is \\boxed{7}",
        "<think>maybe 7</think>\\boxed{3}",
        "<think>a</think>b</think> \\boxed{7}",
        "<think> never closed \\boxed{7}",
        "no tags at all \\boxed{7}",
        "</think>\\boxed{7}",
        "<think>x</think><answer>7</answer>",
        "<think>x</think> Answer: 7",
        "",
    ]
    items = [("What is 3 + 4?", response, "7") for response in cases]
    rows = score_batch(
        [{"question": q, "response": r, "ground_truth": g} for q, r, g in items],
        reward_config(VerifyConfig()),
    )
    expected = [row["accuracy"] == 1.0 for row in rows]
    assert [ok for ok, _ in check_answers(items, VerifyConfig())] == expected
    assert expected == [True, False, True, False, True, True, True, True, False]


def test_a_hash_collision_does_not_hide_a_repeat(monkeypatch):
    # Every word hashed alike: all n-grams share one hash, and the first of them is not the
    # repeated one. The words decide.
    monkeypatch.setattr(
        select_module, "_word_hashes", lambda text: np.zeros(len(text.split()), dtype=np.uint64)
    )
    assert find_repeated_ngram("p q a b a b a b", 2, 3) == "a b"
    assert find_repeated_ngram("p q a b a b c d", 2, 3) is None
