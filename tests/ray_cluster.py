"""A real two-node Ray cluster on this machine for tests, stopped without touching any other.

`ray stop` would stop every Ray process on the machine (other users' clusters included), so
each node is started with `ray start --block` in a session of its own (`start_new_session`),
with its own temp dir and every port chosen free (none of Ray's fixed defaults such as 8265,
10001 or 52365, which another cluster may hold). Ray's worker processes get process groups
of their own but stay in their node's session, so stopping is: SIGKILL every process whose
session id is one of ours (read from /proc), then remove the temp dir.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_args(temp_dir: str) -> list[str]:
    ports = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port")
    ports += ("--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port")
    return [
        "--block", "--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--temp-dir", temp_dir,
        "--object-store-memory", str(80 * 2**20), "--disable-usage-stats",
        *(arg for flag in ports for arg in (flag, str(_free_port()))),
    ]  # fmt: skip


def node_env() -> dict[str, str]:
    """What a node's (and so its workers') processes see: this checkout importable, no token
    auth (which `ray start` turns on by default; the cluster is this machine's alone), and
    quick health checks."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    # A killed node is declared dead after about 1.5 s, not Ray's default 15 s or more.
    health = {"period_ms": "500", "timeout_ms": "500", "failure_threshold": "3"}
    health = {f"RAY_health_check_{k}": v for k, v in health.items()}
    return {**os.environ, "PYTHONPATH": path, "RAY_AUTH_MODE": "disabled", **health}


def _sessions_processes(sessions: set[int]) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.getsid(int(entry.name)) in sessions:
                    pids.append(int(entry.name))
    return pids


@dataclass
class RayCluster:
    """A running test cluster: `address` for `ray.init`, and its nodes (0 is the head);
    `client_address` is the head's Ray Client server (`ray://127.0.0.1:PORT`)."""

    address: str
    nodes: list[subprocess.Popen]
    client_address: str = ""
    temp_dir: str = ""

    def logs(self, pattern: str) -> str:
        """The text of this cluster's log files matching `pattern` (e.g. a server's .err file
        named in an error), for a failing test to show."""
        files = sorted(Path(self.temp_dir).glob(f"session_latest/logs/{pattern}"))
        return "\n".join(f"== {f.name}\n{f.read_text(errors='replace')[-3000:]}" for f in files)

    def kill_node(self, index: int) -> None:
        """SIGKILL node `index` and every process it started (its raylet and workers)."""
        _kill_sessions([self.nodes[index]])


def _kill_sessions(nodes: list[subprocess.Popen]) -> None:
    sessions = {node.pid for node in nodes}  # start_new_session: session id == its pid
    for _ in range(3):  # a dying raylet may still start a worker: sweep again
        pids = _sessions_processes(sessions)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for node in nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(timeout=5)
        if not pids:
            break
        time.sleep(0.2)


@contextlib.contextmanager
def ray_cluster(nodes: int = 2, timeout_s: float = 90.0) -> Iterator[RayCluster]:
    """A head plus `nodes - 1` worker nodes, one CPU each, until the block ends."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="mmr-ray-", dir="/tmp")  # short: socket paths
    address = f"127.0.0.1:{_free_port()}"
    log = open(Path(temp_dir) / "nodes.log", "ab")  # noqa: SIM115 (closed in finally)
    started: list[subprocess.Popen] = []

    def start(*args: str) -> None:
        cmd = [str(RAY), "start", *args, *_node_args(temp_dir)]
        started.append(
            subprocess.Popen(cmd, env=node_env(), stdout=log, stderr=log, start_new_session=True)
        )

    client_port = _free_port()
    try:
        start("--head", "--port", address.split(":")[1], "--include-dashboard=false",
              "--dashboard-port", str(_free_port()), "--ray-client-server-port", str(client_port))  # fmt: skip
        for _ in range(nodes - 1):
            start("--address", address)
        deadline = time.monotonic() + timeout_s
        while True:  # wait until every node has joined
            with contextlib.suppress(ConnectionError, RuntimeError):
                ray.init(address=address, log_to_driver=False)
                try:
                    while sum(n["Alive"] for n in ray.nodes()) < nodes:
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"{nodes} Ray nodes did not all join in time")
                        time.sleep(0.2)
                    break
                finally:
                    ray.shutdown()
            if time.monotonic() > deadline or any(n.poll() is not None for n in started):
                log.flush()
                tail = (Path(temp_dir) / "nodes.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the Ray cluster did not start; `ray start` said:\n{tail}")
            time.sleep(0.5)
        yield RayCluster(address, started, f"ray://127.0.0.1:{client_port}", temp_dir)
    finally:
        ray.shutdown()
        _kill_sessions(started)
        shutil.rmtree(temp_dir, ignore_errors=True)
        log.close()
