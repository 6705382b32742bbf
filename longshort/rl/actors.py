"""Ray actors: rollout workers (an engine serving both role adapters) and the data-parallel learner group.

Adapters travel between actors as file bytes through Ray's object store (a few MB of LoRA tensors, never the
base), so actors on different nodes need no shared folder for them; each node needs the base model at the
same path.
"""

from __future__ import annotations

import copy
import functools
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import ray

from longshort.config.recipe import Recipe
from longshort.rl.learner import LearnerStats, PolicyLearner, write_adapter
from longshort.types import Episode, TrainSequence

AdapterFiles = dict[str, bytes]


def read_adapter(path: str | os.PathLike) -> AdapterFiles:
    """A PEFT adapter folder as {file name: bytes}."""
    return {f.name: f.read_bytes() for f in Path(path).iterdir() if f.is_file()}


class RolloutWorker:
    """Hosts one engine with both role adapters; runs the recipe's protocol exactly as evaluation does."""

    def __init__(self, base_path: str, recipe: Recipe, adapters: dict[str, AdapterFiles], seed: int) -> None:
        from longshort.engines import make_engine

        # A private copy whose roles.<role>.adapter names the adapter being served (the protocol routes by the
        # engine's `adapters`; the recipe must not name one the engine lacks), and the folder to delete on a swap.
        self.recipe = copy.deepcopy(recipe)
        self.dir = Path(tempfile.mkdtemp(prefix="longshort-rollout-"))
        self.version = 0
        paths = {role: str(self._write(role, files)) for role, files in adapters.items()}
        for role, path in paths.items():
            getattr(self.recipe.roles, role).adapter = path
        self.engine = make_engine(recipe.engine.kind, base_path, recipe.engine, paths, seed)

    def _write(self, role: str, files: AdapterFiles) -> Path:
        self.version += 1
        return write_adapter(files, self.dir / f"{role}-v{self.version}")

    def pid(self) -> int:
        return os.getpid()

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def rollout(self, problems: list[dict[str, Any]], group_size: int, step: int, seed: int) -> list[Episode]:
        """`group_size` graded episodes per problem with the current adapters: the same protocol code as eval. A
        problem row's `protocol` (set by `operator.route`) picks its protocol, else the recipe's; each turn carries
        the temperature it was sampled at (`calls.execute`), which the learner's logprobs use."""
        from longshort.protocols import run_protocol

        rows = [{**p, "sample": g} for p in problems for g in range(group_size)]
        episodes: list[Episode] = []
        for name in dict.fromkeys(r.get("protocol", self.recipe.protocol.name) for r in rows):
            mine = [r for r in rows if r.get("protocol", self.recipe.protocol.name) == name]
            episodes += run_protocol(name, self.engine, mine, self.recipe, seed=seed)
        for ep in episodes:
            ep.meta.update(group=f"{step}:{ep.problem_id}", step=step)
        return episodes

    def set_adapters(self, adapters: dict[str, AdapterFiles]) -> None:
        """Hot-swap: write each role's new LoRA files to a fresh folder and point the engine at it (new LoRA id)."""
        for role, files in adapters.items():
            old = Path(getattr(self.recipe.roles, role).adapter)
            path = self._write(role, files)
            self.engine.set_adapter(role, str(path))
            getattr(self.recipe.roles, role).adapter = str(path)
            if old.is_dir():
                for f in old.iterdir():
                    f.unlink()
                old.rmdir()

    def score(self, sequences: list[list[int]], roles: list[str | None], start: list[int]) -> list[list[float]]:
        return self.engine.score(sequences, roles, start)

    def close(self) -> None:
        self.engine.close()


class LearnerWorker:
    """One data-parallel rank: a full `PolicyLearner`; gradients are summed over ranks with torch.distributed."""

    def __init__(self, rank: int, world: int, base_path: str, init: dict[str, AdapterFiles | None],
                 ref: dict[str, AdapterFiles | None], recipe: Recipe, device: str | None = None) -> None:  # fmt: skip
        self.rank, self.world = rank, world
        # None: the device Ray assigned — an actor reserving GPUs sees exactly those (CUDA_VISIBLE_DEVICES) as cuda:0..
        device = device or ("cuda" if ray.get_gpu_ids() else "cpu")
        self.dir = Path(tempfile.mkdtemp(prefix=f"longshort-learner{rank}-"))
        init_p = {r: str(write_adapter(f, self.dir / "init" / r)) if f else None for r, f in init.items()}
        ref_p = {r: str(write_adapter(f, self.dir / "ref" / r)) if f else None for r, f in ref.items()}
        self.learner = PolicyLearner(
            base_path, init_p, ref_p, recipe.rl,
            max_tokens={"long": recipe.roles.long.max_tokens, "short": recipe.roles.short.max_tokens},
            temperatures={"long": recipe.roles.long.temperature, "short": recipe.roles.short.temperature},
            seed=recipe.run.seed, device=device, dtype=recipe.model.dtype,
        )  # fmt: skip

    def pid(self) -> int:
        return os.getpid()

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def rendezvous(self) -> tuple[str, int]:
        """Rank 0's address and a free port for torch.distributed's TCP store."""
        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind(("", 0))
            return ip, s.getsockname()[1]

    def init_process_group(self, addr: str, port: int, backend: str) -> None:
        import torch.distributed as dist

        if self.world > 1:
            dist.init_process_group(backend, init_method=f"tcp://{addr}:{port}", rank=self.rank, world_size=self.world)

    def train(self, batches: dict[str, list[TrainSequence]], normalisers: dict[str, list[float]],
              nll_normalisers: dict[str, list[float]] | None = None,
              behaviour: dict[str, AdapterFiles] | None = None) -> dict[str, LearnerStats]:
        nll, behaviour = nll_normalisers or {}, behaviour or {}
        return {role: self.learner.train(role, batches[role], normalisers[role], nll.get(role), behaviour.get(role))
                for role in batches}

    def logprobs(self, adapter: str | None, sequences: list[list[int]]) -> list[list[float]]:
        return self.learner.logprobs(adapter, sequences)

    def export(self, roles: list[str]) -> dict[str, AdapterFiles]:
        return {role: self.learner.export_adapter(role) for role in roles}

    def state(self) -> dict[str, Any]:
        return self.learner.state()

    def load_trainer_state(self, data: bytes) -> None:
        self.learner.load_trainer_state(data)


class LearnerGroup:
    """N `LearnerWorker` actors over torch.distributed (gloo on CPU, nccl when each has a GPU)."""

    def __init__(self, base_path: str, init: dict[str, AdapterFiles | None], ref: dict[str, AdapterFiles | None], recipe: Recipe) -> None:
        cfg = recipe.rl
        gpu = cfg.learner_gpus > 0
        cls = ray.remote(num_cpus=cfg.learner_cpus, num_gpus=cfg.learner_gpus)(LearnerWorker)
        self.workers = [
            cls.remote(rank, cfg.learner_workers, base_path, init, ref, recipe)
            for rank in range(cfg.learner_workers)
        ]
        addr, port = ray.get(self.workers[0].rendezvous.remote())
        backend = "nccl" if gpu else "gloo"
        ray.get([w.init_process_group.remote(addr, port, backend) for w in self.workers])
        self.pids: list[int] = ray.get([w.pid.remote() for w in self.workers])  # named when one dies

    def train(self, batches: dict[str, list[TrainSequence]], normalisers: dict[str, list[float]],
              nll_normalisers: dict[str, list[float]] | None = None,
              behaviour: dict[str, AdapterFiles] | None = None) -> dict[str, LearnerStats]:
        """Shard every minibatch over the workers (sequence i of a minibatch -> worker i mod N); merge their stats.
        `behaviour`: per role, the adapter that sampled the batch when it is not the learner's current one."""
        n = len(self.workers)
        shards: list[dict[str, list[TrainSequence]]] = [{role: [] for role in batches} for _ in range(n)]
        for role, samples in batches.items():
            counters: dict[int, int] = {}
            for s in samples:
                k = counters.get(s.minibatch, 0)
                counters[s.minibatch] = k + 1
                shards[k % n][role].append(s)
        ref = ray.put(behaviour) if behaviour else None
        results = ray.get([w.train.remote(shard, normalisers, nll_normalisers, ref) for w, shard in zip(self.workers, shards)])
        return {role: functools.reduce(LearnerStats.merge, [r[role] for r in results]) for role in batches}

    def logprobs(self, adapter: str | None, sequences: list[list[int]]) -> list[list[float]]:
        return ray.get(self.workers[0].logprobs.remote(adapter, sequences))

    def export(self, roles: list[str]) -> dict[str, AdapterFiles]:
        return ray.get(self.workers[0].export.remote(roles))

    def state(self) -> dict[str, Any]:
        return ray.get(self.workers[0].state.remote())

    def load_trainer_state(self, data: bytes) -> None:
        ray.get([w.load_trainer_state.remote(data) for w in self.workers])

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w)
