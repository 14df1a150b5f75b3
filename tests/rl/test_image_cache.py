"""The image-feature cache for verl's rollouts (mmr/rl/image_cache.py).

Real processors (the tiny Qwen2.5-VL and Qwen3-VL ones mmr builds offline), called as
verl's agent loop calls them: the same image decoded afresh for each call. Run under both
venvs' transformers releases (`make test`), since the cache sits inside the processor.
"""

from __future__ import annotations

import copy
import io
import pickle

import numpy as np
import pytest
import torch
import verl  # noqa: F401  (verl loads mmr's plugin)
from PIL import Image
from ray import cloudpickle
from transformers import AutoProcessor

from mmr.rl import image_cache, verl_plugin

SMALL = {"shortest_edge": 28 * 28, "longest_edge": 56 * 56}  # at most 56 x 56 pixels


def _png(seed: int, size: tuple[int, int] = (112, 112)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _decoded(png: bytes) -> Image.Image:
    """A new PIL image each call, as verl decodes a prompt's image for each rollout."""
    return Image.open(io.BytesIO(png)).convert("RGB")


def _prompt(processor) -> str:
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}
    ]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.fixture(params=["tiny_qwen2_5_vl", "tiny_qwen3_vl"])
def model_dir(request):
    return request.getfixturevalue(request.param)


def test_cached_processor_gives_the_uncached_features_and_computes_each_image_once(model_dir):
    plain = AutoProcessor.from_pretrained(model_dir)
    cached = AutoProcessor.from_pretrained(model_dir)
    assert image_cache.cache_images(cached, max_bytes=2**26)
    assert not image_cache.cache_images(cached, max_bytes=2**26)  # once
    cache = cached.image_processor
    text = _prompt(plain)
    pngs = [_png(0), _png(1), _png(2, (140, 84))]
    for round_ in range(3):  # each image seen 3 times, decoded afresh each time
        for i, png in enumerate(pngs):
            want = plain(
                text=[text + f" answer {round_}"], images=[_decoded(png)], return_tensors="pt"
            )
            got = cached(
                text=[text + f" answer {round_}"], images=[_decoded(png)], return_tensors="pt"
            )
            assert set(got) == set(want)
            for key in want:
                assert torch.equal(got[key], want[key]), (round_, i, key)
    assert (cache.misses, cache.hits) == (3, 6)
    # The features handed out are copies: changing them does not change the cache's.
    got = cached(text=[text], images=[_decoded(pngs[0])], return_tensors="pt")
    got["pixel_values"].zero_()
    again = cached(text=[text], images=[_decoded(pngs[0])], return_tensors="pt")
    want = plain(text=[text], images=[_decoded(pngs[0])], return_tensors="pt")
    assert torch.equal(again["pixel_values"], want["pixel_values"])
    # Other arguments to the image processor are part of the key.
    small = cached(text=[text], images=[_decoded(pngs[0])], return_tensors="pt", size=SMALL)
    want_small = plain(text=[text], images=[_decoded(pngs[0])], return_tensors="pt", size=SMALL)
    assert torch.equal(small["pixel_values"], want_small["pixel_values"])
    assert small["pixel_values"].shape != want["pixel_values"].shape


def test_cache_is_bounded_least_recently_used_first(tiny_qwen2_5_vl):
    processor = AutoProcessor.from_pretrained(tiny_qwen2_5_vl)
    one = processor.image_processor([_decoded(_png(0))], return_tensors="pt")
    size = sum(v.nbytes for v in one.values())
    image_cache.cache_images(processor, max_bytes=int(2.5 * size))  # room for two
    cache = processor.image_processor
    for seed in (0, 1, 0, 2):  # 0 used again before 2 comes: 1 goes
        cache([_decoded(_png(seed))], return_tensors="pt")
    assert cache.cached_bytes <= 2.5 * size
    assert (cache.misses, cache.hits) == (3, 1)
    cache([_decoded(_png(0))], return_tensors="pt")
    cache([_decoded(_png(1))], return_tensors="pt")
    assert (cache.misses, cache.hits) == (4, 2)


def test_inputs_it_cannot_key_go_to_the_image_processor_uncached(tiny_qwen2_5_vl):
    processor = AutoProcessor.from_pretrained(tiny_qwen2_5_vl)
    image_cache.cache_images(processor, max_bytes=2**26)
    cache = processor.image_processor
    tensor = torch.rand(3, 56, 56)
    want = processor.image_processor._inner([tensor], return_tensors="pt", do_rescale=False)
    got = cache([tensor], return_tensors="pt", do_rescale=False)
    assert torch.equal(got["pixel_values"], want["pixel_values"])
    assert (cache.uncached, cache.misses, cache.hits) == (1, 0, 0)
    assert image_cache.image_key([_decoded(_png(0)), "a/path.png"]) is None
    # Palette images with the same indices and other palettes are other images.
    a = Image.new("P", (8, 8))
    a.putpalette([255, 0, 0] * 256)
    b = a.copy()
    b.putpalette([0, 0, 255] * 256)
    assert a.tobytes() == b.tobytes() and image_cache.image_key(a) != image_cache.image_key(b)
    assert image_cache.image_key(np.zeros((4, 4, 3), np.uint8)) is not None


def test_cached_processor_saves_copies_and_pickles_as_the_plain_one(tiny_qwen2_5_vl, tmp_path):
    plain = AutoProcessor.from_pretrained(tiny_qwen2_5_vl)
    cached = AutoProcessor.from_pretrained(tiny_qwen2_5_vl)
    image_cache.cache_images(cached, max_bytes=2**26)
    cached.image_processor([_decoded(_png(0))], return_tensors="pt")
    # verl's checkpoints save the processor: the files are the plain processor's.
    plain.save_pretrained(tmp_path / "plain")
    cached.save_pretrained(tmp_path / "cached")
    names = sorted(p.name for p in (tmp_path / "plain").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "cached").iterdir())
    for name in names:
        assert (tmp_path / "plain" / name).read_bytes() == (
            tmp_path / "cached" / name
        ).read_bytes(), name
    assert repr(cached.image_processor) == repr(plain.image_processor)
    # Copies and pickles (Ray's cloudpickle too) carry the image processor, not the cache.
    inner = type(plain.image_processor)
    for clone in (
        copy.deepcopy(cached),
        pickle.loads(pickle.dumps(cached)),
        cloudpickle.loads(cloudpickle.dumps(cached)),
    ):
        assert type(clone.image_processor) is inner
    assert type(copy.copy(cached.image_processor)) is inner
    # What the cache stands in for answers as the image processor, its class included: verl's
    # vLLM server dedups Qwen-VL's image tokens only where the class name says Qwen2VL (a cache
    # that named itself there sent vLLM a prompt with every image token doubled up: the demo's
    # GSPO sampled from another prompt than the actor trained on, actor/ppo_kl 0.09, not 0).
    from verl.workers.rollout.utils import qwen2_5_vl_dedup_image_tokens

    assert cached.image_processor.__class__ is inner and isinstance(cached.image_processor, inner)
    ids = [1, plain.image_token_id, plain.image_token_id, plain.image_token_id, 2]
    assert qwen2_5_vl_dedup_image_tokens(ids, cached) == qwen2_5_vl_dedup_image_tokens(ids, plain)
    assert qwen2_5_vl_dedup_image_tokens(ids, cached) == [1, plain.image_token_id, 2]
    # Attribute reads and writes are the image processor's.
    assert cached.image_processor.patch_size == plain.image_processor.patch_size
    cached.image_processor.merge_size = cached.image_processor.merge_size
    assert "merge_size" not in cached.image_processor.__dict__


def test_verl_plugin_caches_the_processor_verl_loads(tiny_qwen2_5_vl, monkeypatch):
    # Loaded by verl itself (entry point group verl.plugins), not by this test.
    assert verl_plugin.INSTALLED["image_cache"] is True
    from verl.workers.config.model import HFModelConfig

    config = HFModelConfig(path=str(tiny_qwen2_5_vl))
    assert isinstance(config.processor.image_processor, image_cache.ImageFeatureCache)
    # Installing twice wraps nothing twice.
    image_cache.install_verl()
    import verl.workers.config.model as model_config

    assert not hasattr(model_config.hf_processor._mmr_original, "_mmr_image_cache")
    # MMR_IMAGE_CACHE_MB=0 turns it off; a bad value is named.
    monkeypatch.setenv(image_cache.CACHE_ENV, "0")
    assert (
        HFModelConfig(path=str(tiny_qwen2_5_vl)).processor.image_processor.__class__
        is not image_cache.ImageFeatureCache
    )
    monkeypatch.setenv(image_cache.CACHE_ENV, "lots")
    with pytest.raises(ValueError, match="MMR_IMAGE_CACHE_MB='lots'"):
        image_cache.cache_megabytes()
