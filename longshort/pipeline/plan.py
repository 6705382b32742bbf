"""The pipeline's plan: every stage's own recipe, its wiring to earlier stages, and its fingerprint.

Stage recipes are built from the pipeline recipe's shared sections, then `pipeline.<stage>`, then the wiring
(paths to what earlier stages wrote), so following a key is: pipeline.yaml -> `<run>/<stage>/recipe.yaml`
-> the stage.

Fingerprints are derived from what a stage runs with, not from a table it is trusted to match. A stage's recipe
holds every section (plan-level checks read them all), but the copy the stage runs with has the sections
outside `READS[stage]` *sealed* (`sealed`): reading any field of one raises
`UnreadSection` (dumping the recipe to `config.yaml` still works; copies and pickles to Ray workers stay sealed).
The fingerprint hashes every key of the sections the stage can read (all of `run` included), its stage settings
and its upstream fingerprints. So a key the fingerprint does not cover is a key the stage cannot read: a stage
that starts reading a new section fails loudly on its first run (the quick pipeline test runs every stage) instead
of reusing stale outputs, which is how the hand-kept table once let `protocol.max_turns` reuse old cold-start
data. The table may only be too wide (a needless rerun), never too narrow. Granularity is the section: changing
`protocol.pdr_k` also reruns `coldstart`, which reads `protocol.max_turns`. We did not record keys as they are
read: the entry points dump the whole recipe to `config.yaml` and RL reads it on Ray workers in other processes,
so a recorder would see everything or miss reads.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longshort.config.loader import build, deep_merge, to_dict
from longshort.config.recipe import Recipe
from longshort.pipeline import shipped

# (stage, upstream stages). Order is execution order.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ()),
    ("data", ()),
    ("reasoner", ("base", "data")),
    ("analyze", ("reasoner", "data")),
    ("coldstart", ("analyze",)),
    ("sft_long", ("reasoner", "coldstart")),
    ("sft_short", ("reasoner", "coldstart")),
    ("rl", ("reasoner", "sft_long", "sft_short", "data")),
    ("rl_length", ("reasoner", "data")),
    ("eval", ("reasoner", "sft_long", "sft_short", "rl", "rl_length", "data")),
    ("benchmarks", ("reasoner", "sft_long", "sft_short", "rl")),
    ("export", ("sft_long", "sft_short", "rl")),
)


# The recipe sections each stage may read (every stage reads `run`); the others are sealed (module docstring).
READS: dict[str, tuple[str, ...]] = {
    "base": ("run", "model"),
    "data": ("run", "synthetic", "data"),
    "reasoner": ("run", "model", "roles", "data", "sft"),
    "analyze": ("run", "model", "roles", "engine", "data", "synthetic", "analysis"),
    "coldstart": ("run", "model", "engine", "protocol", "data", "analysis", "coldstart"),
    "sft_long": ("run", "model", "roles", "data", "sft"),
    "sft_short": ("run", "model", "roles", "data", "sft"),
    "rl": ("run", "model", "roles", "engine", "protocol", "data", "synthetic", "rl"),
    "rl_length": ("run", "model", "roles", "engine", "protocol", "data", "synthetic", "rl"),
    "eval": ("run", "model", "roles", "engine", "protocol", "data", "evaluation"),
    "benchmarks": ("run", "model", "roles", "engine", "protocol", "data", "evaluation"),
    "export": ("run", "model", "roles"),
}


class UnreadSection(AttributeError):
    """A stage read a recipe section its fingerprint does not cover: add the section to `READS[stage]`."""


_SEALED: dict[type, type] = {}


def _sealed_class(cls: type) -> type:
    """`cls` whose fields raise on reading, except from `to_dict` (the recipe dump every stage writes)."""
    if cls not in _SEALED:
        def __getattribute__(self: Any, name: str) -> Any:
            caller = sys._getframe(1)  # to_dict, or its dict comprehension's own frame before Python 3.12
            if name.startswith("_") or to_dict.__code__ in (caller.f_code, caller.f_back and caller.f_back.f_code):
                return object.__getattribute__(self, name)
            stage, section = object.__getattribute__(self, "_sealed_by")
            raise UnreadSection(f"pipeline stage {stage!r} read '{section}.{name}', but its fingerprint does not cover "
                                f"section '{section}': add it to READS[{stage!r}] in longshort/pipeline/plan.py")

        def __reduce__(self: Any) -> Any:  # copies and pickles (Ray) rebuild a sealed section
            return _sealed_copy, (cls, dict(object.__getattribute__(self, "__dict__")))

        _SEALED[cls] = type(f"Sealed{cls.__name__}", (cls,), {"__getattribute__": __getattribute__, "__reduce__": __reduce__})
    return _SEALED[cls]


def _sealed_copy(cls: type, state: dict[str, Any]) -> Any:
    obj = object.__new__(_sealed_class(cls))
    obj.__dict__.update(state)
    return obj


def sealed(recipe: Recipe, stage: str) -> Recipe:
    """A copy of `recipe` whose sections outside `READS[stage]` are sealed: what stage `stage` runs with."""
    out = copy.deepcopy(recipe)
    for f in dataclasses.fields(out):
        if f.name not in READS[stage]:
            section = getattr(out, f.name)
            locked = object.__new__(_sealed_class(type(section)))
            locked.__dict__.update(section.__dict__, _sealed_by=(stage, f.name))
            setattr(out, f.name, locked)
    return out


def readable(recipe: Recipe, stage: str) -> dict[str, Any]:
    """Every key of the sections stage `stage` may read: what its fingerprint hashes."""
    body = to_dict(recipe)
    return {k: body[k] for k in READS[stage]}


@dataclass
class Stage:
    name: str
    after: tuple[str, ...]
    recipe: Recipe
    fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # stage settings outside the Recipe (fingerprinted too)

    @property
    def dir(self) -> Path:
        return self.recipe.run_dir


@dataclass
class Plan:
    pipeline: Recipe
    run_dir: Path
    stages: dict[str, Stage]

    @property
    def base(self) -> Path:
        """The base model directory (built by stage `base` for `model.base: tiny`)."""
        spec = self.pipeline.model.base
        return self.run_dir / "base" / "model" if spec == "tiny" else Path(spec)

    @property
    def reasoner(self) -> Path:
        return self.run_dir / "reasoner" / "final" if self.pipeline.pipeline.train_reasoner else self.base

    @property
    def train_file(self) -> Path:
        return self.run_dir / "data" / "train.jsonl"

    @property
    def test_file(self) -> Path:
        return self.run_dir / "data" / "test.jsonl"

    def sft_adapter(self, role: str) -> Path:
        return self.run_dir / f"sft_{role}" / "final"

    def rl_ran(self) -> bool:
        return self.stages["rl"].recipe.rl.steps > 0

    def length_rl_ran(self) -> bool:
        return "length_penalty_rl" in self.pipeline.pipeline.systems and self.stages["rl_length"].recipe.rl.steps > 0


def _wiring(plan_paths: dict[str, str], name: str, shared: dict[str, Any]) -> dict[str, Any]:
    """Keys the pipeline sets itself for stage `name`: where its inputs are. They win over the stage overlay."""
    p = plan_paths
    solver = shared["protocol"]["system_prompt"]
    on_reasoner = {"model": {"base": p["reasoner"]}}
    if name == "base":
        return {}
    if name == "data":
        return {}
    if name == "reasoner":
        # The reasoner answers as the long-CoT solver: trained, analysed and evaluated with one system prompt.
        return {"model": {"base": p["base"]}, "sft": {"role": "long", "mode": "full", "data": p["train"]},
                "roles": {"long": {"system_prompt": solver, "adapter": None}}}
    if name == "analyze":
        return deep_merge(on_reasoner, {"analysis": {"model": p["reasoner"], "adapter": None, "traces": p["train"], "system_prompt": solver}})
    if name == "coldstart":
        return deep_merge(on_reasoner, {"analysis": {"model": p["reasoner"]}, "coldstart": {"thoughts": p["thoughts"]}})
    if name in ("sft_long", "sft_short"):
        role = name.split("_")[1]
        return deep_merge(on_reasoner, {"sft": {"role": role, "mode": "lora", "data": p[f"coldstart_{role}"]}})
    if name == "rl":
        return deep_merge(on_reasoner, {"data": {"train": p["train"]},
                                        "roles": {"long": {"adapter": p["sft_long"]}, "short": {"adapter": p["sft_short"]}}})
    if name == "rl_length":
        # The single-model baseline: one fresh LoRA adapter on the reasoner, trained through long CoT itself.
        return deep_merge(on_reasoner, {"data": {"train": p["train"]}, "protocol": {"name": "long_cot", "long_cot_role": "long"},
                                        "roles": {"long": {"adapter": None}, "short": {"adapter": None}}})
    if name in ("eval", "benchmarks"):
        # long_cot, SR and PDR are the reasoner alone: no role adapter, whatever the shared protocol section says.
        return deep_merge(on_reasoner, {"protocol": {"long_cot_role": "base"}})
    if name == "export":
        return on_reasoner
    raise KeyError(name)


def make_plan(pipeline: Recipe, where: str) -> Plan:
    """Build and validate every stage's recipe (errors name `pipeline.<stage>` and the key) and fingerprint them."""
    cfg = pipeline.pipeline
    run_dir = pipeline.run_dir
    shared = to_dict(pipeline)
    shared.pop("pipeline")
    base = str(run_dir / "base" / "model") if pipeline.model.base == "tiny" else pipeline.model.base
    reasoner = str(run_dir / "reasoner" / "final") if cfg.train_reasoner else base
    paths = {
        "base": base, "reasoner": reasoner, "train": str(run_dir / "data" / "train.jsonl"),
        "thoughts": str(run_dir / "analyze" / "thoughts.jsonl"),
        "coldstart_long": str(run_dir / "coldstart" / "long.jsonl"), "coldstart_short": str(run_dir / "coldstart" / "short.jsonl"),
        "sft_long": str(run_dir / "sft_long" / "final"), "sft_short": str(run_dir / "sft_short" / "final"),
    }
    overlays = {"reasoner": cfg.reasoner, "analyze": cfg.analyze, "coldstart": cfg.coldstart, "sft_long": cfg.sft_long,
                "sft_short": cfg.sft_short, "rl": cfg.rl, "eval": cfg.eval, "benchmarks": cfg.benchmark_eval,
                # the baseline runs Long⊗Short's RL settings (steps, problems, samples) plus its own reward overlay
                "rl_length": deep_merge(cfg.rl, cfg.rl_length)}
    extras: dict[str, dict[str, Any]] = {
        "data": {"task": cfg.task},
        "coldstart": {"task": cfg.task},
        "reasoner": {"train": cfg.train_reasoner, "source": cfg.reasoner_source,
                     "shipped": shipped.manifest_digest() if cfg.reasoner_source == "shipped" else None},
        "eval": {"systems": list(cfg.systems)},
        "benchmarks": {"files": dict(cfg.benchmarks)},
        "export": {"vllm_check": cfg.export_vllm_check},
    }
    stages: dict[str, Stage] = {}
    for name, after in STAGES:
        data = deep_merge(shared, overlays.get(name, {}))
        data = deep_merge(data, _wiring(paths, name, shared))
        data = deep_merge(data, {"run": {"out_dir": str(run_dir), "name": name}})
        recipe = build(Recipe, data, f"{where}: pipeline.{name}" if name in overlays else where)
        stage = Stage(name, after, recipe, extra=extras.get(name, {}))
        blob = json.dumps({"reads": readable(recipe, name), "extra": stage.extra, "after": [stages[a].fingerprint for a in after]},
                          sort_keys=True, default=str)
        stage.fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]
        stages[name] = stage
    return Plan(pipeline, run_dir, stages)
