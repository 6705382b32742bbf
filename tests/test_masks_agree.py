"""SFT and RL train a role on the same tokens of the same transcript (docs/sft.md, "What a role is trained on").

The RL side is the real thing end to end: the `long_short` protocol (`run_protocol`) on the real HF engine, whose
sampler alone is replaced by the transcript's next turn (teacher forcing), so its stop-string and eos handling,
`completion_ids`, the protocol's `Turn`s and chat glue and `Episode.training_sequences` are the code RL runs.
The SFT side is `load_examples` on the same transcript, with the role's system prompt and stop strings as
`longshort sft` passes them.
"""

from __future__ import annotations

import json

import pytest

from longshort.chat import encode
from longshort.config import load_recipe
from longshort.protocols import run_protocol
from longshort.sft.data import load_examples

PROBLEM = {"id": "m1", "problem": "What is 3 + 4?", "answer": "7"}
TRANSCRIPT = [
    ("long", "<think> 3 + 4 = 7 </think>"),
    ("short", "<answer> 7? </rethink>"),
    ("long", "<think> yes 3 + 4 = 7 </think>"),
    ("short", "<answer> \\boxed{7} </answer>"),
]


class TeacherForced:
    """The real HF engine generating the transcript's turns in order: its sampler is replaced by the next token of
    the turn's text followed by eos, and everything else (stop strings, eos, completion ids and text) is its own."""

    def __init__(self, engine, texts: list[str], monkeypatch):
        self.engine = engine
        self.texts = list(texts)
        self.script: list[int] = []
        monkeypatch.setattr(engine, "_sample", self._sample)

    tokenizer = property(lambda self: self.engine.tokenizer)
    adapters = property(lambda self: self.engine.adapters)

    def generate(self, requests):
        assert len(requests) == 1  # one episode: one call per protocol step, the transcript's next turn
        eos = self.engine.tokenizer.eos_token_id
        self.script = encode(self.engine.tokenizer, self.texts.pop(0)) + [eos] * 4  # past eos = the engine missed it
        return self.engine.generate(requests)

    def _sample(self, logits, rows, gens):
        import torch

        return torch.tensor([self.script[len(r.ids)] for r in rows], device=logits.device)


@pytest.mark.parametrize("stops", ["default", "none"])
def test_sft_and_rl_train_each_role_on_the_same_tokens(hf_engine, tiny_tokenizer, tmp_path, monkeypatch, stops):
    tok = tiny_tokenizer
    overrides = ["engine.max_model_len=1024", "roles.long.max_tokens=64", "roles.short.max_tokens=64"]
    if stops == "none":  # served without stop strings, each role ends its turns by emitting <|im_end|> itself
        overrides += ["roles.long.stop=[]", "roles.short.stop=[]"]
    rc = load_recipe(None, overrides)

    engine = TeacherForced(hf_engine, [text for _, text in TRANSCRIPT], monkeypatch)
    (ep,) = run_protocol("long_short", engine, [PROBLEM], rc)
    assert [(t.role, t.text) for t in ep.turns] == TRANSCRIPT and ep.meta["end"] == "final" and ep.correct
    assert all(t.finish_reason == "stop" and t.format_ok for t in ep.turns)

    data = tmp_path / "transcript.jsonl"
    data.write_text(json.dumps({"id": "m1", "problem": PROBLEM["problem"], "gold": "7",
                                "turns": [{"role": r, "text": x} for r, x in TRANSCRIPT]}) + "\n")
    for role in ("long", "short"):
        role_cfg = getattr(rc.roles, role)
        (seq,) = ep.training_sequences(role)
        rl = [i for i, m in zip(seq.input_ids, seq.mask) if m]
        (ex,), _, _ = load_examples(data, tok, role, role_cfg.system_prompt, 1024, stop=role_cfg.stop)
        sft = [i for i, m in zip(ex.input_ids, ex.mask) if m]
        assert tok.decode(sft, skip_special_tokens=False) == tok.decode(rl, skip_special_tokens=False), role
        assert sft == rl, role
        assert (ex.input_ids, ex.mask) == (seq.input_ids, seq.mask), role  # the context agrees too
        # the rule, as the engine applies it: the role's text, closing tag included, and <|im_end|> only when the
        # role emitted it (no stop string ended its turn); the newline after it is always the template's glue
        end = [] if role_cfg.stop else [tok.eos_token_id]
        assert rl == [i for r, text in TRANSCRIPT if r == role for i in encode(tok, text) + end], role
