"""lmms-eval task functions of this folder, by the names its YAMLs use (`!function utils.X`):
`<benchmark>_doc_to_messages`, `_doc_to_visual`, `_doc_to_text`, `_doc_to_target` and
`_process_results` for each benchmark of mmr.eval.lmms_tasks.adapters. lmms-eval loads this
file by path, so it holds only absolute imports.
"""

from mmr.eval.lmms_tasks.adapters import all_task_functions

globals().update(all_task_functions())
