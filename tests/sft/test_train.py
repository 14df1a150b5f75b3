"""The SFT recipe end to end on CPU: real DeepSpeed ZeRO-2 (gloo), tiny models, real CLI.

Each run is a subprocess of `mmr sft` (or torchrun), as users launch it.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from mmr.data.io import write_samples
from mmr.data.schema import Sample

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "demo" / "tiny_sft.yaml"


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (56, 56), (value * 25, 255 - value * 25, 60)).save(buf, format="PNG")
    return buf.getvalue()


def _write_data(path: Path, n: int = 96, text_only_every: int = 3) -> Path:
    rng = random.Random(0)
    samples = []
    for i in range(n):
        k = rng.randint(1, 9)
        with_image = i % text_only_every != 0
        question = ("<image>" if with_image else "") + f"What is {k} plus {k}?"
        samples.append(
            Sample(
                id=f"s{i}",
                source="unit",
                question=question,
                answer=str(2 * k),
                images=[_png(k)] if with_image else [],
                response=f"<think>{k} plus {k} is {2 * k}.</think>\\boxed{{{2 * k}}}",
            )
        )
    write_samples(path, samples)
    return path


def _sft(out: Path, data: Path, *overrides: str, base: Path, wait: bool = True):
    cmd = [
        str(BIN / "mmr"),
        "sft",
        "--config",
        str(RECIPE),
        f"model.path={base}",
        f"data.train_files=[{data}]",
        f"trainer.output_dir={out}",
        "data.packing_length=256",
        "data.max_length=256",
        *overrides,
    ]
    if not wait:
        return subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(out: Path) -> dict[int, float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _write_data(tmp_path_factory.mktemp("sft_data") / "train.parquet")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data, tiny_qwen2_5_vl) -> Path:
    out = tmp_path_factory.mktemp("sft_ref")
    _sft(out, data, "trainer.max_steps=8", "trainer.save_steps=4", base=tiny_qwen2_5_vl)
    return out


def test_loss_falls_and_run_folder_is_complete(reference_run):
    out = reference_run
    losses = _losses(out)
    assert sorted(losses) == list(range(1, 9))
    assert losses[8] < losses[1] - 0.5
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_s",
                "perf/non_pad_fraction", "perf/mfu"):  # fmt: skip
        assert key in record
    assert 0.5 < record["perf/non_pad_fraction"] <= 1.0
    assert (out / "config.yaml").is_file()
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_8"


# Checkpoints on disk use the original Qwen layout: the vision tower is `visual.*`.
VISION_PREFIX = "visual."


def test_frozen_weights_are_bit_identical_and_trained_ones_moved(reference_run, tiny_qwen2_5_vl):
    base = load_file(tiny_qwen2_5_vl / "model.safetensors")
    final = load_file(reference_run / "final" / "model.safetensors")
    assert base.keys() == final.keys()
    visual = [k for k in base if k.startswith(VISION_PREFIX)]
    assert visual
    for key in visual:
        assert torch.equal(base[key], final[key]), key
    language = [k for k in base if k.startswith("model.layers.")]
    assert any(not torch.equal(base[k], final[k]) for k in language)


def test_only_trainable_parameters_reach_the_optimizer(reference_run, tiny_qwen2_5_vl):
    folder = reference_run / "checkpoints" / "step_8"
    optim_file = next(folder.glob("*optim_states.pt"))
    state = torch.load(optim_file, weights_only=False)["optimizer_state_dict"]
    partitions = state["single_partition_of_fp32_groups"]
    n_optimized = sum(p.numel() for p in partitions)
    base = load_file(tiny_qwen2_5_vl / "model.safetensors")
    n_language = sum(v.numel() for k, v in base.items() if not k.startswith(VISION_PREFIX))
    n_visual = sum(v.numel() for k, v in base.items() if k.startswith(VISION_PREFIX))
    # ZeRO pads the flat partition to an alignment boundary; never by a vision tower's worth.
    assert n_language <= n_optimized < n_language + min(n_visual, 1024)


def test_export_reloads_and_generates(reference_run):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    final = reference_run / "final"
    model = AutoModelForImageTextToText.from_pretrained(final)
    processor = AutoProcessor.from_pretrained(final)
    assert model.config.text_config.use_cache is True
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Sum?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image = Image.open(io.BytesIO(_png(3))).convert("RGB")
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_killed_run_resumes_with_the_same_losses(tmp_path, data, reference_run, tiny_qwen2_5_vl):
    out = tmp_path / "killed"
    # The reference run reads its data in the loop (CPU default); this one in the prefetch
    # thread: the same order, so the same losses.
    proc = _sft(out, data, "trainer.max_steps=8", "trainer.save_steps=4", "data.prefetch=2",
                base=tiny_qwen2_5_vl, wait=False)  # fmt: skip
    deadline = time.time() + 300
    # Kill it (SIGKILL: no cleanup) once it has trained past the step-4 checkpoint.
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").is_file() and len(_losses(out)) >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_4"

    _sft(out, data, "trainer.max_steps=8", "trainer.save_steps=4", "trainer.resume=auto",
         "data.prefetch=2", base=tiny_qwen2_5_vl)  # fmt: skip
    resumed, reference = _losses(out), _losses(reference_run)
    assert sorted(resumed) == sorted(reference)
    for step in reference:
        assert resumed[step] == pytest.approx(reference[step], abs=1e-6), step


def test_text_only_and_image_samples_train_the_vision_tower(tmp_path, data, tiny_qwen2_5_vl):
    out = tmp_path / "unfrozen"
    # No packing and one sample per micro-batch: every third micro-batch is text only.
    _sft(out, data, "model.freeze=[]", "data.packing=false", "data.shuffle=false",
         "trainer.max_steps=4", "trainer.save_steps=0", base=tiny_qwen2_5_vl)  # fmt: skip
    base = load_file(tiny_qwen2_5_vl / "model.safetensors")
    final = load_file(out / "final" / "model.safetensors")
    moved = [k for k in base if k.startswith(VISION_PREFIX) and not torch.equal(base[k], final[k])]
    assert moved


def test_torchrun_two_ranks_agree(tmp_path, data, tiny_qwen2_5_vl):
    """examples/sft_torchrun.sh, as users launch it: torchrun with 2 processes (gloo on CPU)."""
    out = tmp_path / "ddp"
    cmd = [
        "bash", str(ROOT / "examples" / "sft_torchrun.sh"), str(RECIPE),
        f"model.path={tiny_qwen2_5_vl}", f"data.train_files=[{data}]",
        f"trainer.output_dir={out}", "data.packing_length=256", "data.max_length=256",
        "trainer.max_steps=3", "trainer.save_steps=0", "trainer.export=false",
    ]  # fmt: skip
    env = {**ENV, "NPROC_PER_NODE": "2", "MASTER_PORT": str(_free_port()),
           "PATH": f"{BIN}{os.pathsep}{ENV['PATH']}"}  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    checksums = json.loads((out / "rank_checksums.json").read_text())
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert sorted(_losses(out)) == [1, 2, 3]


def test_qwen3_vl_with_zero3_trains_and_exports(tmp_path, data, tiny_qwen3_vl):
    """The other family, and ZeRO-3: export gathers the partitioned weights."""
    out = tmp_path / "qwen3_z3"
    _sft(out, data, "deepspeed.zero_stage=3", "trainer.max_steps=4", "trainer.save_steps=0",
         base=tiny_qwen3_vl)  # fmt: skip
    losses = _losses(out)
    assert losses[4] < losses[1]
    base = load_file(tiny_qwen3_vl / "model.safetensors")
    final = load_file(out / "final" / "model.safetensors")
    assert base.keys() == final.keys()
    # Qwen3-VL's frozen parts include pos_embed and the deepstack mergers.
    assert any("pos_embed" in k for k in base) and any("deepstack" in k for k in base)
    for key in (k for k in base if k.startswith(VISION_PREFIX)):
        assert torch.equal(base[key], final[key]), key
    assert any(not torch.equal(base[k], final[k]) for k in base if k.startswith("model."))


def test_mfu_counts_attention_inside_each_packed_sample():
    from mmr.sft.perf import sample_lengths

    # Two samples (3 and 2 tokens) and a 3-token padding tail in one packed row.
    text = torch.tensor([0, 1, 2, 0, 1, 0, 1, 2])
    batch = {"position_ids": text.expand(4, 1, -1), "num_tokens": torch.tensor(5)}
    assert sample_lengths(batch) == [3, 2]
    padded = {"attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])}
    assert sample_lengths(padded) == [3, 2]


def test_estimated_plan_is_close_to_the_exact_count(data, tiny_qwen2_5_vl):
    # plan_steps=estimate: rows from file metadata / mean samples per micro-batch of the
    # first plan_sample micro-batches, instead of tokenizing the whole epoch before step 1.
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mmr.config import load_config
    from mmr.sft.config import SFTConfig
    from mmr.sft.data import SFTStream
    from mmr.sft.train import estimate_micro_batches, plan_total_steps

    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen2_5_vl)
    processor = AutoProcessor.from_pretrained(tiny_qwen2_5_vl)
    overrides = [f"data.train_files=[{data}]", "data.packing_length=512", "data.max_length=512",
                 "trainer.epochs=2", "trainer.plan_steps=estimate", "trainer.plan_sample=4"]  # fmt: skip
    cfg = load_config(SFTConfig, None, overrides)
    for rank in (0, 1):
        stream = SFTStream(cfg.data, processor, model.model.get_rope_index, seed=0, rank=rank,
                           world_size=2)  # fmt: skip
        exact = sum(1 for _ in stream.micro_batch_sizes(0))
        assert exact > 4  # the sample is a part of the epoch
        estimate = estimate_micro_batches(cfg, stream)
        assert abs(estimate - exact) <= max(1, 0.25 * exact), (estimate, exact)
        assert plan_total_steps(cfg, stream, torch.device("cpu")) == 2 * estimate
    cfg.trainer.plan_sample = 10_000  # a sample that holds the whole epoch: the exact count
    assert estimate_micro_batches(cfg, stream) == exact
    cfg.trainer.plan_steps = "exact"
    assert plan_total_steps(cfg, stream, torch.device("cpu")) == 2 * exact


def test_estimated_plan_counts_a_json_list_exactly(tmp_path, tiny_qwen2_5_vl, caplog):
    # A JSON list has no cheap row count (no footer, no lines): the estimate falls back to
    # counting the whole epoch, continuing from the micro-batches it has already sampled.
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mmr.config import load_config
    from mmr.data.io import read_samples, write_samples
    from mmr.sft.config import SFTConfig
    from mmr.sft.data import SFTStream
    from mmr.sft.train import estimate_micro_batches

    jsonl = tmp_path / "train.jsonl"
    write_samples(jsonl, read_samples(_write_data(tmp_path / "src.parquet")))
    listed = tmp_path / "train.json"
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    listed.write_text(json.dumps(rows))
    jsonl.unlink()

    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen2_5_vl)
    processor = AutoProcessor.from_pretrained(tiny_qwen2_5_vl)
    overrides = [f"data.train_files=[{listed}]", "data.packing_length=512", "data.max_length=512",
                 "trainer.plan_steps=estimate", "trainer.plan_sample=2"]  # fmt: skip
    cfg = load_config(SFTConfig, None, overrides)
    stream = SFTStream(cfg.data, processor, model.model.get_rope_index, seed=0)
    exact = sum(1 for _ in stream.micro_batch_sizes(0))
    assert exact > 2
    with caplog.at_level("WARNING", logger="mmr.sft.train"):
        assert estimate_micro_batches(cfg, stream) == exact
    assert "JSON list has no cheap row count" in caplog.text


def test_packed_rows_are_shuffled_within_each_buffer(tiny_qwen2_5_vl):
    # First-fit decreasing makes rows in order of their longest sample; the stream shuffles
    # them (seeded by seed/epoch/rank) within each pack buffer, and packs near-equal lengths
    # in a seeded order; unshuffled it is strict first-fit decreasing.
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mmr.config import load_config
    from mmr.data.chat import TokenizedSample
    from mmr.data.packing import pack_first_fit_decreasing
    from mmr.sft.config import SFTConfig
    from mmr.sft.data import SFTStream

    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen2_5_vl)
    processor = AutoProcessor.from_pretrained(tiny_qwen2_5_vl)
    rng = random.Random(0)
    lengths = [rng.randint(10, 200) for _ in range(60)]
    items = [
        TokenizedSample(torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long),
                        torch.ones(n, dtype=torch.long), sample_id=str(i))
        for i, n in enumerate(lengths)
    ]  # fmt: skip

    def rows(shuffle: bool, epoch: int = 0) -> list[list[str]]:  # (files are not read here)
        cfg = load_config(SFTConfig, None, ["data.packing_length=256", "data.max_length=256",
                                            "data.pack_buffer=30", "data.train_files=[unused]",
                                            f"data.shuffle={str(shuffle).lower()}"])  # fmt: skip
        stream = SFTStream(cfg.data, processor, model.model.get_rope_index, seed=0)
        return [[it.sample_id for it in row] for row in stream._packed_rows(iter(items), epoch)]

    expected = [
        [str(start + i) for i in b]
        for start in (0, 30)
        for b in pack_first_fit_decreasing(lengths[start : start + 30], 256)
    ]
    assert rows(shuffle=False) == expected
    epoch0 = rows(shuffle=True)
    assert epoch0 != expected
    assert rows(shuffle=True) == epoch0  # deterministic: a resumed run replays it
    assert rows(shuffle=True, epoch=1) != epoch0
    # Every sample once, each row within its own buffer (the seeded packer mixes
    # near-equal lengths differently from strict first-fit decreasing, at the same fill).
    assert sorted(i for row in epoch0 for i in row) == sorted(str(i) for i in range(60))
    in_first = [{int(i) < 30 for i in row} for row in epoch0]
    n_first = sum(kind == {True} for kind in in_first)
    assert in_first == [{True}] * n_first + [{False}] * (len(epoch0) - n_first)


def test_prefetch_keeps_order_raises_errors_and_stops_early():
    import threading

    from mmr.sft.data import prefetched

    batches = [{"x": torch.tensor([i])} for i in range(10)]
    assert [b["x"].item() for b in prefetched(iter(batches), 3)] == list(range(10))
    assert [b["x"].item() for b in prefetched(iter(batches), 0)] == list(range(10))

    def broken():
        yield batches[0]
        raise OSError("corrupt shard")

    got = []
    with pytest.raises(OSError, match="corrupt shard"):
        for b in prefetched(broken(), 2):
            got.append(b["x"].item())
    assert got == [0]

    # Leaving early: closing the generator stops the thread, which was blocked on a full queue.
    endless = ({"x": torch.tensor([i])} for i in itertools.count())
    stream = prefetched(endless, 2)
    assert next(stream)["x"].item() == 0
    stream.close()
    assert not any(t.name == "mmr-sft-prefetch" for t in threading.enumerate())


def test_chunked_loss_trains_like_transformers_loss(tmp_path, data, reference_run, tiny_qwen2_5_vl):
    # CPU default is transformers' loss; the chunked loss (GPU default) through the real CLI
    # and DeepSpeed gives the same losses step by step, so every gradient reached AdamW.
    out = tmp_path / "chunked"
    _sft(
        out,
        data,
        "model.chunked_loss=true",
        "trainer.max_steps=8",
        "trainer.save_steps=4",
        base=tiny_qwen2_5_vl,
    )
    chunked, reference = _losses(out), _losses(reference_run)
    assert sorted(chunked) == sorted(reference)
    for step in reference:
        assert chunked[step] == pytest.approx(reference[step], rel=1e-4), step


def test_lr_scale_gives_a_part_its_own_rate_and_logs_the_base_rate(
    tmp_path, data, reference_run, tiny_qwen2_5_vl
):
    out = tmp_path / "scaled"
    _sft(out, data, "model.freeze=[]", "trainer.max_steps=8", "trainer.save_steps=0",
         "optim.lr_scale={vision_tower: 1.0e-6, projector: 1.0e-6}",
         base=tiny_qwen2_5_vl)  # fmt: skip
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (reference_run / "metrics.jsonl").read_text().splitlines()]
    # The logged rate is the base rate: the same schedule as the unscaled reference run.
    assert [r["train/lr"] for r in lines] == pytest.approx([r["train/lr"] for r in ref])
    # At a millionth of the rate the vision weights barely move; the LM's move at full rate.
    base = load_file(tiny_qwen2_5_vl / "model.safetensors")
    final = load_file(out / "final" / "model.safetensors")

    def moved(prefix: str) -> float:
        return max((final[k] - base[k]).abs().max().item() for k in base if k.startswith(prefix))

    assert moved(VISION_PREFIX) < 1e-6 < 1e-4 < moved("model.layers.")
    proc = subprocess.run(
        [str(BIN / "mmr"), "sft", "--config", str(RECIPE), f"model.path={tiny_qwen2_5_vl}",
         f"data.train_files=[{data}]", "optim.lr_scale={vision: 2.0}"],
        env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0 and "optim.lr_scale.vision' names no model part" in proc.stderr
