"""`longshort sft`: loss masks on real transcripts, learning, corrupt checkpoints, bad input.
(Exact resume after SIGKILL: tests/reliability/test_kill_resume.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from longshort.cli import main
from longshort.config import load_recipe
from longshort.errors import DataError
from longshort.sft.data import load_examples

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples" / "transcripts.jsonl"
RECIPE = REPO / "recipes" / "tiny" / "sft_long.yaml"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def recipe(tmp: Path, name: str, base: str, *extra: str):
    return load_recipe(str(RECIPE), [f"run.out_dir={tmp}", f"run.name={name}", f"model.base={base}", *extra])


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in rows(run_dir / "metrics.jsonl")]


# ---- loss masks -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("viewer", ["long", "short"])
def test_mask_marks_exactly_own_turns_token_by_token(tiny_tokenizer, viewer):
    tok = tiny_tokenizer
    row = next(r for r in rows(SAMPLES) if r["id"] == "hm-002")  # 4 turns: long, short(rethink), long, short
    system = f"system prompt of {viewer}"
    stop = getattr(load_recipe(None).roles, viewer).stop  # the role's stop strings: each turn of hm-002 ends in one
    examples, counts, _ = load_examples(SAMPLES, tok, viewer, system, max_length=4096, stop=stop)
    ex = next(e for e in examples if e.id == "hm-002")
    # Independent reference: the chat-template render, and the character spans of the viewer's own turns
    # (content only: a stop string ends each, so the engine stops there and `<|im_end|>\n` is chat glue).
    assert all(any(t["text"].endswith(s) for s in stop) for t in row["turns"] if t["role"] == viewer)
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": row["problem"]}]
    msgs += [{"role": "assistant" if t["role"] == viewer else "user", "content": t["text"]} for t in row["turns"]]
    rendered = tok.apply_chat_template(msgs, tokenize=False)
    own, partner, cursor = [], [], 0
    for t in row["turns"]:
        start = rendered.index(t["text"], cursor)
        cursor = start + len(t["text"])
        if t["role"] == viewer:
            own.append((start, cursor))
        else:
            partner.append((start, cursor))
    assert tok.decode(ex.input_ids) == rendered[: own[-1][1]]  # the view up to the role's last generated token
    offset = 0
    for i, (tid, m) in enumerate(zip(ex.input_ids, ex.mask)):
        piece = tok.decode([tid])
        span = (offset, offset + len(piece))
        offset += len(piece)
        inside_own = any(a <= span[0] and span[1] <= b for a, b in own)
        assert m == int(inside_own), f"token {i} {piece!r} at {span}: mask {m}"
        if any(a <= span[0] < b for a, b in partner):
            assert m == 0, f"partner token {i} {piece!r} is trainable"
    # One trainable run per own turn, decoding to exactly that turn.
    runs, cur = [], []
    for tid, m in zip(ex.input_ids, ex.mask):
        if m:
            cur.append(tid)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    assert [tok.decode(r) for r in runs] == [t["text"] for t in row["turns"] if t["role"] == viewer]
    assert counts["examples"] == 16 and counts["rows"] == 16


def test_trace_rows_target_role_and_bad_rows(tiny_tokenizer, tmp_path):
    f = tmp_path / "mixed.jsonl"
    good_trace = {"id": "t1", "problem": "What is 2 + 2?", "answer": "4", "response": "<think> 2 + 2 = 4 </think>"}
    only_short = {"id": "t2", "problem": "p", "gold": "1", "target_role": "short",
                  "turns": [{"role": "long", "text": "<think> a </think>"}, {"role": "short", "text": "<answer> 1 </answer>"}]}
    f.write_text(json.dumps(good_trace) + "\n" + json.dumps(only_short) + "\n")
    ex, counts, _ = load_examples(f, tiny_tokenizer, "long", "sys", 512)
    assert [e.id for e in ex] == ["t1"] and counts["skipped_other_target_role"] == 1
    own = [t for t, m in zip(ex[0].input_ids, ex[0].mask) if m]
    # no stop strings (a role served like the long-CoT reasoner): it ends its turn itself, so `<|im_end|>` is its own
    # token; the newline the template renders after it is glue (the engine stops on `<|im_end|>`)
    assert tiny_tokenizer.decode(own) == good_trace["response"] + "<|im_end|>"
    (stopped,), _, _ = load_examples(f, tiny_tokenizer, "long", "sys", 512, stop=["</think>"])
    assert tiny_tokenizer.decode([t for t, m in zip(stopped.input_ids, stopped.mask) if m]) == good_trace["response"]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(good_trace) + "\n" + '{"id": "x", "problem": "p", "turns": [{"role": "medium", "text": "a"}]}\n'
                   + "{not json\n" + json.dumps(good_trace) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: turns\[0\]"):
        load_examples(bad, tiny_tokenizer, "long", "sys", 512)
    ex, counts, rejects = load_examples(bad, tiny_tokenizer, "long", "sys", 512, on_error="skip")
    assert len(ex) == 1 and counts["rejected"] == 3  # bad role, bad JSON, duplicate id
    assert [r["where"].rsplit(":", 1)[1] for r in rejects.rows] == ["2", "3", "4"]
    assert any("duplicate id" in r["reason"] for r in rejects.rows)


# ---- training ---------------------------------------------------------------------------------------------


def test_loss_goes_down_and_artefacts(tmp_path, tiny_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from longshort.sft.trainer import Trainer

    rec = recipe(tmp_path, "learn", tiny_model, "sft.steps=30", "sft.save_every=15", "sft.eval_every=10",
                 "sft.lora.dropout=0.0", "sft.lr=3e-3")
    trainer = Trainer(rec)
    info = trainer.run()
    run = rec.run_dir
    ls = losses(run)
    assert [r["step"] for r in rows(run / "metrics.jsonl")] == list(range(1, 31))
    assert sum(ls[-5:]) / 5 < sum(ls[:5]) / 5 - 1.0, ls
    evals = [r["eval_loss"] for r in rows(run / "metrics.jsonl") if "eval_loss" in r]
    assert len(evals) == 3 and evals[-1] < evals[0]
    for name in ("config.yaml", "summary.md", "loss_curve.png", "run.json", "final/adapter_config.json"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert info["role"] == "long" and info["mode"] == "lora" and info["lora"]["r"] == 8
    # The saved adapter reloads to exactly the trained model's logits.
    ids = torch.tensor([[5, 17, 42, 99, 3, 250]])
    trainer.model.eval()
    with torch.no_grad():
        live = trainer.model(ids).logits
        reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(run / "final")).eval()
        assert torch.equal(reloaded(ids).logits, live)


def _straight(tmp_path: Path, tiny_model: str, name: str, *extra: str) -> list[float]:
    from longshort.sft.trainer import Trainer

    rec = recipe(tmp_path, name, tiny_model, *extra)
    Trainer(rec).run()
    return losses(rec.run_dir)


def test_corrupt_newest_checkpoint_is_skipped_full_mode_packed(tmp_path, tiny_model):
    """Full fine-tuning with packing and gradient accumulation: stop at step 8, corrupt the step-8 checkpoint,
    leave a half-written step-12: resume warns about both, restarts from step 4 and still matches."""
    from longshort.sft.trainer import Trainer

    keys = ("sft.mode=full", "sft.packing=true", "sft.grad_accum=2", "sft.batch_size=3", "sft.steps=10",
            "sft.save_every=4", "sft.lr=5e-4", "sft.eval_every=5")
    straight = _straight(tmp_path, tiny_model, "full_straight", *keys)
    rec = recipe(tmp_path, "full_crash", tiny_model, *keys)
    assert Trainer(rec, stop_after=8).run() == {"stopped_at": 8}
    ck = rec.run_dir / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["step-000004", "step-000008"]
    with open(ck / "step-000008" / "optimizer.pt", "r+b") as f:
        f.seek(100)
        f.write(b"\x00garbage\x00")
    (ck / "step-000012.partial").mkdir()
    messages: list[str] = []
    Trainer(rec, log=messages.append).run()
    text = "\n".join(messages)
    assert "step-000012.partial" in text and "incomplete" in text
    assert "skipping corrupt checkpoint" in text and "step-000008" in text and "optimizer.pt" in text
    assert "resuming from" in text and "step-000004" in text
    resumed = losses(rec.run_dir)
    assert len(resumed) == 10 and max(abs(a - b) for a, b in zip(resumed, straight)) <= 1e-6
    assert (rec.run_dir / "final" / "model.safetensors").is_file()


def test_packing_does_not_change_the_loss(tmp_path, tiny_model):
    """Packing is a layout change only: attention stays inside each example, so the loss is the same."""
    keys = ("sft.steps=2", "sft.warmup_steps=0", "sft.lora.dropout=0.0", "sft.eval_fraction=0")
    plain = _straight(tmp_path, tiny_model, "plain", *keys)
    packed = _straight(tmp_path, tiny_model, "packed", *keys, "sft.packing=true")
    assert packed == pytest.approx(plain, abs=1e-4)


# ---- bad input --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, key",
    [("sft.lr=-1", "sft.lr"), ("sft.steps=0", "sft.steps"), ("sft.batch_size=0", "sft.batch_size"),
     ("sft.lora.r=0", "sft.lora.r"), ("sft.eval_fraction=1.5", "sft.eval_fraction"), ("sft.role=medium", "sft.role"),
     ("sft.warmup_steps=100", "sft.warmup_steps")],
)
def test_bad_recipe_values_exit_2_naming_the_key(capsys, override, key):
    assert main(["sft", "--recipe", str(RECIPE), override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"'{key}'" in err, err


def test_bad_data_exits_2_with_file_line(tmp_path):
    bad = tmp_path / "t.jsonl"
    bad.write_text('{"id": "a", "problem": "p", "turns": []}\n')
    res = subprocess.run([sys.executable, "-m", "longshort.cli", "sft", "--recipe", str(RECIPE), f"sft.data={bad}",
                          f"run.out_dir={tmp_path}", "model.base=tiny"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"{bad}:1: field 'turns'" in res.stderr.strip().splitlines()[-1]
