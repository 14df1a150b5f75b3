"""`mmr eval`: generate on a benchmark file, score with `mmr.rewards`, write a table.

    mmr eval --model runs/demo/sft/final --data runs/demo/data/test.parquet --output runs/eval
    mmr eval --model CKPT --data bench.jsonl --backend vllm --n 8 --max-new-tokens 4096 \
        --reward-config reward.yaml judge.enabled=true

`--data` is any Sample file or folder `mmr.data.io.read_samples` reads (.parquet, .jsonl,
MMFineReason, OpenMMReasoner json). `--backend auto` takes vLLM when it is installed and a
GPU is visible, else HF `generate`. Scoring is `mmr.rewards.score_batch` with the default
reward (0.9 accuracy + 0.1 format; judge when USE_LLM_JUDGE is set), or `--reward-config`
plus `key=value` overrides of it. Writes OUT/generations.jsonl, OUT/accuracy.json and
OUT/accuracy.md, and prints the table. Unlike OpenMMReasoner's lmms-eval runs, this scores
with the training reward; `examples/eval.sh` runs lmms-eval's benchmarks.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmr.config import ConfigError, load_config
from mmr.data.io import ReadStats, read_samples
from mmr.eval.generate import BACKENDS, generate, resolve_backend, resolve_temperature
from mmr.eval.report import accuracy_table, format_table, score_generations, write_report
from mmr.rewards import RewardConfig

__all__ = ["evaluate", "main"]


def evaluate(
    model: str,
    data: str,
    *,
    output: str | None = None,
    backend: str = "auto",
    n: int = 1,
    max_new_tokens: int = 1024,
    temperature: float | None = None,
    top_p: float = 1.0,
    batch_size: int = 16,
    limit: int = 0,
    seed: int = 0,
    reward_cfg: RewardConfig | None = None,
    system_prompt: str | None = None,
    dtype: str = "auto",
) -> dict[str, Any]:
    """Generate, score and (with `output`) write the report; returns accuracy.json's dict."""
    stats = ReadStats()
    samples = list(read_samples(data, stats=stats))
    samples = samples[:limit] if limit > 0 else samples
    if not samples:
        raise ValueError(f"{data} holds no readable samples ({stats.summary()})")
    t0 = time.perf_counter()
    gens = generate(samples, model, backend=backend, n=n, max_new_tokens=max_new_tokens,
                    temperature=temperature, top_p=top_p, batch_size=batch_size, seed=seed,
                    system_prompt=system_prompt, dtype=dtype)  # fmt: skip
    t1 = time.perf_counter()
    items = [
        {"id": samples[g.index].id, "data_source": samples[g.index].source,
         "question": samples[g.index].question, "ground_truth": samples[g.index].answer,
         "response": g.text, "response_tokens": g.tokens, "truncated": g.truncated}
        for g in gens
    ]  # fmt: skip
    records = score_generations(items, reward_cfg)
    table = accuracy_table(records)
    meta = {
        "model": str(model),
        "data": str(data),
        "backend": resolve_backend(backend),
        "n": n,
        "max_new_tokens": max_new_tokens,
        "temperature": resolve_temperature(n, temperature),
        "top_p": top_p,
        "seed": seed,
        "dtype": dtype,
        "skipped_rows": dict(stats.skipped),
        "skipped_files": dict(stats.skipped_files),  # unreadable data files, with why
        "generate_s": round(t1 - t0, 2),
        "score_s": round(time.perf_counter() - t1, 2),
    }
    if output:
        write_report(output, records, table, meta)
    return {**meta, "table": table}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmr eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="HF checkpoint folder (SFT final/, RL merge)")
    p.add_argument("--data", required=True, help="Sample file or folder (.parquet, .jsonl)")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="default: auto")
    p.add_argument("--n", type=int, default=1, help="responses per question (default 1)")
    p.add_argument("--max-new-tokens", type=int, default=1024, help="response budget")
    p.add_argument("--temperature", type=float, default=None,
                   help="default: 0 (greedy) for --n 1, else 1.0")  # fmt: skip
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=16, help="HF backend: rows per generate")
    p.add_argument("--limit", type=int, default=0, help="first N questions only (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--system-prompt", default=None)
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="auto: bf16 on GPU, fp32 on CPU (lmms-eval's HF Qwen classes: bf16)")  # fmt: skip
    p.add_argument("--output", default=None, help="folder for generations.jsonl, accuracy.*")
    p.add_argument("--reward-config", default=None, help="RewardConfig YAML (default: defaults)")
    p.add_argument("overrides", nargs="*", help="reward key.sub=value overrides")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `mmr eval`; 0 done, 2 on a bad argument, config or input."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.n < 1 or args.max_new_tokens < 1:
        print("mmr eval: --n and --max-new-tokens must be >= 1", file=sys.stderr)
        return 2
    try:
        reward_cfg = load_config(RewardConfig, args.reward_config, args.overrides)
        result = evaluate(
            args.model, args.data, output=args.output, backend=args.backend, n=args.n,
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
            batch_size=args.batch_size, limit=args.limit, seed=args.seed, reward_cfg=reward_cfg,
            system_prompt=args.system_prompt, dtype=args.dtype,
        )  # fmt: skip
    except (ConfigError, FileNotFoundError, ValueError, OSError) as err:
        print(f"mmr eval: {err}", file=sys.stderr)
        return 2
    finally:
        from mmr.rewards import shutdown

        shutdown()
    print(format_table(result["table"]))
    if args.output:
        print(f"wrote {Path(args.output) / 'generations.jsonl'} and accuracy.json / accuracy.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
