"""`executor: ray`: the runner's shards as Ray tasks, one task per shard, on any Ray cluster.

    mmr data run --config recipes/data/mfr.yaml --step all --output DIR executor=ray ray.address=auto

Only where a shard runs changes: each task calls the runner's own shard function (the stage's
`process`, then the shard's part files moved into place), the driver reads the input in the
same order into the same shards and records each finished shard in the manifest as the local
executor does. So the kept ids, reports, counts and parquet schema are the same whichever
executor ran, and so is resume: a shard is done when its files and manifest entry are
written; a driver killed mid-run takes its job's tasks with it, and a rerun (with either
executor) redoes only the shards its manifest lacks. A task whose node dies is run again
on another (`ray.max_retries`); writing a shard twice replaces the same files.

At most `ray.max_in_flight` shards are submitted at once (default: the cluster's CPUs over
`ray.num_cpus`, plus one queued), which bounds memory and, for the stages that call a model
(distill, difficulty, LLM clean), the requests in flight: each task runs the stage's own
client with its `concurrency` (or, with `engine: ray_llm`, a Ray Data job of its requests).

Shards are Ray tasks, not a Ray Data dataset over the shard list: they are cut as the
driver streams the input through mmr's readers (formats, counted skips, resume by shard
index), so the list is not known up front as a dataset needs it (`from_items` would hold
the whole input; a datasource would redo the readers); a shard's work writes its files and
returns one manifest entry, a side effect rather than a row transform; and `ray.wait`
bounds the tasks in flight in a few lines. Ray Data is used where it fits: a shard's model
calls through `ray.data.llm` (`ray_llm.py`).

On a cluster: DIR must be a folder every node sees (a shared file system: tasks write the
part files, the driver the manifest), and mmr must be installed on every node (or shipped
with `ray job submit --runtime-env-json '{"working_dir": "."}'`). `ray.address=auto` joins
the cluster that RAY_ADDRESS names or that runs on this machine; unset, a new Ray instance
is started on this machine for the run (it never joins one that happens to run here).

Dedup compares each shard with every row kept before it, so that comparison runs in the
driver shard after shard; on Ray its costly part, the embeddings and image hashes of each
shard, is computed in Ray tasks up to `ray.max_in_flight` shards ahead
(`mmr.data.pipeline.dedup`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

__all__ = ["connect", "in_flight_limit", "run_shards", "shutdown"]

log = logging.getLogger(__name__)
_CONNECTED = False  # whether this module connected (and so `shutdown` disconnects)


def connect(address: str | None) -> None:
    """Join the Ray cluster at `address` (None: start a new local instance) unless this
    process is connected already (a Ray task is; so is a caller that ran `ray.init`)."""
    global _CONNECTED
    import ray

    if ray.is_initialized():
        return
    if address is None:  # "local": a new instance, never another user's cluster found here
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    elif address.startswith("ray://"):
        _connect_client(address)
    else:
        ray.init(address=address, log_to_driver=False)
    _CONNECTED = True


_CLIENT_ATTEMPTS = 3


def _connect_client(address: str) -> None:
    """Ray Client (`ray://`): the head's proxy starts a server process for each driver, and that
    start fails now and then on a busy head (Ray 2.60: the process exits at once, its log
    empty; "Starting Ray client server failed"); a new attempt starts a new one."""
    import ray

    for attempt in range(1, _CLIENT_ATTEMPTS + 1):
        try:
            ray.init(address=address, log_to_driver=False)
            return
        except ConnectionAbortedError as e:  # the server's "Initialization failure"
            if attempt == _CLIENT_ATTEMPTS:
                raise
            reason = str(e).strip().splitlines()[-1]
            log.warning("Ray Client at %s: %s; connecting again (%d of %d)", address, reason,
                        attempt + 1, _CLIENT_ATTEMPTS)  # fmt: skip


def in_flight_limit(cfg: Any) -> int:
    """Tasks submitted at once: `ray.max_in_flight`, else the cluster's CPUs over
    `ray.num_cpus`, plus one queued."""
    import ray

    if cfg.max_in_flight is not None:
        return cfg.max_in_flight
    return max(1, int(ray.cluster_resources().get("CPU", 1) // cfg.num_cpus)) + 1


def _shard_task(run_shard: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    from mmr.data.pipeline import runner

    runner._init_worker()  # as a pool worker: math-verify in-process, no nested pools
    return run_shard(*args)


def run_shards(
    run_shard: Callable[..., dict[str, Any]],
    process: Callable[..., Any],
    paths: Any,
    shards: Iterator[tuple[int, list[Any]]],
    cfg: Any,
) -> Iterator[dict[str, Any]]:
    """`run_shard(process, paths, index, samples)` for every shard, as Ray tasks; yields the
    manifest entries in the order the shards finish. `cfg` is the recipe's `ray` section."""
    import ray

    connect(cfg.address)
    # Tasks may run in another folder or on another machine: they get absolute paths.
    paths = replace(paths, **{k: Path(v).resolve() for k, v in vars(paths).items()})
    limit = in_flight_limit(cfg)
    task = ray.remote(_shard_task).options(num_cpus=cfg.num_cpus, max_retries=cfg.max_retries)
    process_ref = ray.put(process)  # sent once, not with every shard
    pending: list[Any] = []
    try:
        for index, chunk in shards:
            pending.append(task.remote(run_shard, process_ref, paths, index, chunk))
            while len(pending) >= limit:
                done, pending = ray.wait(pending, num_returns=1)
                yield ray.get(done[0])
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        for ref in pending:  # an error or an interrupt: nothing keeps running unrecorded
            ray.cancel(ref, force=True)


def shutdown() -> None:
    """Disconnect from Ray if `connect` connected (a no-op when Ray was never imported)."""
    global _CONNECTED
    ray = sys.modules.get("ray")
    if _CONNECTED and ray is not None and ray.is_initialized():
        ray.shutdown()
    _CONNECTED = False
