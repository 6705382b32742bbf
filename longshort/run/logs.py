"""Append-only logs of a run: `metrics.jsonl` (+ `tensorboard/`), and any other per-step JSONL (RL's episodes).

A run that resumes from step k (k = 0: no usable checkpoint, a fresh start) first cuts every such log back to its
rows of steps <= k, so a step recomputed after a crash is logged once; a line torn by a kill mid-write is dropped
at the same time. TensorBoard events after step k are purged on open. Rows are written as strict JSON (`null`
for a NaN), one fsync'd line per step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from longshort.io import append_jsonl, atomic_write_text, to_json

METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"


def rows(path: Path) -> list[dict[str, Any]]:
    """The complete rows of an append-only log (lines that are not a JSON object, e.g. torn by a kill, dropped)."""
    out = []
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


def truncate(path: Path, step: int, step_of: Callable[[dict[str, Any]], Any] = lambda r: r.get("step")) -> None:
    """Keep the rows of steps <= `step` (none for step 0) and drop torn lines; rewritten atomically."""
    if not path.exists():
        return
    keep = [r for r in rows(path) if isinstance(s := step_of(r), int) and s <= step]
    if keep:
        atomic_write_text(path, "".join(to_json(r) + "\n" for r in keep))
    else:
        path.unlink()


class MetricsLog:
    """One row per step to `metrics.jsonl` and every finite number of it to TensorBoard (tag = key)."""

    def __init__(self, run_dir: Path, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = Path(run_dir) / METRICS
        truncate(self.path, start_step)
        self.tb = SummaryWriter(str(Path(run_dir) / TENSORBOARD), purge_step=start_step + 1)

    def log(self, row: dict[str, Any]) -> None:
        append_jsonl(self.path, row)
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        self.tb.flush()
        self.tb.close()
