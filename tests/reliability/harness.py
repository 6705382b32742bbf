"""Kill-and-resume trials: run a real `longshort` command as a subprocess, kill it (or one of its Ray actors) at a
seeded random point after it has made progress, rerun it with run.resume=auto, and read back what each run wrote.

Each command runs in its own session, so SIGKILL of its process group takes the driver and everything it started
(a local Ray cluster included) down at once, like a scheduler or the OOM killer would. `LONGSHORT_SOAK=1` runs
more trials at more kill points (`LONGSHORT_SOAK_TRIALS`, default 5); CI runs one seeded trial per command.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
CLI = str(REPO / ".venv" / "bin" / "longshort")
SECRET = "hf_secret-xyz-do-not-log"  # an HF token put in every trial's environment; it must never reach a file

SOAK = os.environ.get("LONGSHORT_SOAK") == "1"


def trial_seeds() -> list[int]:
    """Seeds of the kill points: one in CI, `LONGSHORT_SOAK_TRIALS` (default 5) in soak mode."""
    return list(range(int(os.environ.get("LONGSHORT_SOAK_TRIALS", "5")))) if SOAK else [0]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "HF_TOKEN": SECRET}  # fmt: skip


def jsonl(path: Path) -> list[dict]:
    """Complete rows of a JSONL log (a line torn by a kill is not a row)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def count_rows(path: Path) -> Callable[[], int]:
    return lambda: len(jsonl(path))


@dataclass
class Run:
    """One `longshort` subprocess; stderr goes to a file so a killed run's output can still be read."""

    proc: subprocess.Popen
    stderr_path: Path

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def wait_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll `done` until it holds; fail if the command exits first or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while not done():
            if self.proc.poll() is not None:
                raise AssertionError(f"the command exited (rc {self.proc.returncode}) before {what}:\n{self.stderr[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"timed out waiting for {what}:\n{self.stderr[-3000:]}")
            time.sleep(0.05)

    def actor_pid(self, cls: str) -> int | None:
        """PID of this run's Ray actor process of class `cls` (Ray titles it `ray::<cls>...`), if it is up."""
        for p in self.descendants():
            try:
                if p.cmdline() and p.cmdline()[0].startswith(f"ray::{cls}"):
                    return p.pid
            except psutil.Error:
                continue
        return None

    def kill(self) -> None:
        """SIGKILL the whole process group, then any descendant that left it (none are expected)."""
        stragglers = self.descendants()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        for p in stragglers:
            try:
                p.kill()
            except psutil.Error:
                pass

    def finish(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the command did not finish in {timeout:.0f} s:\n{self.stderr[-3000:]}") from None


def start(args: list[str], log: Path) -> Run:
    """Start `longshort ARGS` in a new session (its own process group)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as err:
        proc = subprocess.Popen([CLI, *args], cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)  # fmt: skip
    return Run(proc, log)


def run(args: list[str], log: Path, timeout: float = 600) -> tuple[int, str]:
    """Run `longshort ARGS` to the end: (exit code, stderr)."""
    r = start(args, log)
    return r.finish(timeout), r.stderr


def kill_after_progress(args: list[str], log: Path, progress: Callable[[], int], at: int, rng: random.Random,
                        jitter_s: float, timeout: float = 600) -> int:  # fmt: skip
    """Start the command, wait until `progress() >= at`, sleep a seeded random 0..`jitter_s` s or until the next
    unit of work is done (so the kill lands anywhere in that unit: compute, log append, checkpoint write), then
    SIGKILL its process group.
    Returns `progress()` after the kill; fails if the command finished before it could be killed."""
    r = start(args, log)
    r.wait_until(lambda: progress() >= at, timeout, f"progress {at}")
    # Sleep the seeded jitter, but no longer than the next unit of work lasts on this run: on a loaded machine the
    # units take other times than planned, and the kill must still land before the command ends.
    deadline = time.monotonic() + rng.uniform(0.0, jitter_s)
    while time.monotonic() < deadline and progress() <= at and r.proc.poll() is None:
        time.sleep(0.02)
    finished = r.proc.poll() is not None
    r.kill()
    assert not finished and r.proc.returncode == -signal.SIGKILL, f"the run ended before the kill:\n{r.stderr[-3000:]}"
    return progress()


def one_error_line(stderr: str, prefix: str) -> str:
    """The command's own error: the last stderr line, which must start with `prefix`; no traceback anywhere."""
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(prefix), stderr[-3000:]
    return last


def same_rows(a: list[dict], b: list[dict], rel: float = 1e-5, abs_: float = 1e-6, skip: tuple[str, ...] = ("time/",)) -> str | None:
    """None if the two logs have the same rows (floats within tolerance, keys starting with `skip` ignored),
    else where they first differ."""
    if len(a) != len(b):
        return f"{len(a)} rows vs {len(b)}"
    for i, (x, y) in enumerate(zip(a, b)):
        x = {k: v for k, v in x.items() if not k.startswith(skip)}
        y = {k: v for k, v in y.items() if not k.startswith(skip)}
        if x.keys() != y.keys():
            return f"row {i}: keys {sorted(x.keys() ^ y.keys())}"
        for k in x:
            u, v = x[k], y[k]
            if isinstance(u, float) and isinstance(v, float):
                if not (math.isnan(u) and math.isnan(v)) and not math.isclose(u, v, rel_tol=rel, abs_tol=abs_):
                    return f"row {i}: {k} {u!r} vs {v!r}"
            elif u != v:
                return f"row {i}: {k} {u!r} vs {v!r}"
    return None
