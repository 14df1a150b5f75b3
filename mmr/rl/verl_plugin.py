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

import logging

logger = logging.getLogger("mmr.rl.verl_plugin")

INSTALLED: dict[str, object] = {}

try:
    from mmr import env_secrets

    INSTALLED["secrets"] = env_secrets.load_secrets()  # names only
except Exception:
    logger.warning("mmr: the secrets file was not read", exc_info=True)

try:
    from mmr.rl import verl_cpu

    INSTALLED["cpu_platform"] = verl_cpu.install()
except Exception:
    logger.warning("mmr: verl's CPU platform not installed", exc_info=True)
try:  # after the platform: fix C imports verl's FSDP engine, which settles verl's device
    from mmr.rl import verl_fixes

    INSTALLED["fixes"] = verl_fixes.install()
except Exception:
    logger.warning("mmr: verl fixes not installed", exc_info=True)
try:  # after the fixes: it imports verl's FSDP engine, which binds fix B's function by name
    from mmr.rl import verl_cpu

    INSTALLED["cpu_engine"] = verl_cpu.install_engine()
except Exception:
    logger.warning("mmr: verl's CPU workarounds in its FSDP engine not installed", exc_info=True)
try:
    from mmr.rl import image_cache

    INSTALLED["image_cache"] = image_cache.install_verl()
except Exception:
    logger.warning("mmr: the image-feature cache for verl's rollouts not installed", exc_info=True)
try:
    from mmr.rl import advantage

    advantage.register()
    INSTALLED["adv_estimator"] = advantage.NAME
except Exception:
    logger.warning("mmr: the mmr_grpo advantage estimator not registered", exc_info=True)
