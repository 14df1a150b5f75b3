"""Model registry: family lookup, part rules and freezing on full-size (meta) and tiny models."""

from types import SimpleNamespace

import pytest
import torch
from transformers import (
    AutoModelForImageTextToText,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)

from mmr.models import (
    PART_NAMES,
    family_of,
    freeze_modules,
    get_family,
    load_model,
    load_processor,
    part_of,
)

FAMILY_NAMES = ["qwen2_5_vl", "qwen3_vl"]


def qwen2_5_vl_7b_config() -> Qwen2_5_VLConfig:
    """Qwen/Qwen2.5-VL-7B-Instruct's config.json, the fields that shape the model."""
    text = dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=128000,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
    )
    vision = dict(
        depth=32,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        out_hidden_size=3584,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31],
        tokens_per_second=2,
        hidden_act="silu",
    )
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False)


def qwen3_vl_8b_config() -> Qwen3VLConfig:
    """Qwen/Qwen3-VL-8B-Instruct's config.json, the fields that shape the model."""
    text = dict(
        vocab_size=151936,
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=262144,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5e6,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
    )
    vision = dict(
        depth=27,
        hidden_size=1152,
        intermediate_size=4304,
        num_heads=16,
        out_hidden_size=4096,
        patch_size=16,
        num_position_embeddings=2304,
        deepstack_visual_indexes=[8, 16, 24],
        hidden_act="gelu_pytorch_tanh",
    )
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False)


# family -> (config builder, total parameters in billions as the model cards state)
FULL_SIZE = {"qwen2_5_vl": (qwen2_5_vl_7b_config, 8.29), "qwen3_vl": (qwen3_vl_8b_config, 8.77)}
# family -> names of parameters that belong to the projector
MERGER_WEIGHT = {
    "qwen2_5_vl": ["model.visual.merger.mlp.2.weight"],
    "qwen3_vl": [
        "model.visual.merger.linear_fc2.weight",
        "model.visual.deepstack_merger_list.1.linear_fc2.weight",
    ],
}


@pytest.fixture(params=FAMILY_NAMES)
def full_model(request) -> torch.nn.Module:
    """A full-size model on the meta device: real shapes and names, no memory."""
    build_config, _ = FULL_SIZE[request.param]
    family = get_family(request.param)
    with torch.device("meta"):
        return family.model_class(build_config())


@pytest.fixture(params=FAMILY_NAMES)
def tiny_model(request) -> torch.nn.Module:
    path = request.getfixturevalue(f"tiny_{request.param}")
    return AutoModelForImageTextToText.from_pretrained(path)


def test_get_family_by_name_model_type_and_alias():
    assert get_family("qwen2_5_vl").model_class is Qwen2_5_VLForConditionalGeneration
    assert get_family("Qwen2.5-VL").name == "qwen2_5_vl"
    assert get_family("qwen3_vl").processor_class is Qwen3VLProcessor
    assert get_family("qwen3-vl").model_type == "qwen3_vl"


def test_unknown_family_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"llava.*qwen2_5_vl, qwen3_vl"):
        get_family("llava")
    with pytest.raises(ValueError, match=r"'llama'.*qwen2_5_vl, qwen3_vl"):
        family_of(SimpleNamespace(model_type="llama"))


def test_family_of_config_and_model(full_model):
    assert family_of(full_model) is family_of(full_model.config)
    assert isinstance(full_model, family_of(full_model).model_class)


def test_full_size_parameter_counts(full_model):
    _, billions = FULL_SIZE[family_of(full_model).name]
    total = sum(p.numel() for p in full_model.parameters())
    assert round(total / 1e9, 2) == billions


def check_freeze_vision(model: torch.nn.Module) -> None:
    counts = freeze_modules(model, ["vision_tower", "projector"])
    params = dict(model.named_parameters())
    for name, param in params.items():
        in_vision = name.startswith("model.visual.")
        assert param.requires_grad != in_vision, name
    frozen = sum(p.numel() for n, p in params.items() if n.startswith("model.visual."))
    assert counts.frozen == frozen > 0
    assert counts.trainable == sum(
        p.numel() for n, p in params.items() if n.startswith(("model.language_model.", "lm_head."))
    )
    assert counts.total == sum(p.numel() for p in params.values())


def test_freeze_vision_full_size(full_model):
    check_freeze_vision(full_model)
    params = dict(full_model.named_parameters())
    names = ["model.visual.patch_embed.proj.weight", *MERGER_WEIGHT[family_of(full_model).name]]
    if family_of(full_model).name == "qwen3_vl":
        names += ["model.visual.pos_embed.weight", "model.visual.deepstack_merger_list.2.norm.bias"]
    assert not any(params[name].requires_grad for name in names)


def test_freeze_vision_tiny(tiny_model):
    check_freeze_vision(tiny_model)


def check_parts_cover(model: torch.nn.Module) -> None:
    family = family_of(model)
    parts = {name: part_of(name, family) for name, _ in model.named_parameters()}
    assert set(parts.values()) == set(PART_NAMES), "a part matches no parameter"
    for name, part in parts.items():
        if name.startswith("model.visual."):
            assert part in ("vision_tower", "projector"), name
        else:
            assert part in ("language_model", "lm_head"), name
    projector = {n for n, p in parts.items() if p == "projector"}
    assert all(".merger." in n or ".deepstack_merger_list." in n for n in projector)


def test_parts_cover_every_parameter_full_size(full_model):
    check_parts_cover(full_model)


def test_parts_cover_every_parameter_tiny(tiny_model):
    check_parts_cover(tiny_model)


def test_projector_alone_leaves_the_vision_tower_trainable(tiny_model):
    counts = freeze_modules(tiny_model, ["projector"])
    params = dict(tiny_model.named_parameters())
    assert not any(params[n].requires_grad for n in MERGER_WEIGHT[family_of(tiny_model).name])
    assert params["model.visual.blocks.0.attn.qkv.weight"].requires_grad
    assert counts.frozen == sum(
        p.numel() for n, p in params.items() if "merger" in n and n.startswith("model.visual.")
    )


def test_freeze_nothing_and_unknown_part(tiny_model):
    counts = freeze_modules(tiny_model, [])
    assert counts.frozen == 0 and counts.trainable == counts.total
    with pytest.raises(ValueError, match="valid parts: vision_tower, projector"):
        freeze_modules(tiny_model, ["vision"])


def test_load_model_and_processor(tiny_qwen2_5_vl, tiny_qwen3_vl):
    model = load_model(tiny_qwen2_5_vl, dtype=torch.bfloat16)
    assert isinstance(model, Qwen2_5_VLForConditionalGeneration)
    assert model.dtype == torch.bfloat16
    assert isinstance(load_processor(tiny_qwen2_5_vl), Qwen2_5_VLProcessor)
    assert isinstance(load_model(tiny_qwen3_vl), Qwen3VLForConditionalGeneration)
    assert isinstance(load_processor(tiny_qwen3_vl), Qwen3VLProcessor)


def test_parameter_groups_scale_each_part_and_refuse_idle_scales(tiny_model):
    from mmr.models import parameter_groups

    freeze_modules(tiny_model, ["projector"])
    groups = parameter_groups(tiny_model, 1e-3, {"vision_tower": 10.0})
    by_name = {g["name"]: g for g in groups}
    assert by_name["vision_tower"]["lr"] == pytest.approx(1e-2)
    assert by_name["language_model"]["lr"] == 1e-3 and "projector" not in by_name
    # Every trainable parameter is in exactly one group; frozen ones in none.
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in tiny_model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable) and len(set(grouped)) == len(grouped)
    family = family_of(tiny_model)
    names = {id(p): n for n, p in tiny_model.named_parameters()}
    for g in groups:
        assert {part_of(names[id(p)], family) for p in g["params"]} == {g["name"]}
    with pytest.raises(ValueError, match=r"names \['projector'\], which has no trainable"):
        parameter_groups(tiny_model, 1e-3, {"projector": 10.0})
    with pytest.raises(ValueError, match="valid parts"):
        parameter_groups(tiny_model, 1e-3, {"vision": 10.0})
