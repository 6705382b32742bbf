"""`longshort export`: adapter bundle, merged model == base+adapter, vLLM load, manifest, atomic output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longshort.cli import main
from longshort.config import load_recipe
from longshort.export import stop_tokens, tree_hash

from conftest import RL_RECIPE, rl_overrides  # the suite's tiny RL settings (HF engine)

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model) -> dict[str, Path]:
    """A long-role and a short-role LoRA run (8 steps each) and a full-SFT run (3 steps) on the same tiny base."""
    import torch

    from longshort.sft.trainer import Trainer

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("export_runs")
    out = {}
    for name, recipe, extra in [
        ("long", "sft_long.yaml", ["sft.steps=8"]),
        ("short", "sft_short.yaml", ["sft.steps=8", "sft.lora.r=4", "sft.lora.alpha=8",
                                     "sft.lora.target_modules=[q_proj,v_proj]"]),
        ("full", "sft_reasoner.yaml", ["sft.steps=3", "sft.warmup_steps=0"]),
    ]:
        rec = load_recipe(str(REPO / "recipes" / "tiny" / recipe),
                          [f"run.out_dir={tmp}", f"run.name={name}", f"model.base={tiny_model}", "sft.lr=5e-3", *extra])
        Trainer(rec).run()
        out[name] = rec.run_dir
    return out


def logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_export_long_role_loads_in_vllm(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_SENTINELsecret123")  # present in the environment, must never be written
    out = tmp_path / "export"
    assert main(["export", "--run", str(runs["long"]), "--out", str(out)]) == 0
    vllm = json.loads((out / "manifest.json").read_text())["roles"]["long"]["verify"]["vllm"]
    assert vllm["generated_tokens"] == [8, 8, 8]
    for f in out.rglob("*"):
        if f.is_file():
            assert b"SENTINEL" not in f.read_bytes(), f


def test_export_both_roles(runs, tiny_model, tmp_path):
    import torch
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from longshort.models import load_tokenizer

    out = tmp_path / "export"
    out.mkdir()
    (out / "stale.txt").write_text("old export")  # replaced as a whole, atomically
    assert main(["export", "--run", str(runs["long"]), "--run", str(runs["short"]), "--out", str(out),
                 "--skip-vllm-check"]) == 0
    assert not (tmp_path / "export.partial").exists() and not (out / "stale.txt").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["base"]["sha256"] == tree_hash(Path(tiny_model))
    assert manifest["base"]["path"] == str(Path(tiny_model).resolve())
    assert set(manifest["roles"]) == {"long", "short"}
    assert {"torch", "transformers", "peft", "python"} <= set(manifest["software"])
    tok = load_tokenizer(tiny_model)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 7 + 8?"}], tokenize=False, add_generation_prompt=True)
    ids = tok(ids, add_special_tokens=False)["input_ids"]
    for role, (r, alpha, targets) in {"long": (8, 16, 7), "short": (4, 8, 2)}.items():
        entry = manifest["roles"][role]
        acfg = json.loads((out / role / "adapter" / "adapter_config.json").read_text())
        assert (acfg["r"], acfg["lora_alpha"], len(acfg["target_modules"])) == (r, alpha, targets)
        assert acfg["base_model_name_or_path"] == Path(tiny_model).name == manifest["base"]["name"]  # portable, not a path
        assert entry["adapter"]["files"]["adapter_model.safetensors"]
        assert entry["metrics"]["final_loss"] < entry["metrics"]["first_loss"]
        assert entry["verify"]["merged_max_abs_logit_diff"] <= 1e-4
        # Independently: base + exported adapter == the run's adapter == merged (plain transformers), float32.
        base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
        ref = logits(PeftModel.from_pretrained(base, str(out / role / "adapter")).eval(), ids)
        run_ref = logits(PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), str(runs[role] / "final")).eval(), ids)
        assert torch.equal(ref, run_ref)
        merged = AutoModelForCausalLM.from_pretrained(str(out / role / "merged")).eval()
        assert (logits(merged, ids) - ref).abs().max().item() <= 1e-4
        plain = logits(AutoModelForCausalLM.from_pretrained(tiny_model).eval(), ids)
        assert (plain - ref).abs().max().item() > 1e-3  # the adapter really changes the model
        with safe_open(str(out / role / "merged" / "model.safetensors"), "pt") as f:
            assert all(f.get_slice(k).get_dtype() == "F32" for k in f.keys())
        role_file = json.loads((out / role / "merged" / "longshort_role.json").read_text())
        assert role_file["role"] == role and role_file["system_prompt"] == entry["system_prompt"]
        assert role_file["system_prompt"].startswith("You are the " + role)
        assert load_tokenizer(out / role / "merged").chat_template
        card = (out / role / "README.md").read_text()
        assert f"{entry['metrics']['final_loss']:.4g}" in card and entry["data"]["sha256"] in card
        assert entry["data"]["rows"] > 0 and "| RL reward of the " + role + " role (first → last step) | not measured |" in card


def test_export_full_run_and_bad_inputs(runs, tmp_path, capsys, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "full"
    assert main(["export", "--run", str(runs["full"]), "--out", str(out), "--skip-vllm-check"]) == 0
    m = json.loads((out / "manifest.json").read_text())["roles"]["long"]
    assert m["mode"] == "full" and "adapter" not in m and m["verify"]["vllm"].startswith("skipped")
    ids = [5, 17, 42, 99]
    a = logits(AutoModelForCausalLM.from_pretrained(str(runs["full"] / "final"), dtype=torch.float32), ids)
    b = logits(AutoModelForCausalLM.from_pretrained(str(out / "long" / "merged"), dtype=torch.float32), ids)
    assert torch.equal(a, b)
    capsys.readouterr()
    # Two runs of the same role, a directory that is not a run, and a push without a token: exit 2, one line.
    assert main(["export", "--run", str(runs["long"]), "--run", str(runs["full"]), "--out", str(tmp_path / "x"),
                 "--skip-vllm-check"]) == 2
    assert "same role" in capsys.readouterr().err
    assert main(["export", "--run", str(tmp_path), "--out", str(tmp_path / "y")]) == 2
    assert "no run.json" in capsys.readouterr().err
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    assert main(["export", "--run", str(runs["long"]), "--out", str(tmp_path / "z"), "--push-to-hub", "me/x"]) == 2
    assert "HF_TOKEN" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.fixture(scope="module")
def rl_run(ray_cluster, runs, tmp_path_factory, tiny_model) -> Path:
    """`longshort rl` for 1 step, continuing the long and short SFT runs' adapters (tiny model, HF engine)."""
    out = tmp_path_factory.mktemp("export_rl")
    args = rl_overrides(out, tiny_model, {r: str(runs[r] / "final") for r in ("long", "short")}, "rl.steps=1", "run.name=rl")
    assert main(["rl", "--recipe", RL_RECIPE, "--no-progress", *args]) == 0
    return out / "rl"


def test_stop_strings_of_one_token_join_eos_the_others_stay_strings(tiny_tokenizer):
    assert stop_tokens(tiny_tokenizer, ["</think>", "So far"]) == ([tiny_tokenizer.convert_tokens_to_ids("</think>")], ["So far"])


def test_export_rl_run_exports_both_final_adapters_with_cards(rl_run, runs, tiny_model, tmp_path, capsys):
    import hashlib

    import torch
    import yaml
    from safetensors.torch import load_file

    from longshort.chat import prompt_text, render
    from longshort.models import load_tokenizer

    out = tmp_path / "rl_export"
    # An RL run holds both roles: with an SFT run beside it, which run's role to export would be a guess.
    assert main(["export", "--run", str(rl_run), "--run", str(runs["short"]), "--out", str(out), "--skip-vllm-check"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is an RL run holding both roles" in err and str(runs["short"]) in err and len(err.splitlines()) == 1
    assert not out.exists()

    assert main(["export", "--run", str(rl_run), "--out", str(out), "--skip-vllm-check"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["roles"]) == {"long", "short"}
    assert manifest["base"]["sha256"] == tree_hash(Path(tiny_model)) and manifest["base"]["name"] == Path(tiny_model).name
    last = [json.loads(line) for line in (rl_run / "metrics.jsonl").read_text().splitlines()][-1]
    recipe = load_recipe(str(rl_run / "config.yaml"))
    tok = load_tokenizer(tiny_model)
    for role, stop in {"long": ["</think>"], "short": ["</rethink>", "</answer>"]}.items():
        e = manifest["roles"][role]
        assert e["stage"] == "rl" and e["source_run"] == str(rl_run.resolve())
        assert e["start_adapter"] == str((runs[role] / "final").resolve())
        # The RL run's final adapter, not the SFT adapter it started from.
        got = load_file(str(out / role / "adapter" / "adapter_model.safetensors"))
        final = load_file(str(rl_run / "checkpoints" / "step-000001" / "adapters" / role / "adapter_model.safetensors"))
        start = load_file(str(runs[role] / "final" / "adapter_model.safetensors"))
        assert all(torch.equal(got[k], final[k]) for k in final)
        assert max(float((final[k] - start[k]).abs().max()) for k in final) > 0
        acfg = json.loads((out / role / "adapter" / "adapter_config.json").read_text())
        assert acfg["base_model_name_or_path"] == Path(tiny_model).name and not Path(acfg["base_model_name_or_path"]).is_absolute()
        gen = json.loads((out / role / "merged" / "generation_config.json").read_text())
        assert stop == e["stop"] == manifest["how_to_run"]["roles"][role]["stop"]
        assert gen["eos_token_id"] == [tok.eos_token_id, *tok.convert_tokens_to_ids(stop)] and not gen.get("stop_strings")
        assert gen["max_new_tokens"] == getattr(recipe.roles, role).max_tokens
        role_file = json.loads((out / role / "adapter" / "longshort_role.json").read_text())  # what `serve` samples with
        rc = getattr(recipe.roles, role)
        assert (role_file["max_tokens"], role_file["temperature"], role_file["top_p"], role_file["max_turns"]) == \
            (rc.max_tokens, rc.temperature, rc.top_p, recipe.protocol.max_turns)
        # The chat template alone (no system message) renders the prompt the role was trained with.
        system = getattr(recipe.roles, role).system_prompt
        assert system and render(load_tokenizer(out / role / "merged"), [{"role": "user", "content": "What is 2 + 2?"}], True) \
            == prompt_text(tok, system, "What is 2 + 2?", [], role)
        # The card: Hub front matter, and the numbers the run measured.
        card = (out / role / "README.md").read_text()
        front = yaml.safe_load(card.split("---\n")[1])
        assert front["base_model"] == Path(tiny_model).name and front["library_name"] == "peft" and "longshort" in front["tags"]
        assert e["metrics"]["final_reward"] == last[f"{role}/reward"] and e["metrics"]["final_accuracy"] == last["accuracy"]
        assert f"| RL reward of the {role} role (first → last step) | {last[role + '/reward']:.4g} → {last[role + '/reward']:.4g} |" in card
        assert f"{last['accuracy']:.4g}" in card and f"{last[role + '/tokens_per_problem']:.4g}" in card
        assert "| SFT loss (first → final) | not measured |" in card
        assert e["recipe"]["sha256"] == hashlib.sha256((rl_run / "config.yaml").read_bytes()).hexdigest() in card
        assert e["data"]["rows"] > 0 and e["data"]["sha256"] in card and "synthetic task" in card
    how = manifest["how_to_run"]
    assert how["protocol"] == "long_short" and how["command"] == f"longshort serve --export {out}"
    assert how["roles"]["short"]["adapter"] == "short/adapter" and how["roles"]["long"]["merged"] == "long/merged"
    assert how["engine"]["enable_lora"] and how["engine"]["max_lora_rank"] == 8 and how["engine"]["max_loras"] == 2
    snippet: dict = {}
    exec(compile(how["python"], "how_to_run.python", "exec"), snippet)  # the snippet runs a real episode on the bundle
    assert [r for r, _ in snippet["turns"][:2]] == ["long", "short"]
