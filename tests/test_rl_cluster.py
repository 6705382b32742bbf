"""`longshort rl` on a real two-node Ray cluster on localhost, started with the `ray` CLI (docs/cluster.md).

The head and the second node each offer 1 CPU; the learner and the rollout worker reserve 1 CPU each, so Ray
must put them on different nodes. The test checks that they really ran apart (the run's placement.json), that
the sync check passed every step, and that both adapters changed. The cluster has its own temp dir, ports and
auth token, and teardown stops only its processes (never a bare `ray stop`, which would also stop every other
Ray on the machine).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
RECIPE = str(REPO / "recipes" / "tiny" / "rl.yaml")
MARK = "LONGSHORT_TEST_RAY_CLUSTER"  # set in the environment of every process this test starts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, command line, environment) of every process we may read."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/status") as f:
                ppid = next(int(line.split()[1]) for line in f if line.startswith("PPid:"))
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = Path(f"/proc/{d}/environ").read_bytes().decode(errors="replace")
        except (OSError, StopIteration):  # gone meanwhile, or another user's
            continue
        out[int(d)] = (ppid, cmd, env)
    return out


class LocalCluster:
    """A head and N-1 more nodes on 127.0.0.1, each with its own ports, sharing a private temp dir and auth token."""

    def __init__(self) -> None:
        # short path: Ray puts unix sockets under it (108-byte limit)
        self.tmp = tempfile.mkdtemp(prefix="lsray-", dir="/tmp")
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env.update({
            MARK: self.tmp,
            "RAY_USAGE_STATS_ENABLED": "0",
            # explicit token auth with our own token: independent of ~/.ray/auth_token and of other clusters
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "OMP_NUM_THREADS": "1",
        })  # fmt: skip

    def _node_args(self) -> list[str]:
        return [
            "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", f"--temp-dir={self.tmp}",
            f"--node-manager-port={_free_port()}", f"--object-manager-port={_free_port()}",
            f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}",
            "--min-worker-port=0", "--max-worker-port=0",  # 0: the OS picks each worker's port
            "--object-store-memory=200000000", "--disable-usage-stats",
        ]  # fmt: skip

    def ray(self, *args: str, timeout: float = 180) -> str:
        r = subprocess.run([str(BIN / "ray"), *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args[:2])} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return r.stdout

    def start(self, nodes: int) -> None:
        self.ray("start", "--head", f"--port={self.port}", "--include-dashboard=false", f"--dashboard-port={_free_port()}",
                 f"--ray-client-server-port={_free_port()}", *self._node_args())  # fmt: skip
        for _ in range(nodes - 1):
            self.ray("start", f"--address={self.address}", *self._node_args())
        deadline = time.monotonic() + 120
        while (alive := self.ray("status", f"--address={self.address}", timeout=60).count(" node_")) < nodes:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {alive} of {nodes} Ray nodes registered")
            time.sleep(2)

    def pids(self) -> set[int]:
        """Our processes: those naming our temp dir or port, or carrying our marker, and all their descendants
        (raylets start their agents and workers with a fresh environment and a new process title)."""
        procs = _processes()
        ours = {p for p, (_, cmd, env) in procs.items() if self.tmp in cmd or f":{self.port} " in cmd + " " or f"{MARK}={self.tmp}" in env}
        ours.discard(os.getpid())
        grown = True
        while grown:
            more = {p for p, (ppid, _, _) in procs.items() if ppid in ours} - ours
            ours |= more
            grown = bool(more)
        return ours

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, every process of this cluster; rescan for late children; remove the temp dir."""
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0), (signal.SIGKILL, 5.0)):
            pids = self.pids()
            if not pids:
                break
            for p in pids:
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and _state(p) != "Z" for p in pids):
                time.sleep(0.5)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


@pytest.fixture
def two_nodes():
    cluster = LocalCluster()
    try:
        cluster.start(nodes=2)
        yield cluster
    finally:
        cluster.stop()
    assert not cluster.pids(), "the test cluster left processes behind"


def test_rl_on_two_localhost_nodes_spreads_actors_and_syncs(two_nodes, tmp_path, tiny_model, tiny_adapters):
    # HF engine: a vLLM start in a Ray actor costs minutes on this CPU; the layout and the sync are engine-agnostic
    args = [
        str(BIN / "longshort"), "rl", "--recipe", RECIPE, "--ray-address", two_nodes.address, "--no-progress",
        f"run.out_dir={tmp_path}", "run.name=cluster", f"model.base={tiny_model}", "engine.kind=hf",
        f"roles.long.adapter={tiny_adapters['long']}", f"roles.short.adapter={tiny_adapters['short']}",
        "roles.long.max_tokens=24", "roles.short.max_tokens=12", "synthetic.n=40",
        "rl.steps=2", "rl.checkpoint_every=2", "rl.entropy_coef=0.05",  # entropy: a non-zero update every step
    ]  # fmt: skip
    r = subprocess.run(args, env=two_nodes.env, capture_output=True, text=True, timeout=540)
    assert r.returncode == 0, r.stderr[-4000:]
    run = tmp_path / "cluster"
    assert json.loads(r.stdout.strip().splitlines()[-1])["run_dir"] == str(run)

    placement = json.loads((run / "placement.json").read_text())
    (rollout,), (learner,) = placement["rollout"], placement["learner"]
    assert rollout != learner, placement  # two nodes, each doing one job
    assert "Ray nodes used: 2" in (run / "summary.md").read_text()

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2]
    for row in rows:
        assert row["sync/ok"] is True and row["trained"] == ["long", "short"]
        for role in ("long", "short"):
            assert row[f"sync/{role}_max_diff"] < 1e-3 and row[f"{role}/logprob_gap_max"] < 1e-3
    final = run / "checkpoints" / "step-000002" / "adapters"
    for role in ("long", "short"):
        start = load_file(str(Path(tiny_adapters[role]) / "adapter_model.safetensors"))
        end = load_file(str(final / role / "adapter_model.safetensors"))
        assert max(float((start[k] - end[k]).abs().max()) for k in start) > 1e-4, role
