"""Distill throughput: rows/s of the distill stage against an endpoint with a fixed latency.

    .venv/bin/python benchmarks/distill_throughput.py --rows 4000 --concurrency 64 --latency 0.1

Generates synthetic tasks (with images), serves them with the demo's rule teacher
(`python -m mmr.data.teacher_server --latency-s`) in its own process, and runs, in this
one: (1) the client alone (`make_client(...).chat_many` over the stage's own requests) and
(2) the whole distill stage (`run_distill`: requests, parsing, answer verification,
writing parts and the manifest), one shard so that `concurrency` requests are in flight;
each with `engine: openai` (mmr's asyncio client in this process) and, with `--ray-llm`,
`engine: ray_llm` (a Ray Data job through ray.data.llm's HTTP processor, on a local Ray
instance started first and timed apart).
The baseline is what the endpoint allows, concurrency / latency requests per second; each
figure is printed as a ratio of it. Goal (issue 17): the stage >= 0.8x.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _serve(tasks: Path, latency: float) -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmr.data.teacher_server", "--tasks", str(tasks),
         "--port", str(port), "--latency-s", str(latency)],
        stdout=subprocess.DEVNULL, cwd=ROOT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/v1"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{base}/models", timeout=1).close()
            return proc, base
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the teacher server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per reply")
    parser.add_argument("--ray-llm", action="store_true", help="also engine ray_llm")
    args = parser.parse_args()

    from mmr.config import load_config
    from mmr.data.io import read_samples
    from mmr.data.pipeline.client import load_prompt, make_client, render, user_message
    from mmr.data.pipeline.config import PipelineConfig
    from mmr.data.pipeline.distill import run_distill
    from mmr.data.synthetic import write_synthetic

    work = Path(tempfile.mkdtemp(prefix="mmr-distill-bench-"))
    tasks = write_synthetic(work / "tasks.parquet", args.rows, with_response=False)
    proc, base = _serve(tasks, args.latency)
    ideal = args.concurrency / args.latency
    rows: dict[str, dict[str, float]] = {}
    try:
        for engine in ("openai", "ray_llm") if args.ray_llm else ("openai",):
            if engine == "ray_llm":
                import ray

                start = time.perf_counter()
                ray.init(address="local", include_dashboard=False, log_to_driver=False)
                print(f"ray.init: {time.perf_counter() - start:.1f} s (not counted)")
            overrides = [f"distill.cot.client.api_base={base}", "distill.cot.k=1",
                         f"distill.cot.client.concurrency={args.concurrency}",
                         f"distill.cot.client.engine={engine}",
                         f"shard_rows={args.rows}", "num_proc=1"]  # fmt: skip
            cfg = load_config(PipelineConfig, ROOT / "recipes" / "data" / "demo.yaml", overrides)
            samples = read_samples(tasks)
            template = load_prompt("distill", cfg.distill.cot.prompt_file)
            requests = [user_message(s, render(template, question=s.question)) for s in samples]
            client = make_client(cfg.distill.cot.client, "distill.cot.client")
            start = time.perf_counter()
            results = client.chat_many(requests)
            client_s = time.perf_counter() - start
            failed = sum(r.error is not None for r in results)
            start = time.perf_counter()
            report = run_distill(cfg, tasks, work / f"out-{engine}", quiet=True)
            stage_s = time.perf_counter() - start
            rows[f"{engine} client"] = {"rows_per_s": args.rows / client_s, "failed": failed}
            rows[f"{engine} stage"] = {"rows_per_s": args.rows / stage_s,
                                       "kept": report["rows_out"]}  # fmt: skip
    finally:
        proc.kill()
    print(f"endpoint: {args.latency * 1000:.0f} ms per reply, concurrency {args.concurrency}: "
          f"at most {ideal:.0f} requests/s (the baseline)")  # fmt: skip
    for name, r in rows.items():
        r["ratio"] = r["rows_per_s"] / ideal
        print(f"{name:>14}: {r['rows_per_s']:7.1f} rows/s = {r['ratio']:.2f}x the baseline")
    print(json.dumps({"rows": args.rows, "concurrency": args.concurrency,
                      "latency_s": args.latency, **rows}))  # fmt: skip


if __name__ == "__main__":
    main()
