"""longshort: Long⊗Short co-reasoning and improvement operators.

The Python API (docs/api.md) is the handful of entry points below, importable from `longshort` itself. They are
resolved on first use, so `import longshort` stays cheap (no torch, no engine) and the package root imports
nothing of the layers it re-exports (docs/architecture.md).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> the module that defines it (one place each; the CLI's commands call the same functions)
API = {
    "load_recipe": "longshort.config.recipe",
    "resolve_served": "longshort.models",
    "make_engine": "longshort.engines",
    "start_engine": "longshort.engines",
    "run_protocol": "longshort.protocols",
    "evaluate": "longshort.eval",
    "load_benchmarks": "longshort.eval",
    "Trainer": "longshort.sft.trainer",
    "run_rl": "longshort.rl.loop",
    "Exporter": "longshort.export",
    "read_run": "longshort.export",
    "Episode": "longshort.types",
}
__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    if name not in API:
        raise AttributeError(f"module 'longshort' has no attribute {name!r}")
    value = getattr(importlib.import_module(API[name]), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
