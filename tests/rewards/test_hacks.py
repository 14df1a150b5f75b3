"""Reward hacking: responses written to score without being right, and right answers that
must not be lost. Each case: response tail (after `<think>...</think>`), gold, question,
the accuracy mmr must give, and why. The whole suite is one `score_batch` call through
the math-verify worker pool, so every case also runs within the configured timeouts.
"""

from __future__ import annotations

import time

import pytest

from mmr.rewards import RewardConfig, score_batch

T = "<think>Let me work it out.</think>\n"
MCQ = "Which one?\nA. 7\nB. 9\nC. 12\nD. 15"
BIG_DISTINCT = " ".join(rf"\boxed{{{i}}}" for i in range(20_000))  # ~200 KB, 20,000 answers
BIG_SAME = r"\boxed{4} " * 20_000  # ~200 KB, one answer repeated

# (response, gold, question, expected accuracy, reason)
CASES = [
    # integers compare exactly; tolerance is for decimals
    (T + r"\boxed{12345679}", "12345678", None, 0, "an 8-digit integer off by one"),
    (T + r"\boxed{1000001}", "1000000", None, 0, "a 7-digit integer off by one"),
    (T + r"\boxed{99999999}", "100000000", None, 0, "integers, relative gap 1e-8"),
    (T + r"\boxed{-7}", "7", None, 0, "the sign matters"),
    (T + r"\boxed{12345678}", "12345678", None, 1, "the same integer"),
    (T + r"\boxed{12,345,678}", "12345678", None, 1, "thousands separators"),
    (T + r"\boxed{3.1415926}", "3.14159265", None, 1, "decimals within 1e-6 relative"),
    (T + r"\boxed{1e6}", "1000000", None, 1, "scientific notation, same value"),
    (T + r"\boxed{2/4}", "1/2", None, 1, "equal fractions"),
    (T + r"\boxed{0.5}", r"\frac{1}{2}", None, 1, "decimal and fraction of one value"),
    (T + r"\boxed{12345678.0000001}", "12345678", None, 1, "a decimal side: tolerance"),
    # a percent has one reading, decided by the gold
    (T + r"\boxed{50\%}", "0.5", None, 1, "gold a fraction: 50% is 0.5"),
    (T + r"\boxed{0.5\%}", "0.5", None, 0, "gold a fraction: 0.5% is 0.005"),
    (T + r"\boxed{50\%}", "50", None, 1, "gold a whole number: percent units"),
    (T + r"\boxed{5000\%}", "50", None, 0, "gold a whole number: 5000% is not 50"),
    (T + r"\boxed{50}", r"50\%", None, 1, "gold in percent: the sign may be left out"),
    (T + r"\boxed{0.5}", r"50\%", None, 0, "gold in percent: 0.5 is 0.5%"),
    (T + r"\boxed{50 percent}", r"50\%", None, 1, "the word percent"),
    # only real units are stripped; other trailing (or leading) words are not
    (T + r"\boxed{12 thousand}", "12", None, 0, "a multiplier is not a unit"),
    (T + r"\boxed{12 \text{ million}}", "12", None, 0, "a multiplier in \\text"),
    (T + r"\boxed{5 or more}", "5", None, 0, "a qualifier is not a unit"),
    (T + r"\boxed{3 approximately}", "3", None, 0, "a qualifier is not a unit"),
    (T + r"\boxed{about 5}", "5", None, 0, "a leading qualifier"),
    (T + r"\boxed{at least 5}", "5", None, 0, "a leading qualifier"),
    (T + r"\boxed{5 or 6}", "5", None, 0, "two numbers joined by words"),
    (T + r"\boxed{12 cm}", "12", None, 1, "a length unit"),
    (T + r"\boxed{12\text{ cm}}", "12", None, 1, "a unit in \\text"),
    (T + r"\boxed{12 \mathrm{kg}}", "12", None, 1, "a unit in \\mathrm"),
    (T + r"\boxed{90^\circ}", "90", None, 1, "degrees"),
    (T + r"\boxed{12 m^2}", "12", None, 1, "an area unit"),
    (T + r"\boxed{7 \text{ units}}", "7", None, 1, "units"),
    (T + r"\boxed{3 hours}", "3", None, 1, "a time unit"),
    (T + r"\boxed{\$25}", "25", None, 1, "currency"),
    # several different final answers for one gold are a hedge
    (T + r"\boxed{3} or \boxed{4}", "4", None, 0, "two boxed guesses"),
    (T + r"\boxed{A} \boxed{B} \boxed{C} \boxed{D}", "C", MCQ, 0, "every option boxed"),
    (T + "<answer>A</answer> <answer>C</answer>", "C", MCQ, 0, "two answer tags"),
    (T + r"\boxed{A or C}", "C", MCQ, 0, "A or B inside one box"),
    (T + r"\boxed{A, B, C, D}", "C", MCQ, 0, "all options listed in one box"),
    (T + r"\boxed{4} and again \boxed{4}", "4", None, 1, "one answer written twice"),
    (T + BIG_DISTINCT, "7", None, 0, "200 KB of 20,000 different boxes"),
    (T + BIG_SAME, "4", None, 1, "200 KB of one answer repeated: not a hedge"),
    # several boxes that together are a multi-part gold
    (T + r"\boxed{1} and \boxed{-2}", "1,-2", None, 1, "both roots, gold order"),
    (T + r"\boxed{-2} and \boxed{1}", "1,-2", None, 1, "both roots, any order (a set)"),
    (T + r"\boxed{1} and \boxed{3}", "1,-2", None, 0, "one root wrong"),
    (T + r"\boxed{1}, \boxed{-2}, \boxed{5}", "1,-2", None, 0, "an extra part"),
    (T + r"\boxed{x=2} and \boxed{x=3}", "2, 3", None, 1, "pairs of solutions"),
    (T + r"\boxed{2}", "2, 3", None, 0, "one of two parts"),
    (T + r"\boxed{1, -2}", "1,-2", None, 1, "both parts in one box"),
    # the last explicit final answer wins; a phrase yields its math
    (
        T + r"First $\boxed{5}$ pairs, then more. Final Answer: The final answer is $10,455$",
        "10455",
        None,
        1,
        "a final statement after a box in the working",
    ),
    (
        T + r"First $\boxed{5}$ pairs, then more. Final Answer: The final answer is $10,455$",
        "5",
        None,
        0,
        "the box in the working is not the final answer",
    ),
    (T + r"\boxed{7}. Final answer: 7", "7", None, 1, "box and statement agree"),
    (T + "Answer: The largest n is 34", "34", None, 1, "the phrase's math, not its words"),
    (T + "Answer: The largest n is 35", "34", None, 0, "the phrase's math, wrong"),
    (T + "The answer is 12.", "12", None, 1, "answer is ..."),
    (T + "So the final answer is $x = 6$.", "6", None, 1, "answer is, with an assignment"),
    # where the answer is
    (r"<think>\boxed{4}</think> I am not sure.", "4", None, 0, "the answer only in thinking"),
    ("<think>the answer is 4", "4", None, 0, "thinking never closed"),
    (T + "```python\nprint(4)\n```", "4", None, 0, "code, no final answer"),
    (T + "4", "4", None, 0, "a bare number, no final-answer form"),
    ("", "4", None, 0, "empty response"),
    (T + r"\boxed{}", "0", None, 0, "an empty box"),
    # sets, signs and intervals that cover everything
    (T + r"\boxed{\pm 2}", "2", None, 0, "plus-minus is two answers"),
    (T + r"\boxed{\pm 2}", r"\pm 2", None, 1, "plus-minus asked for"),
    (T + r"\boxed{(-\infty, \infty)}", "[0, 1]", None, 0, "the whole real line"),
    (T + r"\boxed{\mathbb{R}}", "[0, 1]", None, 0, "all reals"),
    (T + r"\boxed{(-\infty,\infty)}", r"(-\infty,\infty)", None, 1, "the whole line asked for"),
    # multiple choice
    (T + r"\boxed{C}", "C", MCQ, 1, "the letter"),
    (T + r"\boxed{(C)}", "C", MCQ, 1, "the letter in parentheses"),
    (T + r"\boxed{C. 12}", "C", MCQ, 1, "letter and option text"),
    (T + r"\boxed{12}", "C", MCQ, 1, "the option's text"),
    (T + r"\boxed{B}", "C", MCQ, 0, "another letter"),
    # LaTeX bombs: bounded by math-verify's timeouts in the worker pool
    (T + r"\boxed{9^{9^{9^{9}}}}", "1", None, 0, "a power tower"),
    (T + r"\boxed{" + "+".join(["1"] * 5000) + "}", "7", None, 0, "a 5,000-term sum"),
]


@pytest.fixture(scope="module")
def scored():
    items = [
        {"response": r, "ground_truth": g, "question": q, "data_source": "hacks"}
        for r, g, q, _, _ in CASES
    ]
    cfg = RewardConfig()
    start = time.monotonic()
    rows = score_batch(items, cfg)
    return rows, time.monotonic() - start, cfg


def test_hack_suite_is_large_enough():
    assert len(CASES) >= 60


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c[4] for c in CASES])
def test_hack_case(scored, index):
    rows, _, _ = scored
    _, gold, _, expected, reason = CASES[index]
    row = rows[index]
    assert row["accuracy"] == expected, (
        f"{reason}: gold {gold!r}, extracted {row['extracted_answer']!r}, "
        f"decided by {row['decided_by']!r}"
    )


def test_hack_suite_runs_within_the_timeouts(scored):
    rows, seconds, cfg = scored
    acc = cfg.accuracy
    # every case is bounded: nothing waits on a runaway parse
    per_case = acc.parse_timeout_s + acc.verify_timeout_s + 2
    assert seconds < per_case * 3 + 60, seconds
    assert all(row["decided_by"] != "error" for row in rows)


def test_curation_agrees_with_the_reward_on_every_case(scored):
    # One answer policy: the data pipeline's correctness check (select, distill,
    # difficulty) decides "right" exactly as the reward does.
    from mmr.data.pipeline.config import VerifyConfig
    from mmr.data.pipeline.verify import check_answers

    rows, _, _ = scored
    verdicts = check_answers([(q or "", r, g) for r, g, q, _, _ in CASES], VerifyConfig())
    assert [ok for ok, _ in verdicts] == [row["accuracy"] == 1 for row in rows]


def test_hack_suite_agreement_is_printed(scored, capsys):
    rows, seconds, _ = scored
    got = [row["accuracy"] for row in rows]
    want = [case[3] for case in CASES]
    false_pos = sum(g == 1 and w == 0 for g, w in zip(got, want))
    false_neg = sum(g == 0 and w == 1 for g, w in zip(got, want))
    agree = sum(g == w for g, w in zip(got, want))
    with capsys.disabled():
        print(
            f"\nreward hack suite: {agree}/{len(CASES)} agree, {false_pos} false positives, "
            f"{false_neg} false negatives, {seconds:.1f} s"
        )
    assert false_pos == 0 and false_neg == 0
