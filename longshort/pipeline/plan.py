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
data. The table may only be too wide (a needless rerun), never too narrow. Granularity is the section, or a single key
where a stage reads one key of a section others read whole (`roles.long.system_prompt`): changing `protocol.pdr_k`
also reruns `coldstart`, which reads `protocol.max_turns`, but changing `roles.long.max_tokens` reruns no analysis. We did not record keys as they are
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
from longshort.errors import ConfigError
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
    ("rl_operator", ("reasoner", "data")),
    ("eval", ("reasoner", "sft_long", "sft_short", "rl", "rl_length", "rl_operator", "data")),
    ("benchmarks", ("reasoner", "sft_long", "sft_short", "rl")),
    ("export", ("sft_long", "sft_short", "rl")),
)


# The one-adapter RL stages and the system each trains: a fresh LoRA on the reasoner that answers that system's
# protocol alone (the length-penalty baseline through long CoT, operator RL through PDR).
SOLO_SYSTEM = {"rl_length": "length_penalty_rl", "rl_operator": "pdr_rl"}
RL_STAGES = ("rl", *SOLO_SYSTEM)


# What each stage may read (every stage reads `run`): a section, or one key of a section as a dotted path
# (`roles.long.system_prompt`: the reasoner, analysis and role SFT read only the prompt of a role, so a role's
# sampling caps do not rerun them). Everything else is sealed (module docstring).
READS: dict[str, tuple[str, ...]] = {
    "base": ("run", "model"),
    "data": ("run", "synthetic", "data"),
    "reasoner": ("run", "model", "roles.long.system_prompt", "roles.long.stop", "data", "sft"),
    "analyze": ("run", "model", "roles.long.system_prompt", "engine", "data", "synthetic", "analysis"),
    "coldstart": ("run", "model", "engine", "protocol", "data", "analysis", "coldstart"),
    "sft_long": ("run", "model", "roles.long.system_prompt", "roles.long.stop", "data", "sft"),
    "sft_short": ("run", "model", "roles.short.system_prompt", "roles.short.stop", "data", "sft"),
    "rl": ("run", "model", "roles", "engine", "protocol", "data", "synthetic", "rl"),
    "rl_length": ("run", "model", "roles", "engine", "protocol", "data", "synthetic", "rl"),
    "rl_operator": ("run", "model", "roles", "engine", "protocol", "data", "synthetic", "rl"),
    "eval": ("run", "model", "roles", "engine", "protocol", "data", "evaluation"),
    "benchmarks": ("run", "model", "roles", "engine", "protocol", "data", "evaluation"),
    "export": ("run", "model", "roles"),
}


def _vllm_lora_mode(spec: str) -> str:
    """What `engine.lora_mode` resolves to on the vLLM engine here (auto: merged on CPU, adapter on a GPU)."""
    if spec != "auto":
        return spec
    import torch

    from longshort.engines.base import resolve_lora_mode

    return resolve_lora_mode(spec, "cuda" if torch.cuda.is_available() else "cpu")


class UnreadSection(AttributeError):
    """A stage read a recipe key its fingerprint does not cover: add it to `READS[stage]`."""


_SEALED: dict[type, type] = {}


def _sealed_class(cls: type) -> type:
    """`cls` whose fields raise on reading, except those in `_open` and reads from `to_dict` (the recipe dump
    every stage writes)."""
    if cls not in _SEALED:
        def __getattribute__(self: Any, name: str) -> Any:
            caller = sys._getframe(1)  # to_dict, or its dict comprehension's own frame before Python 3.12
            if name.startswith("_") or name in object.__getattribute__(self, "_open") or \
                    to_dict.__code__ in (caller.f_code, caller.f_back and caller.f_back.f_code):
                return object.__getattribute__(self, name)
            stage, where = object.__getattribute__(self, "_sealed_by")
            raise UnreadSection(f"pipeline stage {stage!r} read '{where}.{name}', but its fingerprint does not cover "
                                f"it: add '{where}.{name}' (or its section) to READS[{stage!r}] in longshort/pipeline/plan.py")

        def __reduce__(self: Any) -> Any:  # copies and pickles (Ray) rebuild a sealed section
            return _sealed_copy, (cls, dict(object.__getattribute__(self, "__dict__")))

        _SEALED[cls] = type(f"Sealed{cls.__name__}", (cls,), {"__getattribute__": __getattribute__, "__reduce__": __reduce__})
    return _SEALED[cls]


def _sealed_copy(cls: type, state: dict[str, Any]) -> Any:
    obj = object.__new__(_sealed_class(cls))
    obj.__dict__.update(state)
    return obj


def _seal(obj: Any, where: str, paths: list[str], stage: str) -> Any:
    """`obj` (the config at dotted path `where`) with only the keys `paths` (relative to it) readable."""
    if "" in paths:
        return obj
    children: dict[str, list[str]] = {}
    for p in paths:
        head, _, rest = p.partition(".")
        children.setdefault(head, []).append(rest)
    locked = object.__new__(_sealed_class(type(obj)))
    locked.__dict__.update(obj.__dict__, _sealed_by=(stage, where), _open=frozenset(children))
    for name, rest in children.items():
        locked.__dict__[name] = _seal(getattr(obj, name), f"{where}.{name}", rest, stage) if dataclasses.is_dataclass(getattr(obj, name)) else getattr(obj, name)
    return locked


def sealed(recipe: Recipe, stage: str) -> Recipe:
    """A copy of `recipe` whose keys outside `READS[stage]` are sealed: what stage `stage` runs with."""
    out = copy.deepcopy(recipe)
    for f in dataclasses.fields(out):
        paths = [r[len(f.name) + 1:] if r != f.name else "" for r in READS[stage] if r == f.name or r.startswith(f.name + ".")]
        setattr(out, f.name, _seal(getattr(out, f.name), f.name, paths, stage))
    return out


def readable(recipe: Recipe, stage: str) -> dict[str, Any]:
    """Every key stage `stage` may read: what its fingerprint hashes."""
    body = to_dict(recipe)
    out = {}
    for path in READS[stage]:
        value = body
        for part in path.split("."):
            value = value[part]
        out[path] = value
    return out


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

    def solo_rl_ran(self, stage: str) -> bool:
        """Whether a one-adapter RL stage (`SOLO_SYSTEM`) trains: its system is compared and it has steps."""
        return SOLO_SYSTEM[stage] in self.pipeline.pipeline.systems and self.stages[stage].recipe.rl.steps > 0


def _wiring(plan_paths: dict[str, str], name: str, shared: dict[str, Any], stage: dict[str, Any]) -> dict[str, Any]:
    """Keys the pipeline sets itself for stage `name` (`stage`: its recipe so far, shared sections and overlay):
    where its inputs are. They win over the stage overlay."""
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
        # The single-model baseline: one fresh LoRA adapter on the reasoner, trained through long CoT itself. Its
        # rollouts sample at the temperature its learner trains at (role long's, as Long⊗Short's RL), not at the
        # evaluation's `protocol.temperature`: greedy rollouts would make every group identical (zero advantages).
        rollout = {"name": "long_cot", "long_cot_role": "long", "temperature": stage["roles"]["long"]["temperature"]}
        return deep_merge(on_reasoner, {"data": {"train": p["train"]}, "protocol": rollout,
                                        "roles": {"long": {"adapter": None}, "short": {"adapter": None}}})
    if name == "rl_operator":
        # RL through PDR (system pdr_rl): one fresh LoRA adapter on the reasoner answers every operator call, with the
        # evaluated operator's workspace settings. Its rollouts are one round, as the operators paper trains: the
        # evaluated schedule's first-round drafts, then one refine call (M = [m, 1]; [4, 2, 1] trains as [4, 1]).
        # Like rl_length it samples at role long's temperature, and so do the drafts (pdr_temperature unset).
        first = stage["protocol"]["pdr_schedule"][0]
        rollout = {"name": "pdr", "long_cot_role": "long", "temperature": stage["roles"]["long"]["temperature"],
                   "pdr_temperature": None, "pdr_schedule": [first, 1]}
        return deep_merge(on_reasoner, {"data": {"train": p["train"]}, "protocol": rollout,
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
                "rl_length": deep_merge(cfg.rl, cfg.rl_length), "rl_operator": deep_merge(cfg.rl, cfg.rl_operator)}
    extras: dict[str, dict[str, Any]] = {
        # the teacher of `task: generate` runs on the shared engine section, which the data stage cannot read
        "data": {"task": cfg.task, **({"generate": dataclasses.asdict(cfg.generate), "engine": shared["engine"],
                                       "system_prompt": shared["protocol"]["system_prompt"]} if cfg.task == "generate" else {})},
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
        data = deep_merge(data, _wiring(paths, name, shared, data))
        data = deep_merge(data, {"run": {"out_dir": str(run_dir), "name": name}})
        recipe = build(Recipe, data, f"{where}: pipeline.{name}" if name in overlays else where)
        if name == "eval" and "pdr" in cfg.systems:  # PDR's own refusal, before stage 1 instead of hours into the run
            from longshort.protocols.pdr import check_sampling

            try:
                check_sampling(recipe.protocol)
            except ConfigError as e:
                raise ConfigError(f"{where}: pipeline.eval (pipeline.systems has pdr): {e}") from None
        stage = Stage(name, after, recipe, extra=extras.get(name, {}))
        blob = json.dumps({"reads": readable(recipe, name), "extra": stage.extra, "after": [stages[a].fingerprint for a in after]},
                          sort_keys=True, default=str)
        stage.fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]
        stages[name] = stage
    heads = {role: sorted(set(stages[f"sft_{role}"].recipe.sft.lora.target_modules) & {"lm_head", "embed_tokens"})
             for role in ("long", "short") if stages[f"sft_{role}"].recipe.sft.mode == "lora"}
    for name in ("rl", "eval", "benchmarks"):  # vLLM serves no LoRA on the output head: fail now, not at stage 8
        engine = stages[name].recipe.engine
        for role, mods in heads.items():
            if mods and engine.kind == "vllm" and _vllm_lora_mode(engine.lora_mode) == "adapter":
                raise ConfigError(f"{where}: pipeline.{name}: engine.kind vllm cannot serve the {role} role's LoRA on "
                                  f"{mods[0]} (pipeline.sft_{role}.sft.lora.target_modules) as an adapter; set "
                                  "engine.lora_mode: merged (each role merged into its own copy of the base) or engine.kind: hf")
    return Plan(pipeline, run_dir, stages)
