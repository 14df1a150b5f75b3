"""Select throughput: mmr's streaming `select` stage against a naive whole-table pandas version.

    .venv/bin/python benchmarks/select_throughput.py --rows 200000 --small-rows 50000

Generates Sample parquet of long CoT rows (about 1,500 words of `<think>` each, a caption,
no images; a tenth of rows fail one filter each: `[ERROR]`, short, templated, wrong answer,
no `</think>`), then in one run measures, each in a fresh process so peak RSS is its own:

- mmr select, `num_proc` workers (default 2), at `--small-rows` and at `--rows`: rows/s and
  peak RSS of the process tree (the stage's memory must not grow with the row count);
- the baseline: pandas reads the whole table, applies the same checks row by row with
  plain Python (str.split, a Counter of 50-gram tuples, the same answer check) and writes
  the kept rows.

Both keep exactly the same ids (checked). Prints rows/s, peak RSS and the ratios.
Goals (issue 7): >= 5,000 rows/s; peak RSS <= 2 GB, not growing with the row count.

Before/after on a shared machine: `--compare DIR` also runs the select of another source
tree of mmr (e.g. `git archive HEAD~1 | tar -x -C /tmp/mmr_old`) on the same `--rows`
input, alternating with this tree `--repeat` times, and prints both with the ratio of
their best runs (and whether they kept the same ids). `--skip-baseline` leaves out the
pandas run (6 minutes and 9 GB at 200,000 rows).

    .venv/bin/python benchmarks/select_throughput.py --compare /tmp/mmr_old --repeat 3 --skip-baseline
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _paragraphs(rng: random.Random, count: int) -> list[str]:
    vocab = [f"w{i}" for i in range(4000)] + ["=", "+", "\\frac{1}{2}", "x^2", "so", "the"]
    return [" ".join(rng.choice(vocab) for _ in range(100)) for _ in range(count)]


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """Write `rows` generated samples (long CoT, no images) to `path`."""
    from mmr.data.io import SampleWriter
    from mmr.data.schema import Sample

    rng = random.Random(seed)
    pool = _paragraphs(rng, 3000)
    caption = " ".join(pool[0].split()[:120])
    with SampleWriter(path, rows_per_group=1024) as writer:
        for i in range(rows):
            answer = str(rng.randint(1, 999))
            paragraphs = rng.sample(pool, 15)  # distinct: no 50-gram repeats by chance
            kind = i % 50
            if kind == 1:
                paragraphs[3] = "[ERROR] " + paragraphs[3]
            elif kind == 2:
                paragraphs = paragraphs[:1]
            elif kind == 3:
                paragraphs = paragraphs[:5] + [paragraphs[5]] * 3  # templated
            final = str(int(answer) + 1) if kind == 4 else answer
            think = "\n\n".join(paragraphs)
            close = "" if kind == 5 else "</think>"
            response = f"<think>{think}{close}\nThe answer is \\boxed{{{final}}}."
            writer.write(
                Sample(
                    id=f"bench-{i:07d}",
                    source="bench",
                    question=f"Question {i}: compute the value shown.",
                    answer=answer,
                    response=response,
                    caption=caption,
                )
            )


def _child(mode: str, src: str, out: str, num_proc: int) -> None:
    """Run one measured job in this (fresh) process; print a JSON line of results."""
    code = os.environ.get("MMR_BENCH_CODE")
    if code:  # --compare: import mmr from that tree (spawned workers inherit sys.path)
        sys.path.insert(0, code)
    start = time.perf_counter()
    if mode == "mmr":
        from mmr.config import load_config
        from mmr.data.pipeline.config import PipelineConfig
        from mmr.data.pipeline.select import run_select

        cfg = load_config(PipelineConfig, None, [f"num_proc={num_proc}", "shard_rows=2000"])
        report = run_select(cfg, src, out, quiet=True)
        rows_in, kept = report["rows_in"], report["rows_out"]
    else:
        rows_in, kept = _pandas_select(src, out)
    elapsed = time.perf_counter() - start
    print(json.dumps({"rows": rows_in, "kept": kept, "seconds": elapsed}))


def _pandas_select(src: str, out: str) -> tuple[int, int]:
    """The naive version: whole table in memory, plain-Python checks per row."""
    from collections import Counter

    import pandas as pd

    from mmr.data.pipeline.config import VerifyConfig
    from mmr.data.pipeline.verify import reward_config
    from mmr.data.schema import extract_boxed
    from mmr.rewards import score_batch

    df = pd.read_parquet(src)

    def rule_ok(response: str, caption: str) -> bool:
        if "[ERROR]" in response or "[ERROR]" in caption:
            return False
        words = response.split()
        if len(words) < 200 or len(caption.split()) < 100:
            return False
        if response.count("<think>") != 1 or response.count("</think>") != 1:
            return False
        if not extract_boxed(response.split("</think>", 1)[1]):
            return False
        grams = Counter(tuple(words[i : i + 50]) for i in range(len(words) - 49))
        return not grams or max(grams.values()) < 3

    mask = [rule_ok(r, c or "") for r, c in zip(df["response"], df["caption"])]
    df = df[mask]
    # The whole responses go to the reward, as a plain caller would send them.
    items = [
        {"question": q, "response": r, "ground_truth": g}
        for q, r, g in zip(df["question"], df["response"], df["answer"])
    ]
    rows = score_batch(items, reward_config(VerifyConfig()))
    df = df[[row["accuracy"] >= 1.0 for row in rows]]
    Path(out).mkdir(parents=True, exist_ok=True)
    df.to_parquet(Path(out) / "selected.parquet")
    return len(mask), len(df)


def measure(mode: str, src: Path, out: Path, num_proc: int, code: str | None = None) -> dict:
    """Run a child process (mmr from `code` when given); sample the RSS of it and its
    workers every 50 ms."""
    return measure_tree([__file__, "--child", mode, str(src), str(out), str(num_proc)], out, code)


def measure_tree(args: list[str], out: Path, code: str | None = None) -> dict:
    """Run `python ARGS` (printing a JSON line with `rows` and `seconds` last) into a fresh
    `out`; add its rows/s and the peak RSS of its process tree, sampled every 50 ms."""
    shutil.rmtree(out, ignore_errors=True)  # a finished stage would not run again
    cmd = [sys.executable, *args]
    env = {**os.environ, "MMR_BENCH_CODE": code} if code else None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=code or ROOT, env=env)
    from mmr.metrics import PeakTreeRSS

    rss = PeakTreeRSS(proc.pid, interval_s=0.05)
    stdout = proc.stdout.read() if proc.stdout else ""
    proc.wait()
    peak = rss.stop()
    if proc.returncode:
        raise SystemExit(f"{' '.join(map(str, args[1:]))} failed ({proc.returncode})")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_rss_mb"] = peak / 2**20
    result["rows_per_s"] = result["rows"] / result["seconds"]
    return result


def _kept_ids(path: Path) -> list[str]:
    import pyarrow.dataset as ds

    return sorted(ds.dataset(path, format="parquet").to_table(columns=["id"])["id"].to_pylist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--small-rows", type=int, default=50_000)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="default: a temporary folder")
    parser.add_argument("--compare", default=None, help="another mmr source tree to time")
    parser.add_argument("--repeat", type=int, default=1, help="alternating runs with --compare")
    parser.add_argument("--skip-baseline", action="store_true", help="no pandas run")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, src, out, num_proc = args.child
        _child(mode, src, out, int(num_proc))
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="select-bench-"))
    results = {}
    for rows in (args.small_rows, args.rows):
        src = work / f"input-{rows}.parquet"
        if not src.exists():
            t = time.perf_counter()
            generate(src, rows)
            print(
                f"generated {rows} rows ({src.stat().st_size / 2**20:.0f} MiB) in "
                f"{time.perf_counter() - t:.0f} s"
            )
        results[rows] = measure("mmr", src, work / f"mmr-{rows}", args.num_proc)
    big = args.rows
    src = work / f"input-{big}.parquet"
    if args.compare:
        _compare(args, src, work, results[big])
    print(f"machine: {os.cpu_count()} CPUs; num_proc={args.num_proc}")
    for rows, r in results.items():
        print(
            f"mmr select    {rows:>7} rows: {r['rows_per_s']:8.0f} rows/s  "
            f"{r['seconds']:6.1f} s  peak RSS {r['peak_rss_mb']:6.0f} MiB  kept {r['kept']}"
        )
    r = results[big]
    if not args.skip_baseline:
        baseline = measure("pandas", src, work / f"pandas-{big}", 1)
        same = _kept_ids(work / f"mmr-{big}" / "selected") == _kept_ids(work / f"pandas-{big}")
        print(
            f"pandas naive  {big:>7} rows: {baseline['rows_per_s']:8.0f} rows/s  "
            f"{baseline['seconds']:6.1f} s  peak RSS {baseline['peak_rss_mb']:6.0f} MiB  "
            f"kept {baseline['kept']}  (kept ids identical: {same})"
        )
        print(
            f"ratio mmr/pandas: {r['rows_per_s'] / baseline['rows_per_s']:.2f}x rows/s, "
            f"{baseline['peak_rss_mb'] / r['peak_rss_mb']:.2f}x less peak RSS"
        )
    small = results[args.small_rows]
    print(
        f"peak RSS {args.small_rows} -> {big} rows: "
        f"{small['peak_rss_mb']:.0f} -> {r['peak_rss_mb']:.0f} MiB "
        f"({r['peak_rss_mb'] / small['peak_rss_mb']:.2f}x for {big / args.small_rows:.0f}x rows)"
    )


def _compare(args: argparse.Namespace, src: Path, work: Path, first: dict) -> None:
    """This tree against `--compare`, alternating on the same input (shared machines)."""
    runs: dict[str, list[dict]] = {"this tree": [first], "compared": []}
    for i in range(args.repeat):
        if i:
            runs["this tree"].append(measure("mmr", src, work / "mmr-this", args.num_proc))
        out = work / "mmr-compared"
        runs["compared"].append(measure("mmr", src, out, args.num_proc, args.compare))
    same = _kept_ids(work / f"mmr-{args.rows}" / "selected") == _kept_ids(out / "selected")
    print(f"compare with {args.compare} ({args.rows} rows, alternating, num_proc={args.num_proc})")
    for name, results in runs.items():
        rates = ", ".join(f"{r['rows_per_s']:.0f}" for r in results)
        print(f"  {name:10} rows/s: {rates}  (best {max(r['rows_per_s'] for r in results):.0f})")
    best = [max(r["rows_per_s"] for r in results) for results in runs.values()]
    print(f"  best this/compared: {best[0] / best[1]:.2f}x; kept ids identical: {same}")


if __name__ == "__main__":
    main()
