"""An image processor's features computed once per image in verl's rollouts.

verl 0.9.1's agent loop runs the model's processor on a prompt's images three times for
each of its n rollouts (verl/experimental/agent_loop/agent_loop.py: the prompt's tokens in
`ct_build_initial_tokens`, the actor's multimodal inputs in `_agent_loop_postprocess` and
again for the reward batch in `_compute_score`): 3n runs of the same images per prompt, 24
at GSPO's n=8. The image processor's part (resize, rescale, normalize, patchify) was 27% of
the agent-loop worker's CPU in the demo's GSPO on the 2-core CPU machine (py-spy; a step
~1 s faster with the cache, benchmarks/RESULTS.md); on a GPU node it is host work beside
the generation, and real images cost more to process than the demo's 112 x 112 ones.

`ImageFeatureCache` stands in for a processor's `image_processor` and memoises its call by
the images' content (and the call's arguments): the first call computes the features,
later calls with equal images get a copy of them. Image processors are deterministic, so
the features are the ones the wrapped processor computes (tests/rl/test_image_cache.py
compares them tensor for tensor). It answers as the image processor it wraps, `__class__`
included: verl's vLLM server collapses a Qwen-VL prompt's image tokens only where the class
name says Qwen2VL, and a cache that named itself sent vLLM every image token doubled up
(GSPO then trains on rollouts of another prompt; `actor/ppo_kl` shows it). Bounded: least recently used entries go first beyond
`MMR_IMAGE_CACHE_MB` (default 512 MiB per process; 0 turns the cache off). Set it for
verl's workers in `ray_kwargs.ray_init.runtime_env.env_vars`.

Installed by mmr's verl plugin on every processor verl's `HFModelConfig` loads
(`install_verl`: its module's `hf_processor`), on every platform. Inputs it cannot key
(tensors, paths, video) go to the image processor uncached.
"""

from __future__ import annotations

import copy
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image

CACHE_ENV = "MMR_IMAGE_CACHE_MB"
DEFAULT_MB = 512


def cache_megabytes() -> float:
    """`MMR_IMAGE_CACHE_MB` (default 512): the cache's bound per process; 0 turns it off."""
    raw = os.environ.get(CACHE_ENV, "").strip()
    if not raw:
        return float(DEFAULT_MB)
    try:
        value = float(raw)
    except ValueError as err:
        raise ValueError(
            f"{CACHE_ENV}={raw!r}: expected a number of MiB (0 turns the cache off)"
        ) from err
    if value < 0:
        raise ValueError(f"{CACHE_ENV}={raw!r}: must be >= 0 (0 turns the cache off)")
    return value


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def image_key(images: Any) -> Any:
    """A hashable key for a PIL image, a numpy array or a (nested) list of them, by content;
    None for anything else (then the call is not cached)."""
    if isinstance(images, Image.Image):
        palette = images.getpalette() if images.mode in ("P", "PA") else None
        return ("pil", images.mode, images.size, _digest(images.tobytes()),
                None if palette is None else _digest(bytes(palette)),
                repr(images.info.get("transparency")))  # fmt: skip
    if isinstance(images, np.ndarray) and images.dtype != object:
        return (
            "np",
            images.dtype.str,
            images.shape,
            _digest(np.ascontiguousarray(images).tobytes()),
        )
    if isinstance(images, (list, tuple)) and images:
        keys = tuple(image_key(image) for image in images)
        return None if any(key is None for key in keys) else keys
    return None


def _copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    return copy.deepcopy(value)


def _nbytes(features: Any) -> int:
    return sum(
        v.nbytes if isinstance(v, (torch.Tensor, np.ndarray)) else 64 for v in features.values()
    )  # fmt: skip


class ImageFeatureCache:
    """An image processor whose calls are memoised by image content (see the module)."""

    def __init__(self, image_processor: Any, max_bytes: int) -> None:
        if isinstance(image_processor, ImageFeatureCache):
            raise TypeError("this image processor is cached already")
        self.__dict__["_inner"] = image_processor
        self.__dict__["_max_bytes"] = int(max_bytes)
        self.__dict__["_entries"] = OrderedDict()
        self.__dict__["_bytes"] = 0
        self.__dict__["_lock"] = threading.Lock()
        self.__dict__["hits"] = 0
        self.__dict__["misses"] = 0
        self.__dict__["uncached"] = 0

    # Everything but the call is the wrapped image processor's, its class included: code
    # that asks what it is (verl's vLLM server dedups Qwen-VL's image tokens only where
    # `"Qwen2VLImageProcessor" in image_processor.__class__.__name__`) gets the same answer
    # with the cache in front (`isinstance` too; `type()` alone names the cache).
    @property
    def __class__(self) -> type:  # type: ignore[override]
        return type(self.__dict__["_inner"])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_inner"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, value)

    def __repr__(self) -> str:
        return repr(self._inner)

    # Copies and pickles are of the image processor itself, without the cache (a processor's
    # `to_dict` deep-copies its attributes; Ray pickles what it sends).
    def __deepcopy__(self, memo: dict) -> Any:
        return copy.deepcopy(self._inner, memo)

    def __copy__(self) -> Any:
        return copy.copy(self._inner)

    def __reduce__(self) -> tuple:
        return (_identity, (self._inner,))

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    def __call__(self, images: Any, *args: Any, **kwargs: Any) -> Any:
        key = image_key(images)
        if key is not None:
            try:
                key = (key, repr(args), repr(sorted(kwargs.items())))
            except Exception:  # an argument without a repr: not cached
                key = None
        if key is None:
            with self._lock:
                self.__dict__["uncached"] += 1
            return self._inner(images, *args, **kwargs)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                self.__dict__["hits"] += 1
        if hit is not None:
            return _features(hit)
        features = self._inner(images, *args, **kwargs)
        with self._lock:
            self.__dict__["misses"] += 1
        if isinstance(features, Mapping):
            self._store(key, _features(features))
        return features

    def _store(self, key: Any, features: Any) -> None:
        size = _nbytes(features)
        if size > self._max_bytes:
            return
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = features
            self.__dict__["_bytes"] += size
            while self._bytes > self._max_bytes:
                _, old = self._entries.popitem(last=False)
                self.__dict__["_bytes"] -= _nbytes(old)


def _identity(value: Any) -> Any:
    return value


def _features(features: Any) -> Any:
    """A copy of a processor output (a `BatchFeature` or a dict), tensors cloned."""
    data = {k: _copy(v) for k, v in features.items()}
    if type(features) is not dict:
        try:
            return type(features)(data=data)
        except TypeError:
            pass
    return data


def cache_images(processor: Any, max_bytes: int | None = None) -> bool:
    """Put an `ImageFeatureCache` in front of `processor.image_processor`; False where the
    processor has none, has one already, or the bound is 0."""
    if max_bytes is None:
        max_bytes = int(cache_megabytes() * 2**20)
    inner = getattr(processor, "image_processor", None)
    if inner is None or isinstance(inner, ImageFeatureCache) or max_bytes <= 0:
        return False
    processor.image_processor = ImageFeatureCache(inner, max_bytes)
    return True


def cached_loader(original: Any) -> Any:
    """verl's `hf_processor` (`original`), its processor's image features cached."""

    def hf_processor(*args: Any, **kwargs: Any) -> Any:
        processor = original(*args, **kwargs)
        if processor is not None:
            cache_images(processor)
        return processor

    hf_processor._mmr_image_cache = True
    hf_processor._mmr_original = original
    return hf_processor


def install_verl() -> bool:
    """Cache the image features of every processor verl's `HFModelConfig` loads (the agent
    loop's among them); False where the cache is off."""
    if cache_megabytes() <= 0:
        return False
    import verl.workers.config.model as model_config

    if not hasattr(model_config.hf_processor, "_mmr_image_cache"):
        model_config.hf_processor = cached_loader(model_config.hf_processor)
    return True
