"""`python -m mmr.eval.lmms_tasks` prints the task folder, for lmms-eval's --include_path."""

from mmr.eval.lmms_tasks import TASKS_DIR

print(TASKS_DIR)
