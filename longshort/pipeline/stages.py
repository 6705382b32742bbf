"""What each pipeline stage does: call the stage's library entry point with the stage's own recipe.

Every function takes the plan and its stage, leaves its outputs in the stage directory, resumes from what a
crashed attempt left there (each entry point is resumable on its own), and returns a small summary for
`stage.json` and the report.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any, Callable

from longshort.errors import UserError
from longshort.io import write_json, write_jsonl
from longshort.pipeline.plan import RL_STAGES, SOLO_SYSTEM, Plan, Stage
from longshort.types import ROLES

# Which adapters each evaluated system serves on the reasoner, and its protocol.
SYSTEM_PROTOCOL = {"long_cot": "long_cot", "sr": "sr", "pdr": "pdr", "long_short_sft": "long_short", "long_short_rl": "long_short",
                   "length_penalty_rl": "long_cot", "pdr_rl": "pdr"}
# The adapter set each system is served with: the SFT pair, RL's final pair, or the adapter of a one-adapter RL stage
# (the length-penalty baseline's, the operator RL's), which then answers the protocol's solver calls as role long.
SYSTEM_GROUP = {"long_short_rl": "rl", **{system: stage for stage, system in SOLO_SYSTEM.items()}}


def run_base(plan: Plan, stage: Stage, progress: bool) -> dict[str, Any]:
    from longshort.models import build_tiny, model_info

    r = stage.recipe
    if r.model.base == "tiny":
        if not (plan.base / "config.json").is_file():
            build_tiny(plan.base, r.model.tiny, r.run.seed)
    elif not (plan.base / "config.json").is_file():
        raise UserError(f"key 'model.base': {plan.base} is not a local HF model directory (no config.json)")
    info = model_info(plan.base)
    return {"path": str(plan.base), "model_type": info.get("model_type"), "vocab_size": info.get("vocab_size"),
            "hidden_size": info.get("hidden_size"), "layers": info.get("num_hidden_layers")}


def run_data(plan: Plan, stage: Stage, progress: bool) -> dict[str, Any]:
    r = stage.recipe
    out = stage.dir
    if stage.extra["task"] == "synthetic":
        from longshort.data.synthetic import write_task

        counts = write_task(r.synthetic.n, r.run.seed, out, r.synthetic.test_fraction, r.synthetic)
        return dict(counts)
    from longshort.data.benchmarks import load_benchmark
    from longshort.data.rows import field_map
    from longshort.data.traces import read_traces
    from longshort.io import Rejects

    task = stage.extra["task"]
    if not r.data.train or not r.data.test:
        raise UserError(f"pipeline.task {task} needs keys 'data.train' ({'problems' if task == 'generate' else 'traces'}) "
                        "and 'data.test' (held-out problems)")
    rejects = Rejects()
    # held-out problems carry no response: its column is the traces' alone
    test_fields = {k: v for k, v in field_map(r.data.fields).items() if k != "response"}
    test = load_benchmark("synthetic", path=r.data.test, on_error=r.data.on_error, fields=test_fields,
                          split=r.data.split)
    counts: dict[str, Any] = {}
    if task == "generate":
        counts = generate_traces(stage, test_fields, rejects, progress)
        n_train = counts["kept"]
    else:
        # the user's column names and split, as every other reader of rows takes them (data.fields, data.split)
        train = [t.to_dict() for t in read_traces(r.data.train, on_error=r.data.on_error, rejects=rejects,
                                                  fields=r.data.fields, split=r.data.split)]
        write_jsonl(out / "train.jsonl", train)
        n_train = len(train)
    write_jsonl(out / "test.jsonl", test.rows)
    if len(rejects) or test.rejects:
        write_jsonl(out / "rejects.jsonl", rejects.rows + test.rejects.rows)
    return {"train": n_train, "test": len(test.rows), "rejected": len(rejects) + len(test.rejects), **counts}


def generate_traces(stage: Stage, fields: dict[str, str], rejects: Any, progress: bool) -> dict[str, Any]:
    """`task: generate`: the teacher's correct traces on `data.train`'s problems into `train.jsonl`, resumable as
    `data generate` is; the teacher, its sampling and the engine section come from the stage settings (plan.py)."""
    from pathlib import Path

    from longshort.analysis.sample import teacher_sampler
    from longshort.config.core import EngineConfig
    from longshort.data.benchmarks import load_problems
    from longshort.data.generate import OUTCOMES, generate
    from longshort.engines import make_engine

    r, g, seed = stage.recipe, stage.extra["generate"], stage.recipe.run.seed
    problems = load_problems(r.data.train, on_error=r.data.on_error, rejects=rejects, fields=fields, split=r.data.split)
    engine_cfg = EngineConfig(**stage.extra["engine"])
    engine = make_engine(engine_cfg.kind, g["model"], engine_cfg, {}, seed)
    try:
        sampler = teacher_sampler(engine, engine_cfg.max_model_len, seed, g["temperature"], g["max_tokens"],
                                  stage.extra["system_prompt"])
        stats = generate(problems, g["samples"], sampler, stage.dir / "train.jsonl", {**g, "seed": seed},
                         Path(g["model"]).name, progress=progress)
    finally:
        engine.close()
    if not stats["kept"]:
        raise UserError(f"pipeline.task generate: none of the {stats['samples']} samples of {g['model']} was correct "
                        f"({', '.join(f'{k} {stats[k]}' for k in OUTCOMES)}): no traces to analyse")
    return {k: stats[k] for k in OUTCOMES}


def run_sft(plan: Plan, stage: Stage, progress: bool) -> dict[str, Any]:
    from accelerate.state import AcceleratorState

    from longshort.sft.trainer import Trainer

    if stage.name == "reasoner" and not stage.extra["train"]:
        return {"skipped": "pipeline.train_reasoner is false: the base is the reasoner", "path": str(plan.reasoner)}
    if stage.name == "reasoner" and stage.extra["source"] == "shipped":
        from longshort.pipeline import shipped

        m = shipped.install(stage.recipe, plan.train_file, plan.reasoner)
        return {"source": "shipped", "steps": m["steps"], "first_loss": m["first_loss"], "final_loss": m["final_loss"],
                "held_out": m["held_out"], "commit": m["commit"], "path": str(plan.reasoner)}
    # One process runs several SFT stages; accelerate keeps a process-wide state that would pin the first
    # stage's mixed precision, so each stage starts from a clean one (the pipeline is single-process).
    AcceleratorState._reset_state(reset_partial_state=True)
    info = Trainer(stage.recipe, progress=progress).run()
    if not info.get("metrics"):  # a finished run found on disk: Trainer returns its record
        info = json.loads((stage.dir / "run.json").read_text())
    m = info["metrics"]
    return {**({"source": "train"} if stage.name == "reasoner" else {}), "role": info["role"], "mode": info["mode"], "steps": info["steps"], "first_loss": m["first_loss"],
            "final_loss": m["final_loss"], "eval_loss": m.get("eval_loss"), "examples": info["counts"].get("train")}


def run_analyze(plan: Plan, stage: Stage, progress: bool) -> dict[str, Any]:
    from longshort.analysis.analyze import analyze

    s = analyze(stage.recipe, show_progress=progress)
    keys = ("traces_scored", "thoughts", "thoughts_per_trace", "M_mean", "M_mean_by_type", "accuracy_full_prefix", "accuracy_prefix0")
    return {k: s[k] for k in keys if k in s}


def run_coldstart(plan: Plan, stage: Stage, progress: bool) -> dict[str, Any]:
    from longshort.analysis.coldstart import coldstart

    stats = coldstart(stage.recipe)
    if stage.extra.get("task") == "synthetic":  # the generator knows which steps are essential: check the selection
        stats["ground_truth"] = selection_ground_truth(plan, stage)
    return stats


def selection_ground_truth(plan: Plan, stage: Stage) -> dict[str, Any]:
    """Precision/recall of the cold-start selection and M per step kind, against the synthetic step kinds."""
    from longshort.analysis import groundtruth
    from longshort.analysis.coldstart import select
    from longshort.io import read_jsonl

    cfg = stage.recipe.coldstart
    kinds = {str(r["id"]): r["step_kinds"] for _, r in read_jsonl(plan.train_file) if "step_kinds" in r}
    rows = [r for _, r in read_jsonl(plan.stages["analyze"].dir / "thoughts.jsonl")]
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_trace.setdefault(str(r["trace_id"]), []).append(r)
    selected: dict[tuple[str, int], bool] = {}
    forced: set[tuple[str, int]] = set()
    for tid, th in by_trace.items():
        th.sort(key=lambda r: r["index"])
        by_score = select(th, cfg.select, cfg.threshold, cfg.top_k, False, cfg.score_key)
        for r, kept, scored in zip(th, select(th, cfg.select, cfg.threshold, cfg.top_k, cfg.keep_first, cfg.score_key), by_score):
            selected[(tid, r["index"])] = kept
            if kept and not scored:
                forced.add((tid, r["index"]))
    return groundtruth.check(rows, kinds, selected, cfg.score_key, frozenset(forced))


def run_rl(plan: Plan, stage: Stage, progress: bool) -> dict[str, Any]:
    from longshort.rl.loop import run_rl as loop

    if not (plan.rl_ran() if stage.name == "rl" else plan.solo_rl_ran(stage.name)):
        return {"skipped": "rl.steps is 0" if stage.recipe.rl.steps == 0 else f"{SOLO_SYSTEM[stage.name]} is not in pipeline.systems"}
    s = loop(stage.recipe, progress=progress)
    return {"steps": s["steps"], "resumed_from": s["resumed_from"], "last": s["last"]}


def final_adapters(plan: Plan) -> dict[str, str]:
    """The adapters of the finished Long⊗Short system: RL's newest checkpoint, else the SFT adapters."""
    if plan.rl_ran():
        from longshort.rl import checkpoint

        ck = checkpoint.latest(plan.stages["rl"].dir / "checkpoints")
        if ck is None:
            raise UserError(f"{plan.stages['rl'].dir}/checkpoints: no complete RL checkpoint (rerun the pipeline to redo stage rl)")
        return {r: ck.adapter(r) for r in ROLES}
    return {r: str(plan.sft_adapter(r)) for r in ROLES}


def solo_adapter(plan: Plan, stage: str) -> dict[str, str]:
    """The adapter of a one-adapter RL stage (`rl_length`, `rl_operator`): role `long`, served alone."""
    from longshort.rl import checkpoint

    ck = checkpoint.latest(plan.stages[stage].dir / "checkpoints")
    if ck is None:
        raise UserError(f"{plan.stages[stage].dir}/checkpoints: no complete RL checkpoint (rerun the pipeline to redo stage {stage})")
    return {"long": ck.adapter("long")}


def _evaluate_systems(plan: Plan, stage: Stage, systems: list[str], benches: list[tuple[str, str]], progress: bool) -> dict[str, Any]:
    """Evaluate `systems` on `benches` [(benchmark, path)]: one engine per adapter set, results per system folder."""
    from longshort.engines import start_engine
    from longshort.eval import evaluate

    sft = {r: str(plan.sft_adapter(r)) for r in ROLES}
    groups: dict[str, list[str]] = {}
    for s in systems:
        groups.setdefault(SYSTEM_GROUP.get(s, "sft"), []).append(s)
    results: dict[str, Any] = {}
    for group, names in groups.items():
        adapters = final_adapters(plan) if group == "rl" else solo_adapter(plan, group) if group in SOLO_SYSTEM else sft
        recipe = copy.deepcopy(stage.recipe)
        for role in ROLES:
            getattr(recipe.roles, role).adapter = adapters.get(role)
        engine = start_engine(recipe, str(plan.reasoner), adapters)
        try:
            for system in names:
                for bench, path in benches:
                    r = copy.deepcopy(recipe)
                    r.evaluation = dataclasses.replace(r.evaluation, benchmarks=[bench], path=path, protocols=[SYSTEM_PROTOCOL[system]],
                                                       out=str(stage.dir / system / bench), plot=False)
                    if group in SOLO_SYSTEM:  # the protocol answered by the stage's adapter, not by the bare reasoner
                        r.protocol.long_cot_role = "long"
                    summary = evaluate(engine, r, str(plan.reasoner), adapters, progress=progress)
                    row = summary["results"][0]
                    results.setdefault(system, {})[bench] = {k: row[k] for k in (
                        "accuracy", "tokens_per_problem", "b_seq", "b_total", "problems", "samples", "turns",
                        "rethink_rate", "format_failure_rate", "tokens_by_role", "answered_rate", "accuracy_lenient") if k in row}
        finally:
            engine.close()
    return results


def run_eval(plan: Plan, stage: Stage, progress: bool) -> dict[str, Any]:
    ran = {"long_short_rl": plan.rl_ran(), **{system: plan.solo_rl_ran(stage) for stage, system in SOLO_SYSTEM.items()}}
    systems = [s for s in stage.extra["systems"] if ran.get(s, True)]
    res = _evaluate_systems(plan, stage, systems, [("synthetic", str(plan.test_file))], progress)
    return {s: v["synthetic"] for s, v in res.items()}


def run_benchmarks(plan: Plan, stage: Stage, progress: bool) -> dict[str, Any]:
    files: dict[str, str] = stage.extra["files"]
    if not files:
        return {"skipped": "pipeline.benchmarks is empty"}
    final = "long_short_rl" if plan.rl_ran() else "long_short_sft"
    return _evaluate_systems(plan, stage, ["long_cot", final], list(files.items()), progress)


def run_export(plan: Plan, stage: Stage, progress: bool) -> dict[str, Any]:
    """Both roles' final adapters (RL if it ran), verified merged models, one manifest."""
    from longshort.export import Exporter, read_rl_run, read_run

    adapters = final_adapters(plan)
    # an RL run is read as itself, so the cards carry its data, recipe and rewards (not the SFT runs' it started from)
    runs = (read_rl_run(plan.stages["rl"].dir) if plan.rl_ran()
            else [read_run(plan.stages[f"sft_{role}"].dir) for role in ROLES])
    out = stage.dir / "export"
    manifest = Exporter(runs, out, vllm_check=stage.extra["vllm_check"]).export()
    write_json(stage.dir / "exported.json", {"out": str(out), "from": adapters})
    return {"out": str(out), "roles": {r: {"merged_max_abs_logit_diff": e["verify"]["merged_max_abs_logit_diff"],
                                           "vllm": "ok" if isinstance(e["verify"].get("vllm"), dict) else "skipped"}
                                       for r, e in manifest["roles"].items()}}


def one_line(name: str, summary: dict[str, Any]) -> str:
    """A stage's summary in one line for the console."""
    if "skipped" in summary:
        return f"skipped: {summary['skipped']}"
    keys = {
        "base": ("model_type", "hidden_size", "layers"), "data": ("train", "test"),
        "reasoner": ("steps", "first_loss", "final_loss"), "sft_long": ("steps", "first_loss", "final_loss"),
        "sft_short": ("steps", "first_loss", "final_loss"), "analyze": ("traces_scored", "thoughts", "M_mean"),
        "coldstart": ("traces_out", "important_share", "turns_per_transcript", "compression_ratio"), "rl": ("steps",),
    }.get(name)
    if name in ("eval", "benchmarks"):
        rows = summary.items() if name == "eval" else ((f"{s}/{b}", r) for s, v in summary.items() for b, r in v.items())
        return "; ".join(f"{s} acc {r['accuracy']:.2f} tok {r['tokens_per_problem']:.0f}" for s, r in rows)
    if name in RL_STAGES:
        last = summary.get("last", {})
        return f"steps {summary['steps']}, last: acc {last.get('accuracy', float('nan')):.2f}, tokens {last.get('tokens_per_problem', float('nan')):.0f}"
    if name == "export":
        return f"{summary['out']} (" + ", ".join(f"{r}: vllm {v['vllm']}" for r, v in summary["roles"].items()) + ")"
    parts = []
    for k in keys or ():
        v = summary.get(k)
        if v is not None:
            parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
    return ", ".join(parts)


RUNNERS: dict[str, Callable[[Plan, Stage, bool], dict[str, Any]]] = {
    "base": run_base, "data": run_data, "reasoner": run_sft, "analyze": run_analyze, "coldstart": run_coldstart,
    "sft_long": run_sft, "sft_short": run_sft, "rl": run_rl, "rl_length": run_rl, "rl_operator": run_rl, "eval": run_eval, "benchmarks": run_benchmarks,
    "export": run_export,
}
