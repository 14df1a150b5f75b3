"""mmr's lmms-eval task folder (mmr/eval/lmms_tasks): its YAMLs, one doc per benchmark shaped
like that dataset's rows, and lmms-eval 0.7.3's own evaluator against `mmr eval` on the same
synthetic rows (the lmms-eval tests skip without lmms-eval, and fail in CI, which installs it)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from transformers import AutoConfig, GenerationConfig

from mmr.data.io import read_samples
from mmr.data.synthetic import INSTRUCTION, teacher_response, write_synthetic
from mmr.eval import lmms_tasks, score_generations
from mmr.eval.cli import evaluate
from mmr.eval.lmms_tasks import adapters, utils
from mmr.models import load_processor, tiny
from mmr.models.generate import vision_token_ids

DRIVER = Path(__file__).with_name("lmms_driver.py")
TASK_YAMLS = sorted(lmms_tasks.TASKS_DIR.glob("mmr_*.yaml"))


def _has_lmms_eval() -> bool:
    try:
        import lmms_eval  # noqa: F401
    except ImportError:
        return False
    return True


def _need_lmms_eval() -> None:
    if _has_lmms_eval():
        return
    message = "lmms-eval is not installed (pip install --no-deps -r requirements/lmms-eval.txt)"
    if os.environ.get("CI"):
        pytest.fail(message)  # CI installs it: the bridge must be tested there
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _rules_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # MMR_REWARD_CONFIG as a user sets it; math-verify in this thread (no worker start-up).
    config = tmp_path / "reward.yaml"
    config.write_text("accuracy:\n  workers: 0\n")
    monkeypatch.setenv("MMR_REWARD_CONFIG", str(config))
    monkeypatch.delenv("USE_LLM_JUDGE", raising=False)
    adapters.reward_config.cache_clear()
    yield
    adapters.reward_config.cache_clear()


def test_every_yaml_names_a_task_its_dataset_and_functions_that_exist() -> None:
    names, groups = [], []
    for path in TASK_YAMLS:
        text = path.read_text()
        for function in re.findall(r"!function utils\.(\w+)", text):
            assert callable(getattr(utils, function, None)), f"{path.name}: {function}"
        if "group:" in text:
            groups.append(re.search(r"^group: (\S+)$", text, re.M)[1])
            continue
        names.append(re.search(r"^task: (\S+)$", text, re.M)[1])
        assert re.search(r"^dataset_path: \S+/\S+$", text, re.M), path.name
        assert re.search(r"^test_split: \w+$", text, re.M), path.name
        assert "include: _default_template_yaml" in text, path.name
    assert sorted(names) == sorted(lmms_tasks.TASKS) and groups == [lmms_tasks.GROUP]
    template = (lmms_tasks.TASKS_DIR / "_default_template_yaml").read_text()
    assert "max_new_tokens: 49152" in template and "temperature: 0" in template


def _png(colour: str) -> Image.Image:
    return Image.new("RGB", (28, 28), colour)


def _encoded(colour: str) -> bytes:
    buf = io.BytesIO()
    _png(colour).save(buf, format="PNG")
    return buf.getvalue()


# One doc per benchmark with the fields (and types) its Hugging Face rows have; each expects
# the question text, the images in prompt order (by colour) and the gold answer.
# fmt: off
DOCS = {
    "mathvista": (
        {"query": "Hint: answer with the option letter.\nQuestion: Which is larger?\n"
         "Choices:\n(A) 3\n(B) 5", "question": "Which is larger?", "choices": ["3", "5"],
         "answer": "5", "question_type": "multi_choice", "decoded_image": _png("red")},
        "Question: Which is larger?", ["red"], "B"),
    "mathverse": (
        {"query_cot": "Find x. Choices: A:1 B:2", "answer": "B", "image": _png("red"),
         "question_type": "multi-choice"}, "Find x. Choices: A:1 B:2", ["red"], "B"),
    "mathvision": (
        {"question": "Which figure?", "options": ["P", "Q"], "answer": "A",
         "decoded_image": _png("red")}, "Which figure?\nA. P\nB. Q\n" + adapters.MC_INSTRUCTION,
        ["red"], "A"),
    "wemath": (
        {"question": "How long is AB?", "option": "A. 2cm; B. 3cm", "answer": "B",
         "image_path": _png("red")}, "How long is AB?\nA. 2cm; B. 3cm", ["red"], "B"),
    "logicvista": ({"question": "What comes next?", "answer": "C", "image": _png("red")},
                   "What comes next?", ["red"], "C"),
    "dynamath": ({"question": "What is f(2)?", "ground_truth": "4",
                  "decoded_image": _png("red")}, "What is f(2)?", ["red"], "4"),
    "mmmu": (
        {"question": "Compare <image 2> with <image 1>.", "options": "['<image 3>', 'none']",
         "answer": "A", "question_type": "multiple-choice", "image_1": _png("red"),
         "image_2": _png("blue"), "image_3": _png("green"), "image_4": None},
        "Compare <image> with <image>.\nA. <image>\nB. none", ["blue", "red", "green"], "A"),
    "charxiv_descriptive": (
        {"descriptive_q": "What is its title?", "descriptive_a": "Loss", "image": _png("red")},
        "What is its title?", ["red"], "Loss"),
    # mmr's own Sample rows (the tiny task below): images as encoded bytes.
    "sample": (
        {"question": f"<image>\nWhat colour?\n{INSTRUCTION}", "answer": "red",
         "images": [_encoded("red")]}, "What colour?", ["red"], "red"),
}
# fmt: on
COLOURS = {"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 128, 0)}


def _check_adapter(name: str, doc: dict, text: str, colours: list[str], gold: str) -> None:
    f = {fn: getattr(utils, f"{name}_{fn}") for fn in
         ("doc_to_messages", "doc_to_visual", "doc_to_text", "doc_to_target", "process_results")}  # fmt: skip
    assert f["doc_to_target"](doc) == gold
    assert text.replace("<image>", "") in f["doc_to_text"](doc)
    assert "<image>" not in f["doc_to_text"](doc) and text in adapters.prompt(name, doc)
    assert [img.getpixel((0, 0)) for img in f["doc_to_visual"](doc)] == [
        COLOURS[c] for c in colours
    ]
    (turn,) = f["doc_to_messages"](doc)
    parts = turn["content"]
    assert [p["url"].getpixel((0, 0)) for p in parts if p["type"] == "image"] == [
        COLOURS[c] for c in colours
    ]
    assert parts[-1]["type"] == "text" and parts[-1]["text"].endswith(INSTRUCTION)
    system = f["doc_to_messages"](doc, {"system_prompt": "Think."})
    assert system[0] == {"role": "system", "content": [{"type": "text", "text": "Think."}]}
    right, wrong = f"<think>ok</think> \\boxed{{{gold}}}", "<think>ok</think> \\boxed{Z9}"
    assert f["process_results"](doc, [right]) == {"acc": 1.0, "format": 1.0}
    assert f["process_results"](doc, [right, wrong, "no tags"]) == pytest.approx(
        {"acc": 1 / 3, "format": 2 / 3}
    )


@pytest.mark.parametrize("name", sorted(DOCS))
def test_benchmark_adapter_on_a_doc_shaped_like_its_rows(name: str) -> None:
    _check_adapter(name, *DOCS[name])


def test_mathvista_free_form_gold_and_text_only_mathverse() -> None:
    doc = {"query": "How many?", "choices": None, "answer": "7", "question_type": "free_form",
           "decoded_image": _png("red")}  # fmt: skip
    assert utils.mathvista_doc_to_target(doc) == "7"
    text_only = {"query_cot": "Solve 2x=4.", "answer": "2", "image": "", "question_type": "x"}
    assert utils.mathverse_doc_to_visual(text_only) == []
    (turn,) = utils.mathverse_doc_to_messages(text_only)
    assert [p["type"] for p in turn["content"]] == ["text"]


def test_charxiv_reasoning_adapter_words_questions_as_lmms_eval_does() -> None:
    _need_lmms_eval()
    from lmms_eval.tasks.charxiv.reasoning.utils import charxiv_reasoning_doc_to_text_cot

    doc = {"reasoning_q": "Which line is highest?", "reasoning_a": "blue",
           "reasoning_q_source": 1, "image": _png("red")}  # fmt: skip
    _check_adapter("charxiv_reasoning", doc, charxiv_reasoning_doc_to_text_cot(doc).strip(),
                   ["red"], "blue")  # fmt: skip


MAX_NEW_TOKENS = 10


@pytest.mark.timeout(300)
def test_lmms_eval_and_mmr_eval_agree_on_the_same_rows(tmp_path: Path) -> None:
    """lmms-eval's `qwen2_5_vl` class (bf16, its processor given the checkpoint's pixel
    budget) and `mmr eval --dtype bfloat16 --batch-size 1` decode the same greedy responses,
    which both score the same, row by row. The tiny random model is wrong on every row, so a
    replay model (a doc's response given, nothing generated) also runs lmms-eval's scoring
    and aggregation on right and wrong answers, against mmr's scoring of the same texts.

    mmr never lets a response hold an image token (mmr.models.generate); lmms-eval's class
    passes no such rule, so the checkpoint's generation config carries it (HF `generate`
    reads it there), else a random model's `<|image_pad|>` would part the two. lmms-eval
    also stops at the tokenizer's eos only, mmr at `<|endoftext|>` too: this model's greedy
    responses on these rows hold neither. Seed 1: its responses differ on every row (seed 0's
    repeat one text on three of these four rows), so a prompt or image that differs shows."""
    _need_lmms_eval()
    model = tiny.build("qwen2_5_vl", tmp_path / "tiny", seed=1)
    config = GenerationConfig.from_pretrained(model)
    config.suppress_tokens = vision_token_ids(AutoConfig.from_pretrained(model))
    config.save_pretrained(model)
    rows = tmp_path / "rows.parquet"
    write_synthetic(rows, 4, split="test")
    samples = list(read_samples(rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "mmr_tiny.yaml").write_text(
        "task: mmr_tiny\ndataset_path: parquet\n"
        f"dataset_kwargs:\n  data_files:\n    test: {rows}\ntest_split: test\n"
        f"include: {lmms_tasks.TASKS_DIR / '_sample_template_yaml'}\n"
        f"generation_kwargs:\n  max_new_tokens: {MAX_NEW_TOKENS}\n"
    )
    size = load_processor(model).image_processor.size
    model_args = (f"pretrained={model},device_map=cpu,"
                  f"min_pixels={size['shortest_edge']},max_pixels={size['longest_edge']}")  # fmt: skip
    replay = {
        i: teacher_response(s.meta) if i % 2 == 0 else "<think>no idea</think> \\boxed{99}"
        for i, s in enumerate(samples)
    }
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"include": [str(lmms_tasks.TASKS_DIR), str(tasks)],
                                "task": "mmr_tiny", "models": {"tiny": model_args},
                                "replay": replay}))  # fmt: skip
    out = tmp_path / "lmms.json"
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf_datasets")}
    proc = subprocess.run([sys.executable, str(DRIVER), str(spec), str(out)], env=env,
                          capture_output=True, text=True, timeout=280)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    lmms = json.loads(out.read_text())
    # The packaged folder indexes (every benchmark task and the group) and every YAML's
    # functions resolve through lmms-eval's own loader.
    assert set(lmms_tasks.TASKS) | {lmms_tasks.GROUP, "mmr_tiny"} <= set(lmms["index"])
    functions = ["doc_to_messages", "doc_to_target", "doc_to_text", "doc_to_visual",
                 "process_results"]  # fmt: skip
    for path in [*TASK_YAMLS, tasks / "mmr_tiny.yaml"]:
        if path.name != f"{lmms_tasks.GROUP}.yaml":
            extra = ["process_docs"] if "process_docs" in path.read_text() else []
            assert lmms["configs"][path.name] == sorted(functions + extra), path.name

    mine = evaluate(str(model), str(rows), output=str(tmp_path / "mmr"), backend="hf",
                    max_new_tokens=MAX_NEW_TOKENS, batch_size=1, dtype="bfloat16")  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "mmr" / "generations.jsonl").open()]
    theirs = lmms["tiny"]["samples"]
    assert [s["doc_id"] for s in theirs] == list(range(len(samples)))
    assert [s["response"] for s in theirs] == [r["response"] for r in records]
    assert len({r["response"] for r in records}) == len(samples)  # each row its own
    assert [(s["acc"], s["format"]) for s in theirs] == [
        (r["accuracy"], r["format"]) for r in records
    ]
    assert lmms["tiny"]["acc"] == mine["table"]["all"]["accuracy"]
    assert lmms["tiny"]["format"] == mine["table"]["all"]["format"]

    items = [{"id": s.id, "question": s.question, "ground_truth": s.answer, "response": replay[i]}
             for i, s in enumerate(samples)]  # fmt: skip
    scored = score_generations(items)
    assert [(s["acc"], s["format"]) for s in lmms["replay"]["samples"]] == [
        (r["accuracy"], r["format"]) for r in scored
    ]
    assert lmms["replay"]["acc"] == 0.5 and lmms["replay"]["format"] == 1.0
