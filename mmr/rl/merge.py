"""verl actor checkpoint -> HF folder, through verl's own model merger, then checked.

    mmr rl merge --checkpoint runs/omr_7b_gspo/checkpoints/global_step_64/actor --out runs/rl_final

verl's FSDP checkpoints hold sharded weights (`model_world_size_W_rank_R.pt`) plus the HF
config, tokenizer and processor under `huggingface/`. verl's `FSDPModelMerger` merges the
shards and saves the model (in bf16) with its tokenizer and processor; mmr then checks what users
need from the result before they evaluate or serve it: the model loads with its family's
`from_pretrained`, the processor loads as the family's processor (not a bare tokenizer),
and the chat template is there. A missing piece fails with what is missing.

verl's merger unpickles the rank shards with `weights_only=False`
(verl/model_merger/fsdp_model_merger.py:168), so a crafted checkpoint could run code. mmr
first loads every shard with `weights_only=True` (memory-mapped: no copy) and refuses a
shard that holds anything but tensors, before verl's merger reads it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


def merge_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Merge a verl FSDP actor checkpoint into an HF folder and verify it loads."""
    from verl.model_merger.base_model_merger import ModelMergerConfig
    from verl.model_merger.fsdp_model_merger import FSDPModelMerger

    ckpt, out = Path(checkpoint), Path(out_dir)
    hf_dir = ckpt / "huggingface"
    if not (ckpt / "fsdp_config.json").is_file() or not hf_dir.is_dir():
        raise FileNotFoundError(
            f"{ckpt} is not a verl FSDP actor checkpoint (expected fsdp_config.json and "
            "huggingface/ inside, e.g. .../global_step_N/actor)"
        )
    check_shards_are_tensors(ckpt)
    config = ModelMergerConfig(
        operation="merge",
        backend="fsdp",
        local_dir=str(ckpt),
        target_dir=str(out),
        hf_model_config_path=str(hf_dir),
    )
    merger = FSDPModelMerger(config)
    merger.merge_and_save()
    merger.cleanup()
    # verl saves the processor; the chat template file may sit only in huggingface/.
    for name in CHAT_TEMPLATE_FILES:
        if (hf_dir / name).is_file() and not (out / name).is_file():
            shutil.copy2(hf_dir / name, out / name)
    verify_hf_folder(out)
    # transformers 5 saved one processor_config.json; pre-5 transformers and older vLLM read
    # the image processor from its own file, as mmr's exported folders carry it.
    from mmr.models import load_processor
    from mmr.models.export import write_preprocessor_config

    write_preprocessor_config(load_processor(out), out)
    return out


def check_shards_are_tensors(ckpt: Path) -> None:
    """Every `model_world_size_*_rank_*.pt` shard loads with `weights_only=True`."""
    import torch
    import torch.distributed.tensor

    shards = sorted(ckpt.glob("model_world_size_*_rank_*.pt"))
    if not shards:
        raise FileNotFoundError(f"{ckpt}: no model_world_size_*_rank_*.pt shards")
    for shard in shards:
        try:
            torch.load(shard, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:
            raise RuntimeError(
                f"{shard}: does not load as plain tensors (weights_only=True), refusing to "
                f"unpickle it: {str(err).splitlines()[0]}"
            ) from None


def verify_hf_folder(path: str | Path) -> None:
    """The folder loads as its family's model and processor and has a chat template."""
    from mmr.models import family_of, load_model, load_processor

    path = Path(path)
    model = load_model(path)
    family = family_of(model)
    processor = load_processor(path)
    if not isinstance(processor, family.processor_class):
        raise RuntimeError(
            f"{path}: the processor loads as {type(processor).__name__}, not "
            f"{family.processor_class.__name__}; image inputs would fail"
        )
    if not getattr(processor, "chat_template", None):
        raise RuntimeError(
            f"{path}: no chat template (looked for {', '.join(CHAT_TEMPLATE_FILES)})"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mmr rl merge", description="verl FSDP actor checkpoint -> checked HF folder."
    )
    parser.add_argument("--checkpoint", required=True, help=".../global_step_N/actor")
    parser.add_argument("--out", required=True, help="HF folder to write")
    args = parser.parse_args(argv)
    try:
        out = merge_checkpoint(args.checkpoint, args.out)
    except (FileNotFoundError, RuntimeError) as err:
        print(f"mmr rl merge: {err}", file=sys.stderr)
        return 2
    print(f"merged {args.checkpoint} into {out} (loads with from_pretrained)")
    return 0
