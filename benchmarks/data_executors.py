"""Data executors: rows/s of select and clean with `executor: local` (a process pool of
`num_proc` workers) against `executor: ray` (a Ray instance on this machine, as many CPUs).

    .venv/bin/python benchmarks/data_executors.py --rows 200000

Generates the Sample parquet of benchmarks/select_throughput.py (long CoT rows, no images,
a tenth failing one filter each), then in one run, each job in a fresh process: clean and
select, each with the local pool and with Ray. Ray's start (`ray.init`, a few seconds) is
timed apart and left out of its rows/s: a cluster is started once for many stages. Peak RSS
is that of the job's process tree (with Ray: its GCS, raylet and workers). Both executors
keep exactly the same ids (checked). Prints rows/s, peak RSS and the ratio Ray/local.
Goal (issue 17): Ray >= 0.85x local on 2 cores.

On a cluster, time the Ray side there instead: `--ray-address auto` (run on the head, with
`--workdir` on shared storage; the local pool then runs on the head alone).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from select_throughput import generate, measure_tree  # noqa: E402

STAGES = ("clean", "select")


def _child(stage: str, executor: str, src: str, out: str, num_proc: int, address: str) -> None:
    """Run one measured job in this (fresh) process; print a JSON line of results."""
    from mmr.config import load_config
    from mmr.data.pipeline.clean import run_clean
    from mmr.data.pipeline.config import PipelineConfig
    from mmr.data.pipeline.select import run_select

    overrides = [f"num_proc={num_proc}", "shard_rows=2000", f"executor={executor}"]
    startup = 0.0
    if executor == "ray":
        import ray

        start = time.perf_counter()
        if address == "local":
            ray.init(address="local", num_cpus=num_proc, include_dashboard=False)
        else:
            ray.init(address=address)
        startup = time.perf_counter() - start
    cfg = load_config(PipelineConfig, None, overrides)
    start = time.perf_counter()
    report = (run_clean if stage == "clean" else run_select)(cfg, src, out, quiet=True)
    elapsed = time.perf_counter() - start
    result = {"rows": report["rows_in"], "kept": report["rows_out"], "seconds": elapsed}
    print(json.dumps({**result, "startup_s": startup}))


def _kept_ids(folder: Path) -> list[str]:
    import pyarrow.dataset as ds

    return ds.dataset(folder, format="parquet").to_table(columns=["id"])["id"].to_pylist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--num-proc", type=int, default=2, help="pool workers = Ray CPUs")
    parser.add_argument("--ray-address", default="local", help="local: a new Ray instance here")
    parser.add_argument("--workdir", default=None, help="default: a temporary folder")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        stage, executor, src, out, num_proc, address = args.child
        _child(stage, executor, src, out, int(num_proc), address)
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="executor-bench-"))
    src = work / f"input-{args.rows}.parquet"
    if not src.exists():
        t = time.perf_counter()
        generate(src, args.rows)
        print(f"generated {args.rows} rows in {time.perf_counter() - t:.0f} s")
    print(f"machine: {os.cpu_count()} CPUs; num_proc={args.num_proc}; ray: {args.ray_address}")
    for stage in STAGES:
        results = {}
        for executor in ("local", "ray"):
            out = work / f"{stage}-{executor}"
            child = [stage, executor, str(src), str(out), str(args.num_proc), args.ray_address]
            results[executor] = r = measure_tree([__file__, "--child", *child], out)
            startup = (
                f"  (ray.init {r['startup_s']:.1f} s, not counted)" if executor == "ray" else ""
            )
            print(
                f"{stage:6} {executor:5} {r['rows']:>7} rows: {r['rows_per_s']:8.0f} rows/s  "
                f"{r['seconds']:6.1f} s  peak RSS {r['peak_rss_mb']:6.0f} MiB  "
                f"kept {r['kept']}{startup}"
            )
        folder = "cleaned" if stage == "clean" else "selected"
        same = _kept_ids(work / f"{stage}-local" / folder) == _kept_ids(
            work / f"{stage}-ray" / folder
        )
        ratio = results["ray"]["rows_per_s"] / results["local"]["rows_per_s"]
        print(
            f"{stage:6} ratio ray/local: {ratio:.2f}x rows/s (goal >= 0.85); same kept ids: {same}"
        )


if __name__ == "__main__":
    main()
