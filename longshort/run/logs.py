"""Append-only logs of a run: `metrics.jsonl` (+ `tensorboard/`), and any other per-step JSONL (RL's episodes).

A run that resumes from step k (k = 0: no usable checkpoint, a fresh start) first cuts every such log back to its
rows of steps <= k, so a step recomputed after a crash is logged once; a line torn by a kill mid-write is dropped
at the same time. TensorBoard events after step k are purged on open. Rows are written as strict JSON (`null`
for a NaN), one fsync'd line per step. `run.report_to` also sends every finite number to wandb and/or mlflow
(imported only when asked); neither can take back logged steps, so a resumed run logs to a new run of theirs.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

from longshort.errors import UserError
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


def check_report_to(report_to: Sequence[str]) -> None:
    """Every `run.report_to` backend is installed (checked without importing it): one line naming the key, not an
    ImportError after the model is loaded."""
    for name in report_to:
        if name != "tensorboard" and importlib.util.find_spec(name) is None:
            raise UserError(f"key 'run.report_to': {name} is not installed (pip install {name}), or drop it from the list")


class MetricsLog:
    """One row per step to `metrics.jsonl` and every finite number of it to each `run.report_to` backend
    (tag = key): TensorBoard under `tensorboard/`, wandb, mlflow."""

    def __init__(self, run_dir: Path, start_step: int, report_to: Sequence[str] = ("tensorboard",)) -> None:
        check_report_to(report_to)
        run_dir = Path(run_dir)
        self.path = run_dir / METRICS
        truncate(self.path, start_step)
        name = f"{run_dir.parent.name}/{run_dir.name}"  # the pipeline's stages are <run>/<stage>
        self.tb = self.wandb = self.mlflow = None
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / TENSORBOARD), purge_step=start_step + 1)
        if "wandb" in report_to:
            import wandb

            # offline unless WANDB_MODE says otherwise: no machine of a run needs an account or the network
            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "longshort"), name=name, dir=str(run_dir),
                                    mode=os.environ.get("WANDB_MODE", "offline"), config={"start_step": start_step},
                                    reinit="create_new")
        if "mlflow" in report_to:
            from mlflow import MlflowClient

            # a client, not mlflow's process-wide active run: two logs in one process stay apart
            client = MlflowClient(os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}")
            experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "longshort")
            found = client.get_experiment_by_name(experiment)
            exp_id = found.experiment_id if found else client.create_experiment(experiment)
            self.mlflow = (client, client.create_run(exp_id, run_name=name).info.run_id)

    def log(self, row: dict[str, Any]) -> None:
        append_jsonl(self.path, row)
        scalars = {k: float(v) for k, v in row.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, row["step"])
        if self.wandb is not None:
            self.wandb.log(scalars, step=row["step"])
        if self.mlflow is not None and scalars:
            from mlflow.entities import Metric

            client, run_id = self.mlflow
            now = int(time.time() * 1000)
            client.log_batch(run_id, metrics=[Metric(k, v, now, row["step"]) for k, v in scalars.items()])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.mlflow is not None:
            client, run_id = self.mlflow
            client.set_terminated(run_id)
