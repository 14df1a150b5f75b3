"""The command line of a training recipe, the same for `mmr sft` and `mmr rl local`.

    sys.exit(launch.main("mmr sft", SFTConfig, train, argv, __doc__, "recipes/*_sft.yaml"))

Parse `--config` and overrides, build the config, and check what can be checked before
any engine starts (the model path, the data files, the folder to resume from); a mistake
is one line naming the key, exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mmr.checkpoint import CheckpointError, find_resume_dir
from mmr.config import ConfigError, load_config, require_paths
from mmr.models.build import check_model_path

__all__ = ["main", "preflight"]


def main(
    prog: str,
    schema: type,
    train: Callable[[Any], Any],
    argv: Sequence[str] | None,
    doc: str | None,
    example: str,
) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n\n")[0])
    parser.add_argument("--config", help=f"recipe YAML ({example})")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(schema, args.config, args.overrides)
        preflight(cfg)
    except (ConfigError, CheckpointError) as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 2
    train(cfg)
    return 0


def preflight(cfg: Any) -> None:
    """The model, the data and the resume folder a recipe names exist and are usable."""
    check_model_path("model.path", cfg.model.path)
    require_paths("data.train_files", cfg.data.train_files)
    find_resume_dir(cfg.trainer.resume, cfg.trainer.output_dir)
