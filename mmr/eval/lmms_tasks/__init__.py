"""mmr's lmms-eval task folder: OpenMMReasoner's image benchmarks, prompted as mmr trains and
scored by `mmr.rewards`, so evaluation and training agree.

    python -m lmms_eval --include_path "$(python -m mmr.eval.lmms_tasks)" --tasks mmr_reasoning ...

Task YAMLs (lmms-eval's conventions: `_default_template_yaml` is shared, `utils.py` holds the
functions) are package data; TASKS lists the task names, `mmr_reasoning` groups them all.
Importing this package imports nothing of lmms-eval.
"""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
TASKS = (
    "mmr_mathvista_testmini",
    "mmr_mathverse_testmini",
    "mmr_mathvision_testmini",
    "mmr_wemath_testmini",
    "mmr_logicvista",
    "mmr_dynamath",
    "mmr_mmmu_val",
    "mmr_charxiv_val_reasoning",
    "mmr_charxiv_val_descriptive",
)
GROUP = "mmr_reasoning"

__all__ = ["GROUP", "TASKS", "TASKS_DIR"]
