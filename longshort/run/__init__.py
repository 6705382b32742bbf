"""What every stage's run shares, written once (docs/reliability.md, "Resume"):

- `open_run`: the run directory and its resolved recipe (`config.yaml`); `run.resume=never` clears the stage's outputs;
- `checkpoint`: atomic step checkpoints in one format, verified by checksum before any resume;
- `settings`: the settings that shape a stage's state, recorded with it and checked on resume;
- `logs`: the metrics log (`metrics.jsonl` + `tensorboard/`), every append-only log cut back to the resumed step;
- `schedule`: the learning-rate schedule and the data-order stream, pure functions of their inputs.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from longshort.config.loader import dump_yaml
from longshort.io import atomic_write_text


def open_run(recipe: Any, outputs: Iterable[str], folder: Path | None = None) -> Path:
    """Create the run directory (or `folder`), remove the stage's `outputs` (files or folders) when
    `run.resume=never`, and write the resolved recipe to `config.yaml`. Returns the directory."""
    d = Path(folder) if folder is not None else recipe.run_dir
    d.mkdir(parents=True, exist_ok=True)
    if recipe.run.resume == "never":
        for name in outputs:
            p = d / name
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
    atomic_write_text(d / "config.yaml", dump_yaml(recipe))
    return d
