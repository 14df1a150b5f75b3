"""mmr's fixes for verl 0.9.1's Qwen2.5-VL actor update (mmr/rl/verl_fixes.py), and its plugin.

Each bug is first reproduced with verl's own function (kept as `_mmr_original` on the
fix), then the installed fix is shown to give the right result. Plain CPU code: verl's
functions are the same on GPU, so these bugs and fixes are too.
"""

from __future__ import annotations

import pickle

import pytest
import torch
import verl  # loads mmr's plugin through verl's entry point; used below
import verl.models.transformers.qwen2_vl as qwen2_vl
import verl.utils.tensordict_utils as tu
from tensordict import TensorDict
from transformers import AutoModelForImageTextToText

from mmr.rl import verl_fixes, verl_plugin


def test_verl_plugin_loads_the_fixes_on_import_verl():
    # Loaded by verl itself (entry point group verl.plugins), not by this test.
    assert verl_plugin.INSTALLED["fixes"] == ["A", "B", "C"]
    assert qwen2_vl._get_input_embeds._mmr_fix == "A"
    assert tu.maybe_fix_3d_position_ids._mmr_fix == "B"
    # Modules that import the function by name bind the fixed one.
    import verl.workers.engine.base as engine_base
    import verl.workers.engine_workers as engine_workers

    assert engine_workers.maybe_fix_3d_position_ids is tu.maybe_fix_3d_position_ids
    assert engine_base.maybe_fix_3d_position_ids is tu.maybe_fix_3d_position_ids
    # Installing twice wraps nothing twice.
    verl_fixes.install()
    assert qwen2_vl._get_input_embeds._mmr_original.__module__ == qwen2_vl.__name__


# ---- A: a micro-batch without images ----------------------------------------------------


@pytest.fixture(scope="module")
def model(tiny_qwen2_5_vl):
    # verl calls the function with the inner model (qwen2_vl.py:432: `self` of the base forward).
    return AutoModelForImageTextToText.from_pretrained(tiny_qwen2_5_vl).eval().model


def test_verl_bug_a_text_only_micro_batch(model):
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    mask = torch.ones_like(ids)
    verl_own = qwen2_vl._get_input_embeds._mmr_original
    with pytest.raises(AttributeError, match="mean"):
        verl_own(model, ids, mask)  # verl 0.9.1: the vision output object has no .mean()

    embeds, out_mask = qwen2_vl._get_input_embeds(model, ids, mask)
    torch.testing.assert_close(embeds, model.get_input_embeddings()(ids))
    assert torch.equal(out_mask, mask)
    # The vision tower took part (zero gradient, but in the graph): FSDP ranks stay in step.
    model.zero_grad()
    qwen2_vl._get_input_embeds(model, ids, mask)[0].sum().backward()
    vision_grads = [p.grad for p in model.visual.parameters()]
    assert all(g is not None and torch.count_nonzero(g) == 0 for g in vision_grads)
    model.zero_grad()


def test_verl_fix_a_leaves_image_batches_to_verl(model, tiny_qwen2_5_vl):
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_qwen2_5_vl)
    text = "<|vision_start|><|image_pad|><|vision_end|>what colour?"
    batch = processor(
        text=[text], images=[Image.new("RGB", (56, 56), (200, 30, 30))], return_tensors="pt"
    )
    args = (
        model,
        batch["input_ids"],
        batch["attention_mask"],
        batch["pixel_values"],
        None,
        batch["image_grid_thw"],
        None,
    )
    with torch.no_grad():
        fixed, _ = qwen2_vl._get_input_embeds(*args)
        verl_own, _ = qwen2_vl._get_input_embeds._mmr_original(*args)
    torch.testing.assert_close(fixed, verl_own)
    assert not torch.equal(fixed, model.get_input_embeddings()(batch["input_ids"]))


# ---- B: equal-length batches of 3-D position ids ----------------------------------------


def mrope_position_ids(lengths: list[int]) -> list[torch.Tensor]:
    """Per-sample (4, L) position ids as verl's agent loop builds them (text row + t/h/w)."""
    return [torch.arange(4 * n).reshape(4, n) + 1000 * i for i, n in enumerate(lengths)]


def transfer_queue_batch(samples: list[torch.Tensor]) -> TensorDict:
    # TransferQueue packs a field's per-sample tensors as one jagged nested tensor
    # (transfer_queue/storage/managers/simple_storage_manager.py, `as_nested_tensor`).
    nested = torch.nested.as_nested_tensor(samples, layout=torch.jagged)
    input_ids = torch.nested.as_nested_tensor([s[0] for s in samples], layout=torch.jagged)
    return TensorDict({"position_ids": nested, "input_ids": input_ids}, batch_size=[len(samples)])


@pytest.mark.parametrize("lengths", [[6, 6, 6, 6], [9]], ids=["equal", "single"])
def test_verl_bug_b_update_actor_equal_lengths(lengths):
    samples = mrope_position_ids(lengths)
    td = transfer_queue_batch(samples)
    tu.maybe_fix_3d_position_ids._mmr_original(td)  # verl 0.9.1's own function
    # What update_actor does (engine_workers.py:289). torch's message differs by release:
    # "split_with_sizes expects split_sizes to sum exactly to ..." or "Expected cond ...".
    with pytest.raises(RuntimeError):
        td["position_ids"].unbind()

    td = transfer_queue_batch(samples)
    tu.maybe_fix_3d_position_ids(td)
    assert [t.tolist() for t in td["position_ids"].unbind()] == [s.tolist() for s in samples]


def test_verl_bug_b_log_prob_positions_equal_lengths():
    samples = mrope_position_ids([5, 5])
    td = transfer_queue_batch(samples)
    tu.maybe_fix_3d_position_ids._mmr_original(td)
    # The log-prob pass does not raise: chunk_tensordict falls back to a padded copy...
    chunks = tu.chunk_tensordict(td, 2)
    got = [c["position_ids"].unbind()[0] for c in chunks]
    # ...whose positions are not the samples' (old log-probs with wrong mrope positions).
    assert any(g.shape != s.shape or not torch.equal(g, s) for g, s in zip(got, samples))

    td = transfer_queue_batch(samples)
    tu.maybe_fix_3d_position_ids(td)
    chunks = tu.chunk_tensordict(td, 2)
    got = [c["position_ids"].unbind()[0] for c in chunks]
    assert all(torch.equal(g, s) for g, s in zip(got, samples))


def test_verl_fix_b_keeps_verls_own_case():
    # Differing lengths: torch makes the sequence ragged; a pickle round trip can reset the
    # ragged index (what verl's function repairs). The fix must leave that path to verl.
    samples = mrope_position_ids([3, 7, 5])
    td = transfer_queue_batch(samples)
    assert td["position_ids"]._ragged_idx == 2
    td = pickle.loads(pickle.dumps(td.consolidate()))
    tu.maybe_fix_3d_position_ids(td)
    assert [t.tolist() for t in td["position_ids"].unbind()] == [s.tolist() for s in samples]
    assert not verl_fixes.rows_are_ragged(transfer_queue_batch(samples)["position_ids"])


# ---- C: actor.freeze_vision_tower is read nowhere -----------------------------------------


def test_verl_bug_c_freeze_vision_tower_is_read_nowhere():
    # verl 0.9.1's actor config has the key; no module of verl reads it.
    from pathlib import Path

    from verl.workers.config.actor import ActorConfig

    assert "freeze_vision_tower" in ActorConfig.__dataclass_fields__
    root = Path(verl.__file__).parent
    readers = [p.relative_to(root).as_posix() for p in root.rglob("*.py")
               if "freeze_vision_tower" in p.read_text(errors="replace")]  # fmt: skip
    assert readers == ["workers/config/actor.py"]


def test_verl_fix_c_freezes_the_tower_and_projector_where_the_key_is_set(
    tiny_qwen2_5_vl, monkeypatch
):
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngine

    assert FSDPEngine._build_module._mmr_fix == "C"
    build = verl_fixes.frozen_vision_tower(
        lambda self: AutoModelForImageTextToText.from_pretrained(tiny_qwen2_5_vl)
    )
    monkeypatch.setenv(verl_fixes.FREEZE_ENV, "1")
    module = build(None)
    frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
    visual = {n for n, _ in module.named_parameters() if ".visual." in f".{n}"}
    assert frozen == visual and visual  # the tower and its merger (the projector), no more
    monkeypatch.setenv(verl_fixes.FREEZE_ENV, "0")
    assert all(p.requires_grad for p in build(None).parameters())
