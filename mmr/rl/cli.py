"""`mmr rl ACTION ...`: prepare data, train on verl, merge its checkpoint, or debug locally.

mmr rl prepare --input curated.parquet --output data/rl
mmr rl train --config recipes/omr_7b_gspo.yaml [--dry-run] [verl.key=value ...]
mmr rl merge --checkpoint OUT/checkpoints/global_step_N/actor --out OUT/hf
mmr rl local --config recipes/demo/tiny_gspo.yaml [key=value ...]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = __doc__.split("\n\n")[1]
ACTIONS = ("prepare", "train", "local", "merge")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: mmr rl {{{','.join(ACTIONS)}}} ...\n\n{USAGE}")
        return 0 if argv else 2
    action, rest = argv[0], argv[1:]
    if action == "prepare":
        from mmr.rl.dataset import main as run
    elif action == "train":
        from mmr.rl.train import main as run
    elif action == "local":
        from mmr.rl.local import main as run
    elif action == "merge":
        from mmr.rl.merge import main as run
    else:
        print(
            f"mmr rl: unknown action {action!r}; choose from {', '.join(ACTIONS)}", file=sys.stderr
        )
        return 2
    return run(rest)
