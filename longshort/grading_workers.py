"""The symbolic half of grading: math-verify in persistent, sandboxed worker processes.

An item that overruns its time limit gets its worker killed and replaced; a worker is capped in memory and dies
with the process that started it. `longshort.grading` decides what it can without sympy and sends the rest here
(`run_symbolic`); results are (correct, how, detail) per item. docs/grading.md.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

WORKER_START_TIMEOUT_S = 120.0  # importing sympy on a loaded 2-core machine can be slow
WORKER_MEMORY_BYTES = 4 * 1024**3  # address-space cap for a worker: a runaway big-int dies with MemoryError
PARENT_ENV = "LONGSHORT_GRADING_PARENT"  # the pid a worker must die with


# ---------------------------------------------------------------------------------------------- worker pool


class _Spawner:
    """Starts the workers from one daemon thread that lives as long as this process.

    A worker dies with its parent (`_die_with_parent`), and Linux sends that death signal when the *thread* that
    started the child ends, not the process. Callers may grade from short-lived threads, so no caller's thread
    may be the one that starts a worker.
    """

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="longshort-grading-spawner", daemon=True).start()

    def _serve(self) -> None:
        while True:
            args, kwargs, box, done = self.jobs.get()
            try:
                box.append(subprocess.Popen(args, **kwargs))
            except BaseException as e:  # handed to the caller, which raises it
                box.append(e)
            done.set()

    def popen(self, args: list[str], **kwargs: object) -> subprocess.Popen:
        box: list = []
        done = threading.Event()
        self.jobs.put((args, kwargs, box, done))
        done.wait()
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]


_SPAWNERS: dict[int, _Spawner] = {}  # by pid: a forked child needs its own thread


def _spawner() -> _Spawner:
    with _POOL_LOCK:
        if os.getpid() not in _SPAWNERS:
            _SPAWNERS[os.getpid()] = _Spawner()
        return _SPAWNERS[os.getpid()]


class _Worker:
    """One grading subprocess (``python -m longshort.grading_workers --worker``) speaking JSON lines over pipes."""

    def __init__(self) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("OMP_NUM_THREADS", "1")
        env[PARENT_ENV] = str(os.getpid())
        # Own session: a Ctrl-C in the terminal reaches the parent only, which decides what to stop.
        self.proc = _spawner().popen(
            [sys.executable, "-m", "longshort.grading_workers", "--worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True,
        )
        self.fd = self.proc.stdout.fileno()
        self.buf = b""
        self.ready = False
        self.item: int | None = None
        self.deadline = time.monotonic() + WORKER_START_TIMEOUT_S

    def send(self, item: int, pred: str, gold: str, timeout: float) -> None:
        self.item, self.deadline = item, time.monotonic() + timeout
        try:
            self.proc.stdin.write((json.dumps([pred, gold, timeout]) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:  # it died; the EOF on its stdout reports the item as an error
            pass

    def lines(self) -> list[bytes] | None:
        """Complete lines read so far (None at EOF: the worker died)."""
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            return None
        self.buf += chunk
        *done, self.buf = self.buf.split(b"\n")
        return done

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


class _Pool:
    """Persistent grading workers; an item that overruns its time limit gets its worker killed and replaced."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.workers: list[_Worker] = []
        self.lock = threading.Lock()

    def run(self, items: list[tuple[int, str, str]], workers: int, timeout: float) -> dict[int, tuple[bool, str, str]]:
        with self.lock:
            while len(self.workers) < min(workers, len(items)):
                self.workers.append(_Worker())
            try:
                return self._dispatch(deque(items), timeout)
            except BaseException:  # e.g. Ctrl-C: a busy worker would later answer for an item nobody waits for
                for w in list(self.workers):
                    if w.item is not None:
                        w.kill()
                        self.workers.remove(w)
                raise

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self.workers[self.workers.index(w)] = _Worker()

    def _dispatch(self, todo: deque[tuple[int, str, str]], timeout: float) -> dict[int, tuple[bool, str, str]]:
        out: dict[int, tuple[bool, str, str]] = {}
        need = len(todo)
        while len(out) < need:
            for w in self.workers:
                if w.ready and w.item is None and todo:
                    i, p, g = todo.popleft()
                    w.send(i, p, g, timeout)
            active = [w for w in self.workers if not w.ready or w.item is not None]
            if not active:  # cannot happen while items remain; a guard against a silent busy loop
                raise RuntimeError("grading pool has no active worker")
            wait = max(0.0, min(w.deadline for w in active) - time.monotonic())
            readable, _, _ = select.select([w.fd for w in active], [], [], wait)
            for w in list(active):
                if w.fd in readable:
                    lines = w.lines()
                    if lines is None:  # the worker died (e.g. out of memory): the item is wrong, not the run
                        if w.item is not None:
                            out[w.item] = (False, "error", "grading worker died")
                        elif not w.ready:
                            raise RuntimeError("grading worker failed to start (see stderr above)")
                        self._replace(w)
                        continue
                    for line in lines:
                        if line == b"ready":
                            w.ready, w.deadline = True, float("inf")
                        elif w.item is not None:
                            ok, detail = json.loads(line)
                            how = "symbolic" if ok else "timeout" if detail == "timeout" else "error" if detail else "mismatch"
                            out[w.item] = (bool(ok), how, detail)
                            w.item, w.deadline = None, float("inf")
                elif time.monotonic() >= w.deadline:
                    if w.item is None:
                        raise RuntimeError(f"grading worker did not start within {WORKER_START_TIMEOUT_S:.0f} s")
                    out[w.item] = (False, "timeout", f"over {timeout:g} s")
                    self._replace(w)
        return out

    def close(self) -> None:
        if os.getpid() != self.pid:  # inherited by a fork: the workers belong to the parent
            return
        for w in self.workers:
            w.kill()
        self.workers = []


_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> _Pool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid():
            _POOL = _Pool()
            atexit.register(_POOL.close)
        return _POOL


def _default_workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def run_symbolic(items: list[tuple[int, str, str]], workers: int | None, timeout: float) -> dict[int, tuple[bool, str, str]]:
    """(index, pred, gold) items -> {index: (correct, how, detail)}, on this process's worker pool."""
    return _pool().run(items, workers or _default_workers(), timeout)


# ---------------------------------------------------------------------------------------------- worker side


def _die_with_parent() -> None:
    """End this worker when the process that started it ends, even by SIGKILL (which runs no clean-up there) and
    even in the middle of C-level work: Linux's PR_SET_PDEATHSIG, else a thread that watches the parent pid."""
    parent = int(os.environ.get(PARENT_ENV, os.getppid()))
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        armed = libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        armed = False
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    if not armed:

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()


def _worker_main() -> None:
    """Serve ``[pred, gold, timeout]`` lines with ``[correct, error]`` lines until stdin closes."""
    import logging

    _die_with_parent()

    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):
        pass
    class TimeoutFlag(logging.Handler):
        """math-verify swallows its own timeouts and only logs them; this turns the log line into a verdict."""

        hit = False

        def emit(self, record: logging.LogRecord) -> None:
            self.hit = self.hit or str(record.msg).startswith("Timeout")

    flag = TimeoutFlag()
    mv_log = logging.getLogger("math_verify")
    mv_log.addHandler(flag)
    mv_log.setLevel(logging.WARNING)
    mv_log.propagate = False
    # The protocol owns the real stdout; anything a library prints goes to stderr instead of corrupting it.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    from math_verify import parse, verify

    out.write(b"ready\n")
    out.flush()
    for line in sys.stdin.buffer:
        pred, gold, timeout = json.loads(line)
        soft = max(1, int(timeout) // 2)  # math-verify's own alarm interrupts Python-level work early
        flag.hit = False
        try:
            g = parse("\\boxed{" + gold + "}", parsing_timeout=soft)
            p = parse("\\boxed{" + pred + "}", parsing_timeout=soft)
            ok = bool(g and p and verify(g, p, timeout_seconds=soft))
            result = [ok, "timeout" if flag.hit and not ok else ""]
        except (Exception, MemoryError, RecursionError) as e:  # sympy internals: the item is wrong, not the run
            result = [False, type(e).__name__]
        out.write((json.dumps(result) + "\n").encode())
        out.flush()


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _worker_main()
