"""Recipes: YAML + overrides -> validated dataclasses; bad keys/types/values are named, exit 2."""

import subprocess
import sys

import pytest

from longshort.config import Recipe, dump_yaml, load_recipe
from longshort.config.loader import apply_overrides, describe
from longshort.errors import ConfigError

CLI = [sys.executable, "-m", "longshort.cli"]


def write(tmp_path, text, name="r.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_defaults_and_overrides(tmp_path):
    path = write(tmp_path, "run:\n  name: x\nprotocol:\n  name: pdr\n")
    r = load_recipe(path, ["protocol.pdr_schedule=[4,2,1]", "engine.gpu_memory_utilization=0.2", "run.seed=3"])
    assert r.run.name == "x" and r.protocol.name == "pdr"
    assert r.protocol.pdr_schedule == [4, 2, 1] and r.engine.gpu_memory_utilization == 0.2 and r.run.seed == 3
    assert r.run_dir.as_posix() == "runs/x"


def test_base_inheritance(tmp_path):
    write(tmp_path, "run:\n  name: base\n  seed: 7\nengine:\n  kind: hf\n", "base.yaml")
    path = write(tmp_path, "base: base.yaml\nrun:\n  name: child\n")
    r = load_recipe(path)
    assert (r.run.name, r.run.seed, r.engine.kind) == ("child", 7, "hf")


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("no_such_key=1", "unknown key 'no_such_key'"),
        ("run.nme=x", "unknown key 'run.nme'"),
        ("run.seed=abc", "key 'run.seed': expected int"),
        ("engine.kind=foo", "key 'engine.kind'"),
        ("protocol.max_turns=0", "protocol.max_turns"),
        ("roles.long.max_tokens=-5", "roles.long"),
        # one LoRA type in two sections: its checks name the section it sits in
        ("roles.short.max_tokens=0", "key 'roles.short.max_tokens' must be > 0"),
        ("sft.lora.r=0", "key 'sft.lora.r' must be >= 1, got 0"),
        ("rl.lora.r=0", "key 'rl.lora.r' must be >= 1, got 0"),
        ("rl.lora.target_modules=[]", "key 'rl.lora.target_modules' must name at least one module"),
        ("rl.lora.dropout=0.1", "unknown key 'rl.lora.dropout'"),  # RL samples and trains without dropout
        ("sft.lora.dropout=1.5", "key 'sft.lora.dropout' must be in [0, 1)"),
        ("rl.lora_alpha=32", "key 'rl.lora_alpha' was renamed: use 'rl.lora.alpha'"),
        ("rl.lora_targets=[q_proj]", "key 'rl.lora_targets' was renamed: use 'rl.lora.target_modules'"),
        ("protocol.pdr_schedule=[4,2]", "protocol.pdr_schedule"),
        ("run.quick=maybe", "key 'run.quick': expected bool"),
    ],
)
def test_bad_values_name_the_key_and_file(tmp_path, override, fragment):
    path = write(tmp_path, "run:\n  name: x\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(path, [override])
    assert fragment in str(e.value) and path in str(e.value)


def test_bad_yaml_names_line(tmp_path):
    path = write(tmp_path, "run:\n  name: x\n   bad: [\n")
    with pytest.raises(ConfigError, match=r"r\.yaml:\d+: invalid YAML"):
        load_recipe(path)


def test_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["novalue"])


def test_roundtrip_and_every_field_documented(tmp_path):
    r = load_recipe(None)
    path = write(tmp_path, dump_yaml(r))
    assert load_recipe(path) == r
    undocumented = [k for k, _, h in describe(Recipe) if not h]
    assert not undocumented, undocumented


def test_cli_config_show_and_errors(tmp_path):
    path = write(tmp_path, "run:\n  name: cli\n")
    ok = subprocess.run(CLI + ["config", "show", path, "run.seed=5"], capture_output=True, text=True)
    assert ok.returncode == 0 and "seed: 5" in ok.stdout and "name: cli" in ok.stdout
    bad = subprocess.run(CLI + ["config", "show", path, "no_such_key=1"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "no_such_key" in bad.stderr and path in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    missing = subprocess.run(CLI + ["config", "show", str(tmp_path / "nope.yaml")], capture_output=True, text=True)
    assert missing.returncode == 2 and "recipe not found" in missing.stderr


def test_recipe_paths_resolve_next_to_the_recipe_then_the_working_directory(tmp_path, monkeypatch):
    """A recipe copied out of the repository keeps working: its relative input paths are looked up next to it
    first (here the data and a pipeline overlay's traces), then in the working directory (here a file that only
    exists there), and keywords (`model.base: tiny`) and outputs (`run.out_dir`) are left alone."""
    from longshort.config import load_recipe

    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    (home / "rows.parquet").write_bytes(b"")
    (home / "traces.jsonl").write_text("")
    (work / "test.jsonl").write_text("")
    (home / "r.yaml").write_text(
        "model: {base: tiny}\nrun: {out_dir: runs}\ndata: {train: rows.parquet, test: test.jsonl}\n"
        "pipeline:\n  analyze: {analysis: {traces: traces.jsonl}}\n  benchmarks: {mine: rows.parquet, gone: nowhere.jsonl}\n"
    )
    monkeypatch.chdir(work)
    r = load_recipe(str(home / "r.yaml"), ["sft.data=rows.parquet"])
    assert r.data.train == str(home / "rows.parquet")
    assert r.data.test == "test.jsonl"  # not next to the recipe: the working directory's
    assert r.pipeline.analyze["analysis"]["traces"] == str(home / "traces.jsonl")
    assert r.pipeline.benchmarks == {"mine": str(home / "rows.parquet"), "gone": "nowhere.jsonl"}
    assert r.model.base == "tiny" and r.run.out_dir == "runs"
    assert r.sft.data == "rows.parquet"  # a command-line override is the working directory's, as typed


def test_repository_recipes_resolve_as_before():
    from longshort.config import load_recipe

    r = load_recipe("recipes/tiny/pipeline.yaml")
    assert r.pipeline.benchmarks["math500"] == "../shared/benchmarks/math500.jsonl" and r.model.base == "tiny"


def test_a_partial_stage_overlay_keeps_the_overlays_defaults(tmp_path):
    """`pipeline.rl_length.rl.steps=3` changes the steps and keeps the baseline's length reward: a dict key with
    defaults is merged like a section, never replaced by the user's part of it."""
    r = load_recipe(write(tmp_path, "run: {name: x}\n"), ["pipeline.rl_length.rl.steps=3", "pipeline.rl_operator.rl.lr=0.01"])
    assert r.pipeline.rl_length == {"rl": {"rewards": {"correct": 1.0, "format": 0.0, "length": 1.0, "synergy": 0.0}, "steps": 3}}
    op = r.pipeline.rl_operator["rl"]
    assert op["lr"] == 0.01 and op["loss"] == "cispo" and op["operator_mix"] == 0.5
