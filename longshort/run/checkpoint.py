"""Step checkpoints of every trainer, in one format: `checkpoints/step-NNNNNN/`.

A checkpoint is filled in `step-NNNNNN.partial/` (adapters as PEFT folders under `adapters/<role>/`, or the full
model under `model/`, optimizer and scheduler state, `rng-<rank>.json/.safetensors`), then `state.json` (step, data
cursor, the settings that shape the state) and, last, `manifest.json` (size and sha256 of every file); the folder is
then renamed to `step-NNNNNN/`. The one rule for partial writes: a folder is a checkpoint only if its manifest
verifies. `.partial/` folders and folders whose files do not match their manifest are named in a warning and never
read; the next `begin` removes leftover `.partial/` folders.

Nothing here unpickles: RNG states go to JSON/safetensors, optimizer state is read with
`torch.load(weights_only=True)` by the trainers.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from longshort.io import write_json

STEP_DIR = re.compile(r"^step-(\d{6,})$")
MANIFEST = "manifest.json"
STATE = "state.json"

Warn = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


@dataclass
class Checkpoint:
    path: Path
    step: int
    state: dict[str, Any]

    def adapter(self, role: str) -> str:
        """The PEFT folder of `role`'s adapter in this checkpoint."""
        return str(self.path / "adapters" / role)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_tree(root: Path, skip: tuple[str, ...] = (MANIFEST,)) -> dict[str, str]:
    """{relative path: sha256} of every file under `root` (sorted)."""
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() not in skip
    }


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def begin(root: Path, step: int) -> Path:
    """A fresh `step-NNNNNN.partial/` to write checkpoint `step` into; leftovers of interrupted writes are removed
    (one run writes into a checkpoint folder at a time)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob("step-*.partial"):
        shutil.rmtree(old, ignore_errors=True)
    partial = root / (step_name(step) + ".partial")
    partial.mkdir()
    return partial


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(partial: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write `state.json`, fsync every file, write the manifest last, rename to `step-NNNNNN/` and keep only the
    `keep` newest checkpoints. Returns the final folder."""
    write_json(partial / STATE, {**state, "step": step})
    files = {}
    for p in sorted(partial.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
            files[p.relative_to(partial).as_posix()] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    write_json(partial / MANIFEST, {"step": step, "files": files})
    final = partial.with_name(step_name(step))
    if final.exists():  # an older attempt at the same step (written before a crash, then recomputed)
        shutil.rmtree(final)
    os.rename(partial, final)
    _fsync_dir(final.parent)
    for old in complete_dirs(final.parent)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete_dirs(root: Path) -> list[Path]:
    """`step-NNNNNN/` folders, newest first (not verified)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def verify(path: Path) -> str | None:
    """None if `path` is a complete checkpoint whose files match its manifest, else what is wrong."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return "no manifest.json (the write was interrupted)"
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        for rel, info in files.items():
            f = path / rel
            if not f.is_file():
                return f"{rel} is missing"
            if f.stat().st_size != info["bytes"] or sha256_file(f) != info["sha256"]:
                return f"checksum mismatch in {rel}"
    except (ValueError, KeyError, TypeError):
        return "manifest.json is unreadable"
    extra = set(hash_tree(path)) - set(files)
    if extra:
        return f"files not in manifest.json: {', '.join(sorted(extra))}"
    if STATE not in files:
        return f"no {STATE} (not a checkpoint of this version of longshort)"
    return None


def latest(root: Path, warn: Warn = _stderr) -> Checkpoint | None:
    """The newest checkpoint that verifies; interrupted and corrupt ones are named in a warning and skipped."""
    root = Path(root)
    if not root.is_dir():
        return None
    for p in sorted(root.glob("step-*.partial")):
        warn(f"warning: ignoring incomplete checkpoint {p} (interrupted while writing)")
    for p in complete_dirs(root):
        reason = verify(p)
        if reason is None:
            state = json.loads((p / STATE).read_text(encoding="utf-8"))
            return Checkpoint(path=p, step=int(state["step"]), state=state)
        warn(f"warning: skipping corrupt checkpoint {p}: {reason}")
    return None


def resume(root: Path, settings: dict[str, Any], warn: Warn = _stderr) -> Checkpoint | None:
    """`latest`, after checking that it was written with `settings` (ConfigError naming the first changed key)."""
    from longshort.run.settings import check

    ck = latest(root, warn)
    if ck is not None:
        check(ck.state.get("settings"), settings, f"checkpoint {ck.path}")
    return ck


# ---- RNG state without pickle -------------------------------------------------------------------------------


def save_rng(folder: Path, rank: int = 0) -> None:
    """This process's python, numpy and torch (CPU and CUDA) generators as `rng-<rank>.json` + `.safetensors`."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }
    tensors = {"torch_cpu": torch.get_rng_state()}
    for i in range(meta["cuda_devices"]):
        tensors[f"torch_cuda_{i}"] = torch.cuda.get_rng_state(i)
    save_file(tensors, str(folder / f"rng-{rank}.safetensors"))
    write_json(folder / f"rng-{rank}.json", meta)


def restore_rng(ck: Checkpoint, rank: int = 0) -> None:
    """Set this process's generators to what `save_rng` stored for `rank`."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from longshort.errors import UserError

    f = ck.path / f"rng-{rank}.json"
    if not f.is_file():
        raise UserError(f"checkpoint {ck.path} has no RNG state for process {rank} (saved with fewer processes)")
    meta = json.loads(f.read_text(encoding="utf-8"))
    tensors = load_file(str(ck.path / f"rng-{rank}.safetensors"))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        for i in range(min(meta.get("cuda_devices", 0), torch.cuda.device_count())):
            torch.cuda.set_rng_state(tensors[f"torch_cuda_{i}"], i)
