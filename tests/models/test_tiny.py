"""Tiny offline checkpoints: they load through the stock Auto classes and train."""

import json
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from mmr.models import get_family, tiny

FAMILY_NAMES = ["qwen2_5_vl", "qwen3_vl"]

IMAGE_CHAT = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is 2+2?"}]},
    {"role": "assistant", "content": "<think>2+2=4</think>The answer is \\boxed{4}."},
]
TURNS = (
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is 2+2?<|im_end|>\n"
    "<|im_start|>assistant\n<think>2+2=4</think>The answer is \\boxed{4}.<|im_end|>\n"
)
DEFAULT_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


@pytest.fixture(params=FAMILY_NAMES)
def family(request) -> str:
    return request.param


@pytest.fixture
def tiny_dir(family, request) -> Path:
    return request.getfixturevalue(f"tiny_{family}")


def test_loads_with_auto_classes(family, tiny_dir):
    fam = get_family(family)
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    processor = AutoProcessor.from_pretrained(tiny_dir)
    assert type(model) is fam.model_class
    assert type(processor) is fam.processor_class
    assert processor.image_processor is not None and processor.video_processor is not None
    assert type(AutoTokenizer.from_pretrained(tiny_dir)).__name__ == "Qwen2Tokenizer"
    assert sum(p.numel() for p in model.parameters()) < 2_000_000


def test_config_matches_tokenizer(tiny_dir):
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    config, text = model.config, model.config.text_config
    ids = tok.convert_tokens_to_ids
    assert config.image_token_id == ids("<|image_pad|>")
    assert config.video_token_id == ids("<|video_pad|>")
    assert config.vision_start_token_id == ids("<|vision_start|>")
    assert config.vision_end_token_id == ids("<|vision_end|>")
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert text.eos_token_id == tok.eos_token_id and text.pad_token_id == tok.pad_token_id
    assert model.generation_config.eos_token_id == [tok.eos_token_id, tok.pad_token_id]
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert text.vocab_size >= len(tok)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    assert config.vision_config.out_hidden_size == text.hidden_size


def test_special_tokens(family, tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    for token in ["<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_pad|>"]:
        assert tok.tokenize(f"a{token}b") == ["a", token, "b"]
    think_is_one_token = tok.tokenize("<think>") == ["<think>"]
    assert think_is_one_token == (family == "qwen3_vl")
    text = "<|im_start|>user\nSolve \\frac{1}{2} + 3 = ?<|im_end|>"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == "user\nSolve \\frac{1}{2} + 3 = ?"


def test_chat_template_renders_the_family_format(family, tiny_dir):
    processor = AutoProcessor.from_pretrained(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    system = DEFAULT_SYSTEM if family == "qwen2_5_vl" else ""
    for render in (processor.apply_chat_template, tok.apply_chat_template):
        assert render(IMAGE_CHAT, tokenize=False) == system + TURNS
    with_system = [{"role": "system", "content": "Be brief."}, *IMAGE_CHAT[:1]]
    prompt = processor.apply_chat_template(with_system, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        + TURNS.split("<|im_start|>assistant")[0]
        + "<|im_start|>assistant\n"
    )
    text_only = [{"role": "user", "content": "Hi"}]
    assert processor.apply_chat_template(text_only, tokenize=False) == (
        system + "<|im_start|>user\nHi<|im_end|>\n"
    )


def test_forward_backward_on_image_chats(family, tiny_dir):
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    processor = AutoProcessor.from_pretrained(tiny_dir)
    chats = [IMAGE_CHAT, [{"role": "system", "content": "Be brief."}, *IMAGE_CHAT]]
    texts = [processor.apply_chat_template(chat, tokenize=False) for chat in chats]
    images = [[Image.new("RGB", (40, 30), (200, 30, 30))], [Image.new("RGB", (90, 64), "blue")]]
    batch = processor(text=texts, images=images, return_tensors="pt", padding=True)
    # A few vision tokens per image: between min_pixels (4) and max_pixels (16) merged tokens.
    n_image_tokens = (batch["input_ids"] == model.config.image_token_id).sum(dim=1)
    assert n_image_tokens.tolist() == (batch["image_grid_thw"].prod(dim=1) // 4).tolist()
    assert all(4 <= n <= 16 for n in n_image_tokens.tolist())
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    loss = model(**batch, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = {n: p.grad for n, p in model.named_parameters()}
    for prefix in ["model.language_model.", "model.visual.blocks.", "model.visual.merger."]:
        assert any(
            g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(prefix)
        )


def test_build_is_deterministic_fast_and_small(family, tiny_dir, tmp_path):
    start = time.perf_counter()
    tiny.main(["--family", family, "--out", str(tmp_path / "a")])
    assert time.perf_counter() - start < 30
    other = tiny.build(family, tmp_path / "b", seed=1)
    for name in ["model.safetensors", "tokenizer.json", "config.json", "processor_config.json"]:
        assert (tmp_path / "a" / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    weights = (tmp_path / "a" / "model.safetensors").read_bytes()
    assert (other / "model.safetensors").read_bytes() != weights
    assert sum(f.stat().st_size for f in tiny_dir.iterdir()) < 8_000_000


def test_the_image_processor_has_its_own_config_for_older_readers(tiny_dir):
    # transformers 5 keeps the processor in processor_config.json; pre-5 transformers and
    # older vLLM read the image processor from preprocessor_config.json: the same settings.
    from transformers import AutoImageProcessor

    combined = json.loads((tiny_dir / "processor_config.json").read_text())["image_processor"]
    own = json.loads((tiny_dir / "preprocessor_config.json").read_text())
    assert {k: v for k, v in own.items() if k in combined} == combined
    loaded = AutoImageProcessor.from_pretrained(tiny_dir)
    for key in ("size", "patch_size", "merge_size", "image_mean", "image_std"):
        value = getattr(loaded, key)
        assert (list(value) if isinstance(value, tuple) else value) == combined[key], key


def test_unknown_family_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="supported families: qwen2_5_vl, qwen3_vl"):
        tiny.build("llava", tmp_path)


def test_text_model_size_is_settable(family, tmp_path):
    # What the demo uses: a wider, deeper text model with the same tokenizer and processor.
    out = tiny.build(family, tmp_path / "wide", hidden_size=128, intermediate_size=256, layers=3)
    model = AutoModelForImageTextToText.from_pretrained(out)
    text = model.config.text_config
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (128, 256, 3)
    assert text.hidden_size // text.num_attention_heads == 16  # head_dim, so mrope still fits
    assert model.config.vision_config.out_hidden_size == 128
    ids = torch.tensor([[1, 2, 3, 4]])
    assert model(input_ids=ids).logits.shape[-1] == model.config.text_config.vocab_size
    with pytest.raises(ValueError, match="hidden_size"):
        tiny.build(family, tmp_path / "odd", hidden_size=40)


def test_head_dim_is_settable(family, tmp_path):
    # vLLM's CPU attention serves head_dim 64 only (it rejects 16): verl's tiny RL model.
    out = tiny.build(family, tmp_path / "hd64", hidden_size=128, head_dim=64)
    model = AutoModelForImageTextToText.from_pretrained(out)
    text = model.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    assert (head_dim, text.num_attention_heads) == (64, 2)
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    ids = torch.tensor([[1, 2, 3, 4]])
    assert model(input_ids=ids).logits.shape[-1] == text.vocab_size
    with pytest.raises(ValueError, match="head_dim"):
        tiny.build(family, tmp_path / "bad", hidden_size=64, head_dim=48)
