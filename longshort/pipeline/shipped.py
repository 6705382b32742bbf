"""The shipped long-CoT reasoner of the embedded default: checked, then used as stage `reasoner`'s output.

A competent tiny reasoner takes ~2,000 SFT steps (about 30 min on 2 cores), more than the demo's budget, so the
repository ships one (`data/reasoner/tiny/`), built once by `scripts/build_reasoner.py` with the project's own
`longshort sft` and `recipes/tiny/reasoner.yaml`. Its `manifest.json` records what it was trained from; the
pipeline uses it only when its own reasoner stage would train the same thing: the same training rows (a
fingerprint of their content), the same base shape and seed, the same system prompt and the same SFT settings.
Anything else is a one-line error that names the first differing key (`pipeline.reasoner_source: train`
trains instead). Each shipped file's sha256 is checked before use.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from longshort.config.loader import to_dict
from longshort.errors import UserError
from longshort.io import read_jsonl

SHIPPED = Path(__file__).resolve().parents[2] / "data" / "reasoner" / "tiny"
MANIFEST = "manifest.json"
# SFT keys that cannot change the trained weights: where the data is (its content is fingerprinted instead) and
# how often to log, evaluate and save.
# Keys that do not make the reasoner another one: bookkeeping, and `bf16`, the build machine's precision choice (a
# CPU with AMX trains 1.8x faster in bf16 autocast, one with AVX2 only runs bf16 matmul ~50x slower; the manifest
# records what the shipped build used).
NOT_SHAPING = ("data", "eval_every", "save_every", "keep_checkpoints", "bf16")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_fingerprint(path: Path) -> str:
    """sha256 of what SFT trains on: each row's (problem, response), in file order (ids and extra fields aside)."""
    h = hashlib.sha256()
    for _, row in read_jsonl(path):
        h.update(json.dumps([row.get("problem"), row.get("response")], ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def training_settings(recipe: Any) -> dict[str, Any]:
    """What shapes the reasoner's weights, from its stage recipe (the data aside)."""
    body = to_dict(recipe)
    return {"seed": recipe.run.seed, "model.tiny": body["model"]["tiny"], "system_prompt": recipe.roles.long.system_prompt,
            "sft": {k: v for k, v in body["sft"].items() if k not in NOT_SHAPING}}


def _first_difference(a: Any, b: Any, key: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = _first_difference(a.get(k), b.get(k), f"{key}.{k}" if key else k)
            if d:
                return d
        return None
    return None if a == b else f"{key}: shipped {a!r}, this recipe {b!r}"


def manifest_digest(folder: Path = SHIPPED) -> str | None:
    """sha256 of the manifest (which names every file's sha256): part of stage `reasoner`'s fingerprint."""
    path = folder / MANIFEST
    return sha256(path) if path.is_file() else None


def read_manifest(folder: Path = SHIPPED) -> dict[str, Any]:
    path = folder / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the shipped reasoner's manifest ({e}); set pipeline.reasoner_source: train") from None


def install(recipe: Any, train_file: Path, out: Path, folder: Path = SHIPPED) -> dict[str, Any]:
    """Check the shipped reasoner against the stage recipe and its data, copy it to `out`; return its manifest."""
    manifest = read_manifest(folder)
    hint = " (set pipeline.reasoner_source: train to train a reasoner for this recipe)"
    built = {**manifest["training"], "sft": {k: v for k, v in manifest["training"].get("sft", {}).items() if k not in NOT_SHAPING}}
    diff = _first_difference(built, training_settings(recipe), "")
    if diff:
        raise UserError(f"{folder}: the shipped reasoner was trained with other settings: {diff}{hint}")
    if data_fingerprint(train_file) != manifest["data_fingerprint"]:
        raise UserError(f"{folder}: the shipped reasoner was trained on other rows than {train_file} "
                        f"(keys synthetic.* or run.seed differ from the build){hint}")
    for name, digest in manifest["files"].items():
        if not (folder / name).is_file() or sha256(folder / name) != digest:
            raise UserError(f"{folder / name}: missing or not the file the manifest names (sha256 differs); "
                            f"rebuild with scripts/build_reasoner.py or set pipeline.reasoner_source: train")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in manifest["files"]:
        shutil.copy2(folder / name, tmp / name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return manifest
