"""verl's GSPO step time on this machine: the demo's verl run for a few steps, per step.

    .venv/bin/python benchmarks/verl_steps.py --demo runs/demo --steps 6
    .venv/bin/python benchmarks/verl_steps.py --demo runs/demo --steps 6 \
        --variant verl.actor_rollout_ref.rollout.max_num_batched_tokens=16384
    .venv/bin/python benchmarks/verl_steps.py --demo runs/demo --steps 6 \
        --variant-env MMR_IMAGE_CACHE_MB=0

What runs: the demo's own GSPO stage on verl (`mmr.demo.run_rl`: `mmr rl prepare`, `mmr rl
train` with recipes/demo/tiny_gspo_verl.yaml and the demo's `rl.verl_overrides`, its rule
judge served, `mmr rl merge`) from the SFT model of a finished demo (`--demo`: its `sft/final` and
`tasks_rl.parquet`), cut to `--steps` steps; then the same with the `--variant` overrides
added (or with `--variant-env` variables in the environment of `mmr rl train`, which its
local Ray cluster's workers inherit), when given. Each prints verl's own per-step timings (`timing_s/step`, `gen`,
`old_log_prob`, `update_actor`, from `VERL_FILE_LOGGER_PATH`) and vLLM's probability gap to
the actor (`training/rollout_probs_diff_max`; with the demo's bypass mode, where vLLM's
log-probs are the old ones, `actor/ppo_kl` is that gap: ~3e-6, and a variant that sends vLLM
another prompt than the actor trains on shows it at once); the first step (vLLM's warm-up) is shown but
left out of the mean. With a variant, the ratio of its mean step time to the baseline's,
both measured in this run. Needs the RL venv (`make setup-rl`); both runs are serial, so
load from other work slows both alike only if it lasts: run it on a quiet machine.
Figures and the machine they came from: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLUMNS = ("timing_s/step", "timing_s/gen", "timing_s/old_log_prob", "timing_s/update_actor",
           "training/rollout_probs_diff_max", "actor/ppo_kl", "reward/gen_batches")  # fmt: skip


def run(demo: Path, steps: int, extra: list[str], out: Path) -> list[dict]:
    """The demo's verl GSPO stage for `steps` steps into `out`; verl's metrics per step."""
    from mmr.config import load_config
    from mmr.demo import DEFAULT_CONFIG, VERL_METRICS, DemoConfig, judge_server, run_rl

    cfg = load_config(DemoConfig, str(DEFAULT_CONFIG), [f"output_dir={demo}"])
    cut = [f"verl.trainer.total_training_steps={steps}", f"verl.trainer.save_freq={steps}"]
    prompts = demo / "tasks_rl.parquet"
    if not prompts.is_file():
        prompts = demo / "tasks_train.parquet"
    with judge_server(cfg.rl) as (_, judge):  # the demo's reward: its rule judge on
        run_rl(cfg, "verl", demo / "sft" / "final", prompts, out, [*judge, *cut, *extra])
    rows = [json.loads(line) for line in (out / VERL_METRICS).read_text().splitlines()]
    return [{"step": r["step"], **{k: r["data"].get(k) for k in COLUMNS}} for r in rows]


def show(name: str, rows: list[dict], wall_s: float) -> float:
    print(f"\n{name}: {len(rows)} steps, {wall_s:.0f} s wall (start-up and merge included)")
    print("step " + " ".join(f"{c.split('/')[-1]:>16}" for c in COLUMNS))
    for r in rows:
        cells = " ".join(f"{r[c]:>16.4g}" if r[c] is not None else f"{'-':>16}" for c in COLUMNS)
        print(f"{r['step']:>4} {cells}")
    steady = [r["timing_s/step"] for r in rows[1:]]
    mean = statistics.mean(steady) if steady else float("nan")
    print(f"mean step after the first: {mean:.2f} s")
    return mean


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", required=True, help="a finished demo's output_dir")
    p.add_argument("--steps", type=int, default=6, help="GSPO steps per run (>= 2)")
    p.add_argument("--variant", nargs="*", default=[], help="overrides to compare, verl.k=v")
    p.add_argument(
        "--variant-env", nargs="*", default=[], help="KEY=VALUE for the variant's workers"
    )
    p.add_argument("--out", default=None, help="where the runs go (default: a temp folder)")
    args = p.parse_args(argv)
    demo = Path(args.demo)
    if not (demo / "sft" / "final").is_dir() or args.steps < 2:
        p.error("--demo needs a finished demo (sft/final) and --steps >= 2")
    env = dict(item.split("=", 1) for item in args.variant_env if "=" in item)
    if len(env) != len(args.variant_env):
        p.error("--variant-env takes KEY=VALUE items")
    out = Path(args.out or tempfile.mkdtemp(prefix="verl_steps_"))
    variant = [*args.variant, *(f"env:{k}={v}" for k, v in env.items())]
    means = {}
    for name, extra in [("baseline", []), *([("variant", args.variant)] if variant else [])]:
        start = time.perf_counter()
        with mock.patch.dict(os.environ, env if name == "variant" else {}):
            rows = run(demo, args.steps, extra, out / name)
        label = " ".join(variant) if name == "variant" else ""
        means[name] = show(f"{name} {label}".strip(), rows, time.perf_counter() - start)
    if "variant" in means:
        ratio = means["variant"] / means["baseline"]
        print(f"\nvariant / baseline mean step time: {ratio:.2f}x ({' '.join(variant)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
