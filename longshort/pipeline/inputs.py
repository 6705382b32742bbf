"""Every input of every pipeline stage: where it is, who makes it, and the up-front check of the ones nobody makes.

An input is either made by an earlier stage (a path inside the run directory) or given by the user (a recipe key).
`check_inputs` checks every user-given one before stage 1, so a missing benchmark file stops the run at once with
one line naming the key (exit 2), not at stage 10 after the training; so are a base model without a chat template
(none set in `model.chat_template` either) and a `run.report_to` backend that is not installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from longshort.errors import UserError
from longshort.pipeline.plan import SOLO_SYSTEM, Plan


@dataclass(frozen=True)
class Input:
    stage: str
    key: str  # the recipe key the user sets it with, or what it is
    where: str  # a path, or `module:function`
    kind: str  # model | file | adapter | module
    made_by: str | None  # the stage that writes it; None = given by the user


def inputs(plan: Plan) -> list[Input]:
    """Every stage's inputs, in stage order."""
    cfg = plan.pipeline.pipeline
    run = plan.run_dir
    tiny = plan.pipeline.model.base == "tiny"
    base = Input("base", "model.base", str(plan.base), "model", "base" if tiny else None)
    reasoner = "reasoner" if cfg.train_reasoner else base.made_by
    rows: list[Input] = [base] if not tiny else []
    if cfg.task in ("files", "generate"):
        d = plan.stages["data"].recipe.data
        rows += [Input("data", "data.train", str(d.train), "file", None), Input("data", "data.test", str(d.test), "file", None)]
    if cfg.task == "generate":
        rows.append(Input("data", "pipeline.generate.model", str(cfg.generate.model), "model", None))
    train = ("train split", str(plan.train_file), "file", "data")
    model = ("reasoner", str(plan.reasoner), "model", reasoner)
    sft = [(f"sft_{r} adapter", str(plan.sft_adapter(r)), "adapter", f"sft_{r}") for r in ("long", "short")]
    rows += [Input("reasoner", "base model", str(plan.base), "model", base.made_by), Input("reasoner", *train)]
    rows += [Input("analyze", *model), Input("analyze", *train)]
    delta = plan.stages["analyze"].recipe.analysis.delta
    if ":" in delta:
        rows.append(Input("analyze", "analysis.delta", delta, "module", None))
    rows += [Input("coldstart", *model), Input("coldstart", "thoughts", str(run / "analyze" / "thoughts.jsonl"), "file", "analyze")]
    rewriter = plan.stages["coldstart"].recipe.coldstart.rewriter_model
    if rewriter:
        rows.append(Input("coldstart", "coldstart.rewriter_model", rewriter, "model", None))
    for r in ("long", "short"):
        rows += [Input(f"sft_{r}", *model), Input(f"sft_{r}", f"{r} transcripts", str(run / "coldstart" / f"{r}.jsonl"), "file", "coldstart")]
    rows += [Input("rl", *model), *(Input("rl", *a) for a in sft), Input("rl", *train)]
    rows += [Input(solo, *a) for solo in SOLO_SYSTEM for a in (model, train)]
    rows += [Input("eval", *model), *(Input("eval", *a) for a in sft), Input("eval", "test split", str(plan.test_file), "file", "data")]
    rows += [Input("benchmarks", *model)] + [Input("benchmarks", f"pipeline.benchmarks.{n}", p, "file", None) for n, p in cfg.benchmarks.items()]
    rows += [Input("export", *a) for a in sft]
    return rows


def check_input(i: Input, trust_remote_code: bool = False, chat_template: str | None = None) -> None:
    """One user-given input: UserError naming its key if it is missing or unusable (a model with `chat_template`,
    Jinja text, in place of its own)."""
    if i.kind == "module":
        import importlib

        mod, _, fn = i.where.partition(":")
        try:
            ok = callable(getattr(importlib.import_module(mod), fn, None))
        except Exception as e:  # noqa: BLE001 - importing user code can raise anything
            raise UserError(f"key '{i.key}': cannot import {mod!r} ({type(e).__name__}: {e})") from None
        if not ok:
            raise UserError(f"key '{i.key}': module {mod!r} has no function {fn!r}")
    elif i.kind == "model":
        from longshort.models import check_model_dir  # config, weights, tokenizer and its chat template

        check_model_dir(Path(i.where), i.key, trust_remote_code, chat_template)
    elif not Path(i.where).is_file() and not Path(i.where).is_dir():  # a data file, or a `datasets` folder
        raise UserError(f"key '{i.key}': {i.where} does not exist")


def check_inputs(plan: Plan) -> None:
    """Check every input no stage makes, before stage 1 (module docstring)."""
    from longshort.models import chat_template_text
    from longshort.run.logs import check_report_to

    model = plan.pipeline.model
    check_report_to(plan.pipeline.run.report_to)
    template = chat_template_text(model.chat_template)  # the base's; other models (a rewriter) keep their own
    for i in {i.where: i for i in reversed(inputs(plan)) if i.made_by is None}.values():  # each path once
        check_input(i, model.trust_remote_code, template if Path(i.where) == plan.base else None)
