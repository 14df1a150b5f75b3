"""mmr rl merge on a verl FSDP checkpoint of one rank (the layout verl writes with 1 GPU)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForImageTextToText

from mmr.rl.merge import main, merge_checkpoint


def _fsdp_checkpoint(tiny_dir, root, dtype=torch.float32, model_dtype=None):
    """verl's actor checkpoint layout: rank shards (in `dtype`), fsdp_config.json and
    huggingface/ (the model that went in, its config naming `model_dtype`)."""
    actor = root / "global_step_2" / "actor"
    (actor / "huggingface").mkdir(parents=True)
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir, dtype=dtype)
    with torch.no_grad():  # "training" moved the weights
        model.lm_head.weight.add_(0.5)
    torch.save(model.state_dict(), actor / "model_world_size_1_rank_0.pt")
    (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": 1}))
    for f in tiny_dir.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy2(f, actor / "huggingface" / f.name)
    config = json.loads((actor / "huggingface" / "config.json").read_text())
    config["dtype"] = str(model_dtype or dtype).split(".")[1]
    (actor / "huggingface" / "config.json").write_text(json.dumps(config))
    return actor, model


@pytest.mark.parametrize(
    "shards, model, saved",
    [
        (torch.float32, torch.float32, torch.float32),  # an fp32 model (the CPU recipes)
        (torch.float32, torch.bfloat16, torch.bfloat16),  # a bf16 model, fp32 FSDP masters (GPU)
        (torch.bfloat16, torch.bfloat16, torch.bfloat16),
    ],
)
def test_merge_saves_the_trained_models_dtype(tmp_path, tiny_qwen2_5_vl, shards, model, saved):
    # verl's own merger casts every weight to bf16: an fp32 model (the CPU recipes) came out
    # rounded. mmr's saves the dtype of the model that went in, and names it in config.json.
    actor, trained = _fsdp_checkpoint(tiny_qwen2_5_vl, tmp_path, shards, model)
    out = merge_checkpoint(actor, tmp_path / "merged")
    merged = AutoModelForImageTextToText.from_pretrained(out, dtype="auto")
    assert merged.lm_head.weight.dtype == saved
    trained_weights = trained.state_dict()
    for name, tensor in merged.state_dict().items():
        assert torch.equal(tensor, trained_weights[name].to(saved)), name
    assert json.loads((out / "config.json").read_text())["dtype"] == str(saved).split(".")[1]
    assert (out / "chat_template.jinja").is_file()


def test_merge_rejects_a_folder_that_is_not_a_checkpoint(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a verl FSDP actor checkpoint" in capsys.readouterr().err


def test_verify_names_a_missing_processor(tmp_path, tiny_qwen2_5_vl):
    from mmr.rl.merge import verify_hf_folder

    broken = tmp_path / "broken"
    shutil.copytree(tiny_qwen2_5_vl, broken)
    for name in ("processor_config.json", "preprocessor_config.json"):  # either would do
        (broken / name).unlink()
    with pytest.raises((RuntimeError, OSError, ValueError)):
        verify_hf_folder(broken)


class _RunsCode:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_merge_refuses_a_shard_that_is_not_plain_tensors(tmp_path, tiny_qwen2_5_vl, capsys):
    # verl's merger itself unpickles shards with weights_only=False.
    actor, _ = _fsdp_checkpoint(tiny_qwen2_5_vl, tmp_path)
    torch.save({"lm_head.weight": _RunsCode()}, actor / "model_world_size_1_rank_0.pt")
    assert main(["--checkpoint", str(actor), "--out", str(tmp_path / "merged")]) == 2
    captured = capsys.readouterr()
    assert "weights_only" in captured.err and "unpickled code ran" not in captured.out
    assert not (tmp_path / "merged").exists()
