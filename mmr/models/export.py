"""Write a trained model as an HF folder that `from_pretrained` and vLLM load.

Shared by SFT (after DeepSpeed training) and RL (after merging verl's checkpoint), so it
lives with the models, not in a stage. The folder holds safetensors weights, config,
generation config, tokenizer, chat template and processor; frozen weights are written as
they were loaded, bit for bit.

transformers 5 writes the processor as one `processor_config.json`; older transformers and
vLLM releases read the image processor from its own `preprocessor_config.json`, so that
file is written beside it (`save_processor`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def save_hf_checkpoint(
    model: torch.nn.Module,
    processor: Any,
    out_dir: str | Path,
    *,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save `model` (or `state_dict` into its architecture) and `processor` to `out_dir`.

    `state_dict` is for weights gathered elsewhere (ZeRO-3 consolidation, a verl merge).
    `use_cache` is turned back on in the saved config: training turns it off, inference
    (vLLM, `generate`) wants it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # a DeepSpeed engine wraps the model
    getattr(model.config, "text_config", model.config).use_cache = True
    model.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
    save_processor(processor, out)
    return out


def save_processor(processor: Any, out_dir: str | Path) -> None:
    """`processor.save_pretrained`, plus the image processor's `preprocessor_config.json`
    when the processor has one (what pre-5 transformers and older vLLM load)."""
    processor.save_pretrained(out_dir)
    write_preprocessor_config(processor, out_dir)


def write_preprocessor_config(processor: Any, out_dir: str | Path) -> None:
    """The image processor's `preprocessor_config.json` in `out_dir`, unless it is there."""
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None and not (Path(out_dir) / "preprocessor_config.json").exists():
        image_processor.save_pretrained(out_dir)
