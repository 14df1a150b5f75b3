"""The `mmr` command: one subcommand per stage.

    mmr models tiny --family qwen2_5_vl --out DIR   build a tiny offline model (tests, demo)
    mmr models list                                 the supported model families
    mmr sft | rl | data | reward | eval | demo      the stages

A subcommand parses only its own flags and hands the rest (`key.sub=value` overrides)
to its stage, so each stage keeps its options next to its code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each stage's entry point, imported only when its command runs (keeps `mmr --help` fast).
_STAGES = {
    "sft": "mmr.sft.train:main",
    "rl": "mmr.rl.cli:main",
    "data": "mmr.data.pipeline.cli:main",
    "reward": "mmr.rewards.cli:main",
    "eval": "mmr.eval.cli:main",
    "demo": "mmr.demo:main",
}

_HELP = {
    "sft": "supervised fine-tuning (torchrun + DeepSpeed ZeRO-2)",
    "rl": "GSPO reinforcement learning on verl",
    "data": "data curation: collect, clean, distill, select, dedup, difficulty",
    "reward": "score responses with the mmr reward",
    "eval": "generate and score on a benchmark file",
    "demo": "run the whole pipeline on a tiny model, offline, on CPU",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmr",
        description="Train multimodal reasoning models: curated data -> SFT -> GSPO RL.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _STAGES:
        sub.add_parser(
            name,
            add_help=False,  # each stage parses its own flags, `--help` included
            help=_HELP[name],
            description=_HELP[name],
            epilog="Flags and key.sub=value overrides after the command go to the stage.",
        )
    _add_models_parser(sub)
    return parser


def _add_models_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="supported model families and tiny test models")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    msub.add_parser("list", help="list the supported model families")
    tiny = msub.add_parser("tiny", help="build a tiny model, tokenizer and processor offline")
    tiny.add_argument("--family", required=True, help="qwen2_5_vl or qwen3_vl")
    tiny.add_argument("--out", required=True, help="output folder (loadable by from_pretrained)")
    tiny.add_argument("--seed", type=int, default=0, help="weight init seed (default 0)")
    tiny.add_argument("--hidden-size", type=int, default=64, help="text model width (default 64)")
    tiny.add_argument("--intermediate-size", type=int, default=128, help="text MLP width")
    tiny.add_argument("--layers", type=int, default=2, help="text decoder layers (default 2)")
    tiny.add_argument(
        "--head-dim", type=int, default=16, help="attention head width (64 for vLLM-CPU rollouts)"
    )


def _run_models(args: argparse.Namespace) -> int:
    from mmr.models import FAMILIES, tiny

    if args.models_command == "list":
        for family in FAMILIES.values():
            print(
                f"{family.name:12s} model_type={family.model_type:12s} {family.model_class.__name__}"
            )
        return 0
    if args.family not in FAMILIES:
        print(f"mmr models tiny: unknown family {args.family!r}; choose from {', '.join(FAMILIES)}")
        return 2
    try:
        out = tiny.build(args.family, args.out, seed=args.seed, hidden_size=args.hidden_size,
                         intermediate_size=args.intermediate_size, layers=args.layers,
                         head_dim=args.head_dim)  # fmt: skip
    except ValueError as err:
        print(f"mmr models tiny: {err}", file=sys.stderr)
        return 2
    print(f"wrote a tiny {args.family} model to {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Stage flags are the stage's own: the top-level parser only picks the command.
    args, stage_argv = parser.parse_known_args(argv)
    if args.command == "models":
        if stage_argv:
            parser.error(f"unrecognized arguments: {' '.join(stage_argv)}")
        return _run_models(args)
    module_name, _, fn_name = _STAGES[args.command].partition(":")
    stage_main = getattr(importlib.import_module(module_name), fn_name)
    return stage_main(stage_argv)


if __name__ == "__main__":
    sys.exit(main())
