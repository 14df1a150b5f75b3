"""Reward throughput: math-verify workers (2 vs 1) and the async judge (64 vs sequential).

    .venv/bin/python benchmarks/rewards.py [--rollouts 4096] [--judge-requests 1024]

Rollouts: 256 prompts x 16 rollouts of mixed difficulty (plain numbers, LaTeX that needs
math-verify, multiple choice, a few pathological answers), answers drawn from a few
variants per prompt as in RL. Printed figures, all measured in this one run:
- baseline: a plain in-process rule + math-verify function without timeouts (unsafe in
  threads, no backstop) - what the safety has to cost nearly nothing against;
- `score_batch` with 1 and with 2 math-verify workers (ms per rollout, and the ratio);
- the machine's ceiling for that ratio: the same distinct math-verify pairs, split evenly
  over 2 warm plain processes (no pool, no IPC per item) against all of them in 1, and a
  control: a pure-Python loop split the same way (work that does not contend for memory);
- judge: N requests to a local server with 100 ms latency at concurrency 64, and a short
  sequential run, extrapolated to N.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mmr first

from mmr.rewards.accuracy import QA, extract_final_answer, relaxed_match
from mmr.rewards.compose import RewardScorer, shutdown
from mmr.rewards.config import RewardConfig

T = "<think>Let me work this out step by step.</think> "


def _latex_prompt(rng: random.Random) -> tuple[str, list[str]]:
    a, b, c = rng.randint(1, 9), rng.randint(2, 9), rng.randint(1, 20)
    kind = rng.randrange(5)
    if kind == 0:
        return f"\\frac{{{a}}}{{{b}}}", [
            f"\\dfrac{{{a * 2}}}{{{b * 2}}}",
            f"{a}/{b}",
            f"\\frac{{{a + 1}}}{{{b}}}",
        ]
    if kind == 1:
        return f"(x+{a})^2", [f"x^2+{2 * a}x+{a * a}", f"x^2+{a * a}", f"(x+{a})(x+{a})"]
    if kind == 2:
        return f"{a}\\sqrt{{{b}}}", [
            f"\\sqrt{{{a * a * b}}}",
            f"{a + 1}\\sqrt{{{b}}}",
            f"\\sqrt{{{b}}}\\cdot {a}",
        ]
    if kind == 3:
        return f"[{a}, {a + c})", [f"x \\in [{a},{a + c})", f"({a}, {a + c})", f"[{a},{a + c})"]
    return f"\\frac{{\\pi}}{{{b}}}", [
        f"\\pi/{b}",
        f"\\frac{{{a}\\pi}}{{{a * b}}}",
        f"\\frac{{\\pi}}{{{b + 1}}}",
    ]


def make_rollouts(n: int, seed: int) -> list[dict]:
    """`n` rollouts in groups of 16: numbers 40%, LaTeX 35%, MCQ 24%, pathological ~1%."""
    rng = random.Random(seed)
    items: list[dict] = []
    for g in range((n + 15) // 16):
        kind = rng.random()
        question = None
        if kind < 0.40:
            gold_value = rng.randint(1, 99_999)
            gold = f"{gold_value:,}" if rng.random() < 0.3 else str(gold_value)
            variants = [str(gold_value), f"{gold_value}.0", f"{gold_value} cm", str(gold_value + 1)]
        elif kind < 0.75:
            gold, variants = _latex_prompt(rng)
        elif kind < 0.99:
            options = rng.sample(range(10, 99), 4)
            question = "Which is it?\n" + "\n".join(f"{L}. {v}" for L, v in zip("ABCD", options))
            gold = rng.choice("ABCD")
            variants = ["(B)", "C", f"{options['ABCD'.index(gold)]}", f"\\text{{{gold}}}", "A. x"]
        else:  # pathological: a 50,000-digit number, 300 nested fractions
            gold = "7"
            variants = ["9" * 50_000, "\\frac{1}{" * 300 + "2" + "}" * 300]
        for _ in range(16):
            answer = rng.choice(variants)
            items.append(
                {
                    "response": T + f"\\boxed{{{answer}}}",
                    "ground_truth": gold,
                    "question": question,
                    "group": g,
                }
            )
    return items[:n]


def baseline(items: list[dict]) -> float:
    """Rules then math-verify, in-process, timeouts off: the unsafe reference."""
    import logging

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeouts are off" notes
    start = time.perf_counter()
    for item in items:
        answer, _ = extract_final_answer(item["response"])
        if answer is None:
            continue
        decision = relaxed_match(answer, item["ground_truth"], item["question"])
        if decision.correct is None and len(answer) <= 1000:
            g = parse(f"${item['ground_truth']}$", parsing_timeout=None)
            p = parse(f"${answer}$", parsing_timeout=None)
            verify(g, p, timeout_seconds=None)
    return time.perf_counter() - start


def timed_scoring(items: list[dict], warmup: list[dict], workers: int) -> tuple[float, list[dict]]:
    cfg = RewardConfig()
    cfg.accuracy.workers = workers
    scorer = RewardScorer(cfg)
    # Starts the workers and warms them (sympy builds caches per kind of expression it
    # meets); different numbers, so no answer or verdict is cached for the timed batch.
    scorer.score_batch(warmup)
    start = time.perf_counter()
    rows = scorer.score_batch(items)
    elapsed = time.perf_counter() - start
    shutdown()  # one pool at a time: the next measurement starts from the same state
    return elapsed, rows


def undecided_pairs(items: list[dict]) -> list[tuple[str, str]]:
    """The distinct (answer, gold) pairs that `score_batch` sends to math-verify."""
    max_chars = RewardConfig().accuracy.max_answer_chars
    pairs = []
    for item in items:
        answer, _ = extract_final_answer(item["response"])
        if answer is None or len(answer) > max_chars:
            continue
        if relaxed_match(answer, item["ground_truth"], item["question"]).correct is None:
            pairs.append((answer, item["ground_truth"]))
    return list(dict.fromkeys(pairs))


def _run_pairs(pairs: list[tuple[str, str]]) -> float:
    from mmr.rewards.verify import run_pair

    start = time.perf_counter()
    for answer, gold in pairs:
        run_pair(answer, gold, 2, 2, False)
    return time.perf_counter() - start


def ceiling(items: list[dict], warmup: list[dict]) -> tuple[float, float]:
    """Seconds for the pairs in 1 process, and split in half over 2 processes at once.

    Both processes are first warmed on another set of pairs (sympy builds caches as it
    meets new kinds of expression). What 2 processes cannot gain here (memory and cache
    contention between the cores) no pool can gain either.
    """
    import multiprocessing as mp

    pairs, warm = undecided_pairs(items), undecided_pairs(warmup)
    with mp.get_context("spawn").Pool(2) as pool:
        pool.map(_run_pairs, [warm, warm], chunksize=1)
        start = time.perf_counter()
        pool.apply(_run_pairs, (pairs,))
        one = time.perf_counter() - start
        start = time.perf_counter()
        pool.map(_run_pairs, [pairs[0::2], pairs[1::2]], chunksize=1)
        two = time.perf_counter() - start
    return one, two


def _spin(n: int) -> float:
    start = time.perf_counter()
    total = 0
    for i in range(n):
        total += i * i % 7
    return time.perf_counter() - start


def cpu_control(n: int = 10_000_000) -> float:
    """The same split for a pure-Python arithmetic loop: what the two cores give to work
    that does not contend for memory (close to 2x on an idle machine)."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(2) as pool:
        pool.map(_spin, [1000, 1000], chunksize=1)
        start = time.perf_counter()
        pool.apply(_spin, (n,))
        one = time.perf_counter() - start
        start = time.perf_counter()
        pool.map(_spin, [n // 2, n // 2], chunksize=1)
        two = time.perf_counter() - start
    return one / two


def bench_judge(n: int, sequential_n: int) -> tuple[float, float]:
    import logging

    from mmr.llm.server import OpenAIServer
    from mmr.rewards.config import JudgeConfig
    from mmr.rewards.judge import Judge

    logging.getLogger("httpx").setLevel(logging.WARNING)
    server = OpenAIServer(reply="CORRECT").start()
    server.latency_s = 0.1
    try:
        results = []
        for concurrency, count in ((64, n), (1, sequential_n)):
            judge = Judge(
                JudgeConfig(enabled=True, base_url=server.base_url, concurrency=concurrency)
            )
            judge.judge_many([QA("warm", "up", f"{concurrency}")])
            items = [QA(f"q{i}", "2", f"answer {concurrency}-{i}") for i in range(count)]
            start = time.perf_counter()
            verdicts = judge.judge_many(items)
            results.append(time.perf_counter() - start)
            assert all(v is True for v in verdicts), "judge benchmark got failures"
            judge.close()
    finally:
        server.stop()
    return results[0], results[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=4096)
    parser.add_argument("--judge-requests", type=int, default=1024)
    parser.add_argument("--warmup-rollouts", type=int, default=4096,
                        help="rollouts (other numbers, same kinds) each pool scores first: "
                             "workers in an RL run are long-lived and warm")  # fmt: skip
    parser.add_argument("--sequential-requests", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3,
                        help="timings of 1 and 2 workers, taken in turn; medians are reported")  # fmt: skip
    args = parser.parse_args()

    items = make_rollouts(args.rollouts, seed=0)
    warmup = make_rollouts(args.warmup_rollouts, seed=1)
    n = len(items)
    t_base = baseline(items)
    # Each side is about a second: one timing of each is at the mercy of whatever else the
    # machine does in that second. Taking them in turn and reporting medians keeps a
    # passing disturbance from deciding the ratio.
    times1, times2, ceilings = [], [], []
    for _ in range(max(args.repeat, 1)):
        t, rows1 = timed_scoring(items, warmup, workers=1)
        times1.append(t)
        t, rows2 = timed_scoring(items, warmup, workers=2)
        times2.append(t)
        assert [r["accuracy"] for r in rows1] == [r["accuracy"] for r in rows2]
        one, two = ceiling(items, warmup)
        ceilings.append(one / two)
    t1, t2 = statistics.median(times1), statistics.median(times2)
    top = statistics.median(ceilings)
    decided = {}
    for r in rows2:
        key = r["decided_by"].split(":")[0]
        decided[key] = decided.get(key, 0) + 1
    print(f"rollouts: {n} (decided by: {decided}); mean accuracy "
          f"{sum(r['accuracy'] for r in rows2) / n:.3f}")  # fmt: skip
    print(
        f"baseline in-process rules + math-verify, no timeouts: {1e3 * t_base / n:.3f} ms/rollout"
    )
    print(f"score_batch, 1 worker : {t1:.2f} s  {1e3 * t1 / n:.3f} ms/rollout  "
          f"(median of {len(times1)}: {', '.join(f'{t:.2f}' for t in times1)} s)")  # fmt: skip
    print(f"score_batch, 2 workers: {t2:.2f} s  {1e3 * t2 / n:.3f} ms/rollout  "
          f"(goal <= 0.5 ms; median of {len(times2)}: {', '.join(f'{t:.2f}' for t in times2)} s)")  # fmt: skip
    print(
        f"2 workers vs 1: {t1 / t2:.2f}x (goal >= 1.8x); 2 workers vs baseline: {t_base / t2:.2f}x"
    )
    print(f"control: a pure-Python loop split over 2 processes vs 1: {cpu_control():.2f}x")
    print(f"ceiling on this machine: the {len(undecided_pairs(items))} math-verify pairs split "
          f"evenly over 2 plain processes vs 1: {top:.2f}x (median of "
          f"{', '.join(f'{c:.2f}' for c in ceilings)}); the pool reaches {t1 / t2 / top:.0%} of it")  # fmt: skip

    t_conc, t_seq = bench_judge(args.judge_requests, args.sequential_requests)
    seq_est = t_seq / args.sequential_requests * args.judge_requests
    print(f"judge, {args.judge_requests} requests, 100 ms latency, concurrency 64: {t_conc:.2f} s "
          f"(goal <= 3 s)")  # fmt: skip
    print(f"judge, sequential: {t_seq:.2f} s for {args.sequential_requests} requests -> "
          f"~{seq_est:.0f} s for {args.judge_requests}; concurrency 64 is {seq_est / t_conc:.0f}x faster")  # fmt: skip


if __name__ == "__main__":
    main()
