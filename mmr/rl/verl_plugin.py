"""mmr's verl plugin: loaded by every `import verl` (entry point group `verl.plugins`).

verl 0.9.1 loads each entry point of that group at the end of its `__init__`
(verl/__init__.py:57-77), in the driver and in every Ray worker, and swallows a plugin's
exception at debug level; so this module reports its own failures as warnings. It
installs, in this order:

0. `mmr.env_secrets`: the API keys of the file named by `MMR_SECRETS_FILE` (shared storage),
   so that wandb in verl's TaskRunner and the judge in the reward workers find them without
   the keys travelling in the Ray job's runtime env (which `ray job list` shows).
1. `mmr.rl.verl_cpu`: a CPU platform for verl and its CPU workarounds, active only where
   there is no accelerator (never on a GPU machine).
2. `mmr.rl.verl_fixes`: fixes for three bugs of verl 0.9.1's Qwen2.5-VL actor update
   (text-only micro-batches; equal-length batches of 3-D position ids; an ignored
   `actor.freeze_vision_tower`), on every platform. After the platform: importing verl's
   FSDP engine (fix C) makes verl settle its device, which must see the platform first.
3. `mmr.rl.verl_cpu.install_engine`: the CPU workarounds inside verl's FSDP engine module
   (a KL reference model offloaded without pinned memory). After the fixes: importing
   that module binds fix B's function by name in verl/workers/engine/base.py.
4. `mmr.rl.image_cache`: the image processor's features computed once per image in the
   agent loop (verl runs the processor on a prompt's images 3 times for each rollout), on
   every platform; `MMR_IMAGE_CACHE_MB=0` turns it off.
5. `mmr.rl.advantage`: the `mmr_grpo` advantage estimator (verl's GRPO, exactly 0 on a
   group whose rewards are all equal), registered with verl's `register_adv_est`.

`VERL_USE_EXTERNAL_PLUGINS=none` turns the plugin off (verl's own switch).
"""

from __future__ import annotations

import importlib
import logging

logger = logging.getLogger("mmr.rl.verl_plugin")

INSTALLED: dict[str, object] = {}

# (INSTALLED's key, module, its install function, what a failure leaves out), run in this
# order (the list above says why).
STEPS = (
    ("secrets", "mmr.env_secrets", "load_secrets", "the secrets file was not read"),
    ("cpu_platform", "mmr.rl.verl_cpu", "install", "verl's CPU platform not installed"),
    # after the platform: fix C imports verl's FSDP engine, which settles verl's device
    ("fixes", "mmr.rl.verl_fixes", "install", "verl fixes not installed"),
    # after the fixes: it imports verl's FSDP engine, which binds fix B's function by name
    ("cpu_engine", "mmr.rl.verl_cpu", "install_engine",
     "verl's CPU workarounds in its FSDP engine not installed"),
    ("image_cache", "mmr.rl.image_cache", "install_verl",
     "the image-feature cache for verl's rollouts not installed"),
    ("adv_estimator", "mmr.rl.advantage", "register",
     "the mmr_grpo advantage estimator not registered"),
)  # fmt: skip

for _key, _module, _install, _failure in STEPS:
    try:
        INSTALLED[_key] = getattr(importlib.import_module(_module), _install)()
    except Exception:
        logger.warning("mmr: %s", _failure, exc_info=True)
