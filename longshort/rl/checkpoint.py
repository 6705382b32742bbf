"""RL's files in a run checkpoint (the format and its rule for partial writes: longshort/run/checkpoint.py).

Both adapters as PEFT folders under `adapters/<role>/`, the learner's optimizers, schedulers and torch RNG in
`trainer.pt` (loaded with weights_only=True), the driver's RNG in `rng-0.*`, and `state.json` (step, data cursor,
the settings the state depends on).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from longshort.run.checkpoint import Checkpoint, begin, commit, latest, save_rng  # noqa: F401  (latest: for callers)
from longshort.types import ROLES


def save(root: str | os.PathLike, step: int, learner_state: dict[str, Any], state: dict[str, Any], keep: int) -> Path:
    """Write checkpoint `step` atomically, then delete all but the newest `keep` complete ones."""
    partial = begin(Path(root), step)
    for role in ROLES:
        for name, data in learner_state["adapters"][role].items():
            f = partial / "adapters" / role / name
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(data)
    (partial / "trainer.pt").write_bytes(learner_state["trainer"])
    save_rng(partial)
    return commit(partial, step, state, keep)


def trainer_bytes(ck: Checkpoint) -> bytes:
    """The learner's optimizer, scheduler and RNG state of checkpoint `ck`."""
    return (ck.path / "trainer.pt").read_bytes()
