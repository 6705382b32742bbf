"""The shipped reasoner (data/reasoner/tiny): used only when it is what the recipe's reasoner stage would train,
and only when its files are the ones its manifest names."""

from __future__ import annotations

import shutil

import pytest

from longshort.config import load_recipe
from longshort.data.synthetic import write_task
from longshort.errors import UserError
from longshort.pipeline import shipped
from longshort.pipeline.plan import make_plan

RECIPE = "recipes/tiny/pipeline.yaml"


def _plan(tmp_path, *overrides):
    return make_plan(load_recipe(RECIPE, [f"run.out_dir={tmp_path}", *overrides]), RECIPE)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The recipe's own data stage output (the rows the shipped reasoner must have been trained on)."""
    tmp = tmp_path_factory.mktemp("data")
    r = _plan(tmp).stages["data"].recipe
    write_task(r.synthetic.n, r.run.seed, tmp / "rows", r.synthetic.test_fraction, r.synthetic)
    return tmp / "rows" / "train.jsonl"


def test_shipped_reasoner_installs_and_its_manifest_says_what_it_is(tmp_path, data):
    m = shipped.read_manifest()
    assert m["held_out"]["n"] >= 500 and m["held_out"]["accuracy"] >= 0.85  # the competence the demo rests on (measured 0.888)
    assert m["data_fingerprint"] == shipped.data_fingerprint(data)
    out = tmp_path / "final"
    shipped.install(_plan(tmp_path).stages["reasoner"].recipe, data, out)
    for name, digest in m["files"].items():
        assert shipped.sha256(out / name) == digest
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(str(out)).num_parameters() > 1e6


def test_a_changed_reasoner_setting_is_refused_naming_the_key(tmp_path, data):
    recipe = _plan(tmp_path, "pipeline.reasoner.sft.lr=0.001").stages["reasoner"].recipe
    with pytest.raises(UserError, match=r"sft\.lr: shipped 0\.003, this recipe 0\.001.*reasoner_source: train"):
        shipped.install(recipe, data, tmp_path / "final")
    assert not (tmp_path / "final").exists()


def test_other_rows_are_refused(tmp_path):
    plan = _plan(tmp_path, "synthetic.n=300")
    r = plan.stages["data"].recipe
    write_task(r.synthetic.n, r.run.seed, tmp_path / "rows", r.synthetic.test_fraction, r.synthetic)
    with pytest.raises(UserError, match="trained on other rows"):
        shipped.install(plan.stages["reasoner"].recipe, tmp_path / "rows" / "train.jsonl", tmp_path / "final")


def test_a_tampered_file_is_refused(tmp_path, data):
    folder = tmp_path / "shipped"
    shutil.copytree(shipped.SHIPPED, folder)
    weights = folder / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="model.safetensors: missing or not the file the manifest names"):
        shipped.install(_plan(tmp_path).stages["reasoner"].recipe, data, tmp_path / "final", folder)
