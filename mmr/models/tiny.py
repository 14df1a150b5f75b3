"""Build a tiny, randomly initialised model of a supported family, offline.

Tests and `make demo` cannot reach the model hub, so they use a checkpoint built here: the
family's own model, processor and tokenizer classes with tiny sizes, saved with
`save_pretrained`, so every other part of mmr loads it with the ordinary `from_pretrained`
exactly as it loads Qwen2.5-VL-7B or Qwen3-VL-8B.

What a tiny checkpoint holds:
- a byte-level BPE tokenizer trained here on a small built-in corpus, with Qwen's
  pre-tokenizer, the family's special and added tokens in Qwen's order, eos `<|im_end|>`
  and pad `<|endoftext|>`, saved as the family's tokenizer class (`Qwen2Tokenizer`);
- the family's chat format (templates/<family>.jinja, same rendered text as the stock
  templates) on both the tokenizer and the processor;
- the stock image and video processors with small pixel budgets, so a small image becomes
  a handful of vision tokens;
- a config whose special-token ids are the tokenizer's, whose `mrope_section` sums to
  head_dim / 2 and whose vision `out_hidden_size` equals the text hidden size;
- weights drawn from a fixed seed (same seed -> identical files), and a generation config.

Run: `python -m mmr.models.tiny --family qwen2_5_vl --out runs/tiny-qwen2_5_vl`.
"""

from __future__ import annotations

import argparse
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    PreTrainedConfig,
    Qwen2_5_VLConfig,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLVideoProcessor,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from mmr.models.export import save_processor
from mmr.models.registry import FAMILIES, get_family

FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)

# Qwen's added tokens in Qwen's order (ids 151643... in the real vocab), with their
# `special` flag: special tokens are dropped by `decode(skip_special_tokens=True)`.
_QWEN2_5_ADDED = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]
# Qwen3's tokenizer adds these; `<think>` and `</think>` are single, non-special tokens.
_QWEN3_EXTRA = [
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
]
ADDED_TOKENS: dict[str, list[tuple[str, bool]]] = {
    "qwen2_5_vl": _QWEN2_5_ADDED,
    "qwen3_vl": _QWEN2_5_ADDED + _QWEN3_EXTRA,
}

# Enough varied text for a few hundred BPE merges over what mmr's tests and demo print:
# English, digits, LaTeX, reasoning tags, multiple-choice options.
_CORPUS = """
You are a helpful assistant. Please reason step by step, and put your final answer within \\boxed{}.
<think>Let me think about this problem step by step. First, look at the image carefully.</think>
The answer is \\boxed{42}. The final answer is \\boxed{\\frac{1}{2}}. So the answer is B.
<answer>C</answer> <answer>12</answer> Answer: A. Options: A. 3 B. 4 C. 5 D. 6
What is the area of the triangle in the figure? The base is 6 cm and the height is 4 cm.
Area = \\frac{1}{2} \\times base \\times height = \\frac{1}{2} \\times 6 \\times 4 = 12 cm^2.
Solve for x: 2x + 3 = 11, so 2x = 8 and x = 4. Check: 2 \\cdot 4 + 3 = 11. Correct.
\\sqrt{16} = 4, \\pi r^2, \\sin(30^\\circ) = 0.5, \\cos \\theta, \\alpha + \\beta = 90^\\circ.
\\left( \\frac{a}{b} \\right)^2 = \\frac{a^2}{b^2}, \\sum_{i=1}^{n} i = \\frac{n(n+1)}{2}.
0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 20 25 30 36 48 64 100 128 256 1000 3.14 0.25 -1
How many red circles are in the picture? Count them: one, two, three, four, five.
The chart shows that sales increased from 2019 to 2020 by 25 percent.
Which shape has the largest perimeter? The square has side 5, so its perimeter is 20.
A train travels 120 km in 2 hours. Its average speed is 60 km per hour.
Wait, let me double check the calculation. Hmm, that is not right. Let me try again.
Therefore, the correct option is D because the angle is greater than ninety degrees.
user assistant system image video question answer solution reasoning verify
The quick brown fox jumps over the lazy dog. Hello world! Yes, no, maybe; true or false?
"""


def _train_bpe(vocab_size: int) -> Tokenizer:
    """A byte-level BPE over the built-in corpus with Qwen2's pre-tokenizer."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in _CORPUS.splitlines() if line]
    tokenizer.train_from_iterator(lines * 4, trainer)
    return tokenizer


def build_tokenizer(family: str, vocab_size: int = 1024) -> Qwen2Tokenizer:
    """The family's tokenizer with a locally trained BPE of at most `vocab_size` merges+bytes."""
    name = get_family(family).name
    bpe = json.loads(_train_bpe(vocab_size).to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=bpe["vocab"],
        merges=[tuple(merge) for merge in bpe["merges"]],
        unk_token=None,
        bos_token=None,
        eos_token=None,
        pad_token=None,
        model_max_length=32768,
    )
    # Added after the BPE vocab in Qwen's order, as in the real tokenizer.
    added = ADDED_TOKENS[name]
    tokenizer.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in added])
    tokenizer.add_special_tokens(
        {
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "additional_special_tokens": [t for t, s in added[1:] if s],
        }
    )
    tokenizer.chat_template = chat_template(name)
    return tokenizer


def chat_template(family: str) -> str:
    """The family's chat template (Jinja), as shipped in mmr/models/templates."""
    name = get_family(family).name
    return resources.files("mmr.models").joinpath(f"templates/{name}.jinja").read_text()


def _token_ids(tokenizer: Qwen2Tokenizer) -> dict[str, int]:
    ids = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
        "bos_token_id": ids("<|endoftext|>"),
        "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": ids("<|endoftext|>"),
    }


def _padded_vocab(tokenizer: Qwen2Tokenizer) -> int:
    # Real Qwen embeddings have more rows than the tokenizer has tokens (151936 > 151665);
    # keep that so code never assumes len(tokenizer) == vocab_size.
    return -(-len(tokenizer) // 64) * 64


def build_config(
    family: str,
    tokenizer: Qwen2Tokenizer,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    layers: int = 2,
    head_dim: int = 16,
) -> PreTrainedConfig:
    """A tiny config of the family whose special-token ids are `tokenizer`'s.

    The text model's size is settable (the demo widens it); attention heads follow
    `hidden_size / head_dim`, and the mrope sections scale with head_dim (they sum to
    head_dim / 2). vLLM's CPU attention needs head_dim 64 (it rejects 16), so the tiny
    model that verl's vLLM-CPU rollouts serve is built with `head_dim=64`.
    """
    name = get_family(family).name
    if head_dim not in (16, 32, 64, 128):
        raise ValueError(f"head_dim must be 16, 32, 64 or 128, got {head_dim}")
    if hidden_size % head_dim or hidden_size < max(32, head_dim):
        raise ValueError(
            f"hidden_size must be a multiple of head_dim ({head_dim}) and >= 32, got {hidden_size}"
        )
    ids = _token_ids(tokenizer)
    special = {k: ids[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    heads = hidden_size // head_dim
    scale = head_dim // 16
    text = dict(
        vocab_size=_padded_vocab(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(heads // 2, 1),
        max_position_embeddings=32768,
        **special,
    )
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=text["hidden_size"],
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    if name == "qwen2_5_vl":
        # head_dim 16 -> mrope sections sum to 8, in Qwen2.5-VL's 16:24:24 proportion.
        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 1e6,
            "mrope_section": [2 * scale, 3 * scale, 3 * scale],
        }
        # Block 0 uses windowed attention, block 1 full attention, as in the real tower.
        vision.update(patch_size=14, window_size=112, fullatt_block_indexes=[1], hidden_act="silu")
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
    text["head_dim"] = head_dim
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 5e6,
        "mrope_section": [3 * scale, 3 * scale, 2 * scale],
        "mrope_interleaved": True,
    }
    # 64 = an 8x8 grid of learned position embeddings, interpolated to each image's grid.
    vision.update(patch_size=16, num_position_embeddings=64, deepstack_visual_indexes=[0, 1])
    return Qwen3VLConfig(text_config=text, vision_config=vision, **ids)


def build_processor(family: str, tokenizer: Qwen2Tokenizer, max_pixels: int | None = None) -> Any:
    """The family's processor around `tokenizer`, with small image and video pixel budgets.

    `max_pixels` defaults to 16 merged vision tokens per image (64 patches); `min_pixels` is
    4 merged tokens, so any image gives between 4 and 16 `<|image_pad|>` tokens.
    """
    fam = get_family(family)
    patch = 14 if fam.name == "qwen2_5_vl" else 16
    unit = (patch * 2) ** 2  # pixels of one merged token (2x2 patches)
    max_pixels = max_pixels or 16 * unit
    size = {"shortest_edge": 4 * unit, "longest_edge": max_pixels}
    # Pass `size` explicitly: the processors' min_pixels/max_pixels kwargs write into the
    # class-level default dict, which would leak into every later instance.
    common = dict(size=size, patch_size=patch, temporal_patch_size=2, merge_size=2)
    if fam.name == "qwen2_5_vl":
        image = Qwen2VLImageProcessor(**common)
        video = Qwen2VLVideoProcessor(**common)
    else:
        half = [0.5, 0.5, 0.5]
        image = Qwen2VLImageProcessor(**common, image_mean=half, image_std=half)
        video = Qwen3VLVideoProcessor(**common, image_mean=half, image_std=half)
    return fam.processor_class(
        image_processor=image,
        tokenizer=tokenizer,
        video_processor=video,
        chat_template=chat_template(fam.name),
    )


def _generation_config(tokenizer: Qwen2Tokenizer) -> GenerationConfig:
    ids = _token_ids(tokenizer)
    # Like the real checkpoints: stop at <|im_end|> or <|endoftext|>.
    return GenerationConfig(
        bos_token_id=ids["bos_token_id"],
        eos_token_id=[ids["eos_token_id"], ids["pad_token_id"]],
        pad_token_id=ids["pad_token_id"],
    )


def build(
    family: str,
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    vocab_size: int = 1024,
    max_pixels: int | None = None,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    layers: int = 2,
    head_dim: int = 16,
) -> Path:
    """Write a tiny `family` checkpoint (model, processor, tokenizer) to `out_dir`; return it.

    `vocab_size` bounds the trained BPE vocab (the corpus may give fewer tokens);
    `max_pixels` bounds image size (see `build_processor`); `hidden_size`,
    `intermediate_size`, `layers` and `head_dim` size the text model (see `build_config`). Same
    arguments -> same files.
    """
    fam = get_family(family)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(fam.name, vocab_size)
    config = build_config(
        fam.name,
        tokenizer,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        layers=layers,
        head_dim=head_dim,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = fam.model_class(config)
    model.generation_config = _generation_config(tokenizer)
    model.save_pretrained(out)
    save_processor(build_processor(fam.name, tokenizer, max_pixels), out)
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line: `python -m mmr.models.tiny --family qwen3_vl --out DIR`."""
    parser = argparse.ArgumentParser(description="Build a tiny model checkpoint offline.")
    parser.add_argument("--family", choices=FAMILY_NAMES, default="qwen2_5_vl")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--max-pixels", type=int, default=None)
    parser.add_argument("--hidden-size", type=int, default=64, help="text model width")
    parser.add_argument("--intermediate-size", type=int, default=128, help="text MLP width")
    parser.add_argument("--layers", type=int, default=2, help="text decoder layers")
    parser.add_argument("--head-dim", type=int, default=16, help="64 for vLLM-CPU rollouts")
    args = parser.parse_args(argv)
    out = build(
        args.family,
        args.out,
        seed=args.seed,
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        layers=args.layers,
        head_dim=args.head_dim,
        max_pixels=args.max_pixels,
    )
    print(f"tiny {args.family} model written to {out}")


if __name__ == "__main__":
    main()
