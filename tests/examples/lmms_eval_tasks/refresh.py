"""Rewrite a task listing beside this file from a git checkout of an lmms-eval task source.

    python tests/examples/lmms_eval_tasks/refresh.py lmms-eval.txt CHECKOUT v0.7.2 lmms_eval/tasks \
        https://github.com/EvolvingLMMs-Lab/lmms-eval
    python tests/examples/lmms_eval_tasks/refresh.py openmmreasoner.txt CHECKOUT HEAD lmms_eval_tasks \
        https://github.com/EvolvingLMMs-Lab/OpenMMReasoner

CHECKOUT is a clone of github.com/EvolvingLMMs-Lab/lmms-eval (or .../OpenMMReasoner); REF the
commit or tag the listing is read at; the last argument names the source in the header. A name is what a task YAML declares with `task:` or
`group:` (the names `--tasks` accepts); the first line records the source and commit.
"""

import re
import subprocess
import sys
from pathlib import Path

NAME = re.compile(r"""^(?:task|group):\s*["']?([A-Za-z0-9_.\-]+)["']?\s*(?:#.*)?$""", re.M)


def listing(checkout: str, ref: str, folder: str) -> tuple[str, list[str]]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", checkout, *args], capture_output=True, text=True, check=True
        ).stdout

    commit = git("rev-parse", f"{ref}^{{commit}}").strip()
    names = set()
    for path in git("ls-tree", "-r", "--name-only", commit, folder).splitlines():
        if path.endswith((".yaml", "_yaml")):
            names.update(NAME.findall(git("show", f"{commit}:{path}")))
    return commit, sorted(names)


def main() -> None:
    out, checkout, ref, folder, source = sys.argv[1:6]
    commit, names = listing(checkout, ref, folder)
    header = f"# {source} {folder} at {ref} = {commit}: task and group names, one a line\n"
    Path(__file__).with_name(out).write_text(header + "".join(n + "\n" for n in names))


if __name__ == "__main__":
    main()
