"""Accuracy, part 2: math-verify in worker processes, with a hard timeout per item.

math-verify's own timeouts use `signal.alarm`: they only work in a process's main thread,
count whole seconds, and cannot interrupt a long C call (a 50,000-digit integer). verl
calls reward functions from worker threads. So math-verify runs here, in a small pool of
long-lived processes, each item under math-verify's own timeouts *and* a backstop: a worker
that spends more than `hard_timeout_s` on one item is killed and replaced, that item
scores 0 with status "timeout", and the rest of its chunk is sent again.

Work goes to the workers in chunks (one message per chunk each way) so the per-item IPC
cost stays small. One pool serves every caller: a dispatcher thread owns the workers, and
any thread may call `verify_many` at the same time. `map` runs any module-level function
the same way (`score_batch` sends its rule stage through it, so big batches use every core
for extraction and rules as well).

    pool = VerifyPool(num_workers=2)
    pool.verify_many([("\\frac{1}{2}", "0.5")])   # [VerifyResult(correct=True, status="ok")]
    pool.close()                                    # also registered with atexit
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import multiprocessing as mp
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

__all__ = ["VerifyPool", "VerifyResult", "explain_pair", "run_pair", "verify_pair"]

log = logging.getLogger(__name__)

# How often the dispatcher wakes up to look for overrunning workers.
_TICK_S = 0.05


@dataclass(frozen=True)
class VerifyResult:
    """math-verify's verdict on one (answer, gold) pair."""

    correct: bool
    status: str = "ok"  # ok | timeout | error: <message>
    parsed_answer: str = ""  # filled by explain requests only
    parsed_gold: str = ""


# ---------------------------------------------------------------------------------------
# The work itself (runs in a worker's main thread, or in-process when workers=0)


class _TimeoutFlag(logging.Handler):
    """Notices math-verify's timeout warnings and swallows its log records.

    math-verify reports a timeout only as a log line that echoes the whole input (possibly
    50,000 characters); the return value is the same as for a plain mismatch.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.timed_out = False

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Timeout"):
            self.timed_out = True


_FLAG: _TimeoutFlag | None = None


def _install_flag() -> _TimeoutFlag:
    global _FLAG
    if _FLAG is None:
        _FLAG = _TimeoutFlag()
        for name in ("math_verify", "math_verify.parser", "math_verify.grader"):
            logger = logging.getLogger(name)
            logger.handlers = [_FLAG]
            logger.propagate = False
            logger.setLevel(logging.WARNING)
    return _FLAG


# Parsed gold answers, per process: the pairs of one prompt share its gold, and RL scores
# the same prompts again and again. Parse results are immutable sympy objects.
_GOLD_CACHE: dict[tuple[str, int], list] = {}
_GOLD_CACHE_SIZE = 1 << 14


def run_pair(pred: str, gold: str, parse_s: int, verify_s: int, explain: bool) -> VerifyResult:
    """math-verify on one pair with its own (signal) timeouts: main thread of a process only."""
    from math_verify import parse, verify

    flag = _install_flag()
    flag.timed_out = False
    try:
        gold_parsed = _GOLD_CACHE.get((gold, parse_s))
        if gold_parsed is None:
            gold_parsed = parse(f"${gold}$", parsing_timeout=parse_s)
            if not flag.timed_out:
                if len(_GOLD_CACHE) >= _GOLD_CACHE_SIZE:
                    _GOLD_CACHE.clear()
                _GOLD_CACHE[(gold, parse_s)] = gold_parsed
        pred_parsed = parse(f"${pred}$", parsing_timeout=parse_s)
        correct = bool(
            gold_parsed
            and pred_parsed
            and verify(gold_parsed, pred_parsed, timeout_seconds=verify_s)
        )
    except Exception as err:  # math-verify catches most; anything left is this item's error
        return VerifyResult(False, f"error: {type(err).__name__}: {str(err)[:200]}")
    status = "timeout" if flag.timed_out else "ok"
    if not explain:
        return VerifyResult(correct and status == "ok", status)
    return VerifyResult(
        correct and status == "ok", status, _short(pred_parsed), _short(gold_parsed)
    )


def _short(parsed: object) -> str:
    try:
        text = repr(parsed)
    except Exception:  # sympy's repr of a huge expression may itself fail
        text = "<unprintable>"
    return text if len(text) <= 300 else text[:300] + "..."


def verify_pair(pred: str, gold: str, parse_timeout_s: int = 2, verify_timeout_s: int = 2) -> bool:
    """math-verify in this process; only safe in the main thread (signals)."""
    return run_pair(pred, gold, parse_timeout_s, verify_timeout_s, explain=False).correct


def explain_pair(
    pred: str, gold: str, parse_timeout_s: int = 2, verify_timeout_s: int = 2
) -> VerifyResult:
    """Like `verify_pair`, with math-verify's parse of both sides; main thread only."""
    return run_pair(pred, gold, parse_timeout_s, verify_timeout_s, explain=True)


# One pair of each common kind of answer (the kinds of math RL sets).
_WARM_UP = [
    ("1", "1"),
    ("\\dfrac{2}{4}", "\\frac{1}{2}"),
    ("0.5", "\\frac{1}{2}"),
    ("x^2+2x+1", "(x+1)^2"),
    ("\\sqrt{12}", "2\\sqrt{3}"),
    ("\\pi/3", "\\frac{\\pi}{3}"),
    ("x \\in [1,3)", "[1, 3)"),
    ("(1, 2)", "(1,2)"),
    ("\\{1, 2\\}", "\\{2, 1\\}"),
    ("e^{x}", "\\exp(x)"),
]


@dataclass(frozen=True)
class _Raised:
    """An item whose function raised in the worker (the worker itself carries on)."""

    message: str


def _worker_main(
    conn: Connection, progress, warm_up: bool = True, initializer: tuple | None = None
) -> None:
    """Worker loop: receive a chunk `(fn, tasks)`, run `fn(*task)` for each, send results.

    `initializer` (`(fn, args)`) runs once before the worker takes work, untimed by the
    per-item clock (e.g. importing a reward plug-in); progress[2] turns 1 when it is done.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if warm_up:
        # Warm up before taking work: math-verify's first call imports sympy's parsers,
        # which on a loaded machine can outlast the hard timeout that starts with a chunk,
        # and each kind of expression builds sympy caches on first sight.
        for pred, gold in _WARM_UP:
            with contextlib.suppress(Exception):
                run_pair(pred, gold, 2, 2, False)
    if initializer is not None:
        with contextlib.suppress(Exception):  # a failure shows again, counted, at the first item
            initializer[0](*initializer[1])
    progress[2] = 1.0
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            return
        if chunk is None:
            return
        fn, tasks = chunk
        results = []
        for i, task in enumerate(tasks):
            progress[1] = time.monotonic()  # start time first: the parent reads index, then time
            progress[0] = i
            try:
                results.append(fn(*task))
            except Exception as err:
                results.append(_Raised(f"{type(err).__name__}: {str(err)[:200]}"))
        progress[1] = 0.0
        conn.send(results)


# ---------------------------------------------------------------------------------------
# The pool


@dataclass
class _Job:
    results: list[Any]
    remaining: int
    failed: Callable[[str], Any]  # the result of an item that timed out, raised or was lost
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Chunk:
    job: _Job
    fn: Callable[..., Any]
    positions: list[int]  # where each task's result goes in job.results
    tasks: list[tuple]


@dataclass
class _Worker:
    proc: mp.process.BaseProcess
    conn: Connection
    progress: object  # RawArray('d', 3): [index in chunk, start time of that item, ready]
    chunk: _Chunk | None = None
    spawned: float = field(default_factory=time.monotonic)


def _context() -> mp.context.BaseContext:
    # forkserver: safe from a threaded parent (verl, the judge's loop thread), and a killed
    # worker is replaced in milliseconds since the server has math-verify imported already.
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["math_verify", "mmr.rewards.verify", "mmr.rewards.compose"])
        return ctx
    return mp.get_context("spawn")


class VerifyPool:
    """Long-lived math-verify workers with chunked dispatch and a kill-on-overrun backstop."""

    def __init__(
        self,
        num_workers: int = 2,
        hard_timeout_s: float = 6.0,
        parse_timeout_s: int = 2,
        verify_timeout_s: int = 2,
        chunk_size: int = 64,
        work_fn: Callable[..., VerifyResult] = run_pair,
        initializer: tuple[Callable[..., Any], tuple] | None = None,
        startup_timeout_s: float = 120.0,
    ) -> None:
        """`work_fn` (a module-level function) replaces `run_pair` in workers; `initializer`
        (`(fn, args)`, module level) runs once in each new worker before it takes work, and a
        worker not ready within `startup_timeout_s` is killed and replaced like a stuck one."""
        if num_workers < 1:
            raise ValueError("VerifyPool needs at least one worker")
        self.num_workers = num_workers
        self.hard_timeout_s = hard_timeout_s
        self.parse_timeout_s = int(parse_timeout_s)
        self.verify_timeout_s = int(verify_timeout_s)
        self.chunk_size = chunk_size
        self._work_fn = work_fn
        self._initializer = initializer
        self.startup_timeout_s = startup_timeout_s
        self.timeouts = 0  # items killed by the backstop, over the pool's life
        self._ctx = _context()
        self._lock = threading.Lock()
        self._queue: deque[_Chunk] = deque()
        self._wake_recv, self._wake_send = mp.Pipe(duplex=False)
        self._workers: list[_Worker] = []
        self._closed = False
        self._thread: threading.Thread | None = None
        atexit.register(self.close)

    # -- public -------------------------------------------------------------------------

    def verify_many(
        self, pairs: list[tuple[str, str]], explain: bool = False
    ) -> list[VerifyResult]:
        """Verdicts for (answer, gold) pairs, in order; blocks until all are in.

        math-verify items cost from well under a millisecond to seconds, so they go out in
        small chunks (about 16 per worker): the workers then finish nearly together instead
        of one waiting on the other's last long chunk.
        """
        p, v = self.parse_timeout_s, self.verify_timeout_s
        # Pairs of one gold go out together, so each worker parses that gold once.
        first_seen: dict[str, int] = {}
        for _, gold in pairs:
            first_seen.setdefault(gold, len(first_seen))
        return self.map(
            self._work_fn,
            [(pred, gold, p, v, explain) for pred, gold in pairs],
            failed=lambda status: VerifyResult(False, status),
            chunks_per_worker=16,
            order=sorted(range(len(pairs)), key=lambda i: first_seen[pairs[i][1]]),
        )

    def map(
        self,
        fn: Callable[..., Any],
        tasks: list[tuple],
        failed: Callable[[str], Any],
        chunks_per_worker: int = 4,
        order: list[int] | None = None,
    ) -> list[Any]:
        """`[fn(*task) for task in tasks]` in the workers, in order; blocks until all are in.

        `fn` is a module-level function (sent by reference). An item that runs longer than
        `hard_timeout_s` gets `failed("timeout")` (its worker is killed and replaced); one
        that raises gets `failed("error: ...")`, and the worker carries on. Tasks go out in
        chunks of at most `chunk_size`, about `chunks_per_worker` chunks per worker (more
        chunks even out uneven items, fewer save messages), in `order` if given.
        """
        if not tasks:
            return []
        if self._closed:
            raise RuntimeError("VerifyPool is closed")
        job = _Job(results=[None] * len(tasks), remaining=len(tasks), failed=failed)
        order = list(range(len(tasks))) if order is None else order
        per_chunk = math.ceil(len(tasks) / (chunks_per_worker * self.num_workers))
        size = max(1, min(self.chunk_size, per_chunk))
        chunks = []
        for start in range(0, len(order), size):
            positions = order[start : start + size]
            chunks.append(_Chunk(job, fn, positions, [tasks[i] for i in positions]))
        with self._lock:
            self._queue.extend(chunks)
            self._ensure_started()
        self._wake_send.send_bytes(b"w")
        job.done.wait()
        return [r if r is not None else failed("error: lost") for r in job.results]

    def close(self) -> None:
        """Stop the dispatcher and the workers (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(OSError):
            self._wake_send.send_bytes(b"q")
        if self._thread is not None:
            self._thread.join(timeout=5)
        for worker in self._workers:
            self._stop_worker(worker)
        self._workers = []
        with self._lock:
            pending, self._queue = list(self._queue), deque()
        for chunk in pending:  # anyone still waiting gets errors, not a hang
            for pos in chunk.positions:
                self._deliver(chunk.job, pos, chunk.job.failed("error: pool closed"))

    def __enter__(self) -> VerifyPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- dispatcher ---------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._thread is None:
            self._workers = [self._spawn() for _ in range(self.num_workers)]
            self._thread = threading.Thread(target=self._loop, name="mmr-verify", daemon=True)
            self._thread.start()

    def _spawn(self) -> _Worker:
        parent, child = mp.Pipe(duplex=True)
        progress = self._ctx.RawArray("d", 3)
        proc = self._ctx.Process(
            target=_worker_main,
            args=(child, progress, self._work_fn is run_pair, self._initializer),
            name="mmr-verify-worker",
            daemon=True,
        )
        proc.start()
        child.close()
        return _Worker(proc, parent, progress)

    def _loop(self) -> None:
        while not self._closed:
            self._assign()
            busy = {w.conn: w for w in self._workers if w.chunk is not None}
            ready = wait([self._wake_recv, *busy], timeout=_TICK_S)
            for conn in ready:
                if conn is self._wake_recv:
                    while self._wake_recv.poll():
                        self._wake_recv.recv_bytes()
                    continue
                worker = busy[conn]
                try:
                    results = conn.recv()
                except (EOFError, OSError):
                    self._replace(worker, "error: math-verify worker died")
                    continue
                self._finish(worker, results)
            self._check_overruns()

    def _assign(self) -> None:
        with self._lock:
            for worker in self._workers:
                if worker.chunk is None and self._queue:
                    chunk = self._queue.popleft()
                    worker.chunk = chunk
                    # The hard-timeout clock starts when the worker starts an item (it sets
                    # progress[1]), not now: a new worker warms up before its first chunk.
                    # A worker that dies instead is seen as a closed pipe.
                    worker.progress[0] = 0
                    worker.progress[1] = 0.0
                    try:
                        worker.conn.send((chunk.fn, chunk.tasks))
                    except (OSError, ValueError):
                        self._replace(worker, "error: math-verify worker died", locked=True)

    def _finish(self, worker: _Worker, results: list[Any]) -> None:
        chunk, worker.chunk = worker.chunk, None
        for pos, result in zip(chunk.positions, results):
            if isinstance(result, _Raised):
                result = chunk.job.failed(f"error: {result.message}")
            self._deliver(chunk.job, pos, result)

    def _check_overruns(self) -> None:
        now = time.monotonic()
        for worker in list(self._workers):
            started = worker.progress[1]
            if worker.chunk is not None and started and now - started > self.hard_timeout_s:
                self.timeouts += 1
                self._replace(worker, "timeout")
            elif (
                worker.chunk is not None
                and not worker.progress[2]
                and now - worker.spawned > self.startup_timeout_s
            ):  # its warm-up or initializer hangs
                self.timeouts += 1
                self._replace(worker, "timeout")

    def _replace(self, worker: _Worker, status: str, locked: bool = False) -> None:
        """Kill a stuck or dead worker; its current item gets `status`, the rest go back."""
        chunk, worker.chunk = worker.chunk, None
        index = int(worker.progress[0])
        self._stop_worker(worker, kill=True)
        self._workers[self._workers.index(worker)] = self._spawn()
        if chunk is None:
            return
        index = min(max(index, 0), len(chunk.tasks) - 1)
        log.warning("worker item exceeded its limit (%s); worker replaced", status)
        self._deliver(chunk.job, chunk.positions[index], chunk.job.failed(status))
        # Results of the items before `index` died with the worker: they run again.
        rest = [i for i in range(len(chunk.tasks)) if i != index]
        if rest:
            retry = _Chunk(
                chunk.job,
                chunk.fn,
                [chunk.positions[i] for i in rest],
                [chunk.tasks[i] for i in rest],
            )
            if locked:
                self._queue.appendleft(retry)
            else:
                with self._lock:
                    self._queue.appendleft(retry)

    @staticmethod
    def _deliver(job: _Job, pos: int, result: Any) -> None:
        if job.results[pos] is None:
            job.results[pos] = result
            job.remaining -= 1
            if job.remaining == 0:
                job.done.set()

    @staticmethod
    def _stop_worker(worker: _Worker, kill: bool = False) -> None:
        if not kill:
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                kill = True
        if kill and worker.proc.is_alive():
            worker.proc.kill()
        worker.proc.join(timeout=2)
        if worker.proc.is_alive():
            worker.proc.kill()
            worker.proc.join(timeout=2)
        worker.conn.close()
