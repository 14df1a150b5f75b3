"""`mmr data`: run the curation stages from one YAML recipe plus `key=value` overrides.

    mmr data run --config recipes/data/mfr.yaml --step all --output DIR [--input FILE] [k=v ...]
    mmr data run --config recipes/data/mfr.yaml --step select --output DIR select.difficulty.threshold=0.0
    mmr data dedup --config recipes/data/omr.yaml --input rl.parquet --output DIR
    mmr data difficulty --config recipes/data/mfr.yaml --input DIR/selected --output DIR
    mmr data run --config recipes/data/mfr.yaml --step all --output DIR executor=ray ray.address=auto

`--step` is collect, clean, distill, select or all (the four in order, each reading the
one before). `--input` is what the step reads: for collect it replaces `collect.paths`;
for another step it defaults to the previous stage's folder under DIR. A stage killed
and run again with the same command resumes from its manifest; `--overwrite` starts it
again. The resolved config is written to DIR/config.yaml (`run`), DIR/config.dedup.yaml or
DIR/config.difficulty.yaml, so a dedup or difficulty pass into the same DIR keeps the
record of the run beside it. Exit status: 0 done, 2 when the config, the input or a model
endpoint is missing or wrong.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from mmr.config import ConfigError, load_config, save_config
from mmr.data.pipeline.config import PipelineConfig
from mmr.data.pipeline.runner import StageError

__all__ = ["main"]

STEPS = ("collect", "clean", "distill", "select")
FOLDERS = {"collect": "collected", "clean": "cleaned", "distill": "distilled", "select": "selected"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmr data", description="Data curation pipeline.")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    helps = {
        "run": "collect -> clean -> distill -> select (one step or all)",
        "dedup": "drop near-duplicate questions (text embedding + image hash), keep the first",
        "difficulty": "pass rate of a small served model on each question",
    }
    for action, text in helps.items():
        p = sub.add_parser(action, help=text, description=text)
        p.add_argument("--config", default=None, help="recipe YAML (default: built-in defaults)")
        p.add_argument("--output", required=True, help="output folder DIR")
        p.add_argument("--input", default=None, help="file or folder to read")
        p.add_argument(
            "--overwrite", action="store_true", help="discard this stage's earlier output"
        )
        p.add_argument("--quiet", action="store_true", help="no progress bars or tables")
        if action == "run":
            p.add_argument("--step", required=True, choices=(*STEPS, "all"))
        p.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    return parser


def _run_step(
    step: str, cfg: PipelineConfig, input_path: str | None, args: argparse.Namespace
) -> None:
    from mmr.data.pipeline import clean, collect, distill, select

    out, kw = Path(args.output), {"overwrite": args.overwrite, "quiet": args.quiet}
    if step == "collect":
        if input_path:
            cfg.collect.paths = [input_path]
        collect.run_collect(cfg, out, **kw)
        return
    source = input_path or out / FOLDERS[STEPS[STEPS.index(step) - 1]]
    if not Path(source).exists():
        raise StageError(
            f"{step} reads {source}, which does not exist: give --input or run the earlier step"
        )
    runner = {"clean": clean.run_clean, "distill": distill.run_distill, "select": select.run_select}
    runner[step](cfg, source, out, **kw)


def _run(args: argparse.Namespace, cfg: PipelineConfig) -> None:
    if args.action == "run":
        steps = STEPS if args.step == "all" else (args.step,)
        for i, step in enumerate(steps):
            _run_step(step, cfg, args.input if i == 0 else None, args)
        return
    if args.input is None:
        raise StageError("needs --input (the file or folder to read)")
    if args.action == "dedup":
        from mmr.data.pipeline.dedup import run_dedup

        run_dedup(cfg, args.input, args.output, overwrite=args.overwrite, quiet=args.quiet)
    else:
        from mmr.data.pipeline.difficulty import run_difficulty

        run_difficulty(cfg, args.input, args.output, overwrite=args.overwrite, quiet=args.quiet)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `mmr data ...`; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(PipelineConfig, args.config, args.overrides)
        name = "config.yaml" if args.action == "run" else f"config.{args.action}.yaml"
        save_config(cfg, Path(args.output) / name)
        _run(args, cfg)
    except (ConfigError, StageError, FileNotFoundError, ValueError) as err:
        print(f"mmr data {args.action}: {err}", file=sys.stderr)
        return 2
    finally:
        from mmr.data.pipeline import ray_executor
        from mmr.rewards import shutdown

        shutdown()  # math-verify workers, judge clients
        ray_executor.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
