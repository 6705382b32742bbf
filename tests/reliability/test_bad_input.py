"""Bad recipes, bad data, bad model directories and bad flags through the real CLI: exit 2, exactly one stderr
line naming the key, file:line or file, no traceback; or, in `skip` mode, a counted reject. One table per class of
docs/reliability.md ("Bad input, class by class"), several cases each. Stage tests cover the rest
(tests/test_config.py: overrides of `config show`; tests/test_sft.py: sft values and a bad transcript;
tests/test_benchmarks.py, tests/test_grading.py: benchmark files and `grade` input)."""

from __future__ import annotations

import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import pytest
from harness import CLI, REPO, env

RL = ["rl", "--recipe", str(REPO / "recipes" / "tiny" / "rl.yaml"), "--no-progress", "engine.kind=hf", "run.out_dir={dir}/runs"]
SFT = ["sft", "--recipe", str(REPO / "recipes" / "tiny" / "sft_long.yaml"), "run.out_dir={dir}/runs"]
GOOD = {"id": "a", "problem": "1+1?", "answer": "2"}


def _line(obj) -> bytes:
    return json.dumps(obj).encode() + b"\n"


# name -> (command + overrides, {file name: content} written to the case folder, what the one stderr line must contain).
# "{dir}" is the case folder, "{model}" the session's tiny model (no model is built for a failing run). A file name
# under "model/" first copies the tiny model to {dir}/model; its content is bytes, None (delete the file) or a function
# of the file's bytes. Each class's cases follow in their own tables below.
Files = dict[str, "bytes | None | Callable[[bytes], bytes]"]
CASES: dict[str, tuple[list[str], Files, str]] = {
    "recipe unknown key": (RL[:2] + ["{dir}/r.yaml"], {"r.yaml": b"rl:\n  steps: 2\n  lrr: 0.1\n"}, "r.yaml: unknown key 'rl.lrr'"),
    "recipe wrong type": (RL[:2] + ["{dir}/r.yaml"], {"r.yaml": b"rl:\n  steps: many\n"}, "r.yaml: key 'rl.steps': expected int, got 'many'"),
    "recipe section not a mapping": (RL[:2] + ["{dir}/r.yaml"], {"r.yaml": b"rl: 3\n"}, "key 'rl'"),
    "renamed key": (RL + ["rl.lora_r=4"], {}, "rl.yaml + command line: key 'rl.lora_r' was renamed: use 'rl.lora.r'"),
    "negative lr": (RL + ["rl.lr=-1e-3"], {}, "key 'rl.lr' must be >= 0"),
    "zero lr": (RL + ["rl.lr=0"], {}, "key 'rl.lr' must be > 0"),
    "max_turns 0": (RL + ["protocol.max_turns=0"], {}, "protocol.max_turns"),
    "missing model path (rl)": (RL + ["model.base={dir}/no-model"], {}, "key 'model.base': {dir}/no-model"),
    "missing model path (sft)": (SFT + ["model.base={dir}/no-model"], {}, "key 'model.base': {dir}/no-model"),
    "missing adapter": (RL + ["model.base={model}", "roles.long.adapter={dir}/none"], {}, "key 'roles.long.adapter'"),
    "more GPUs than the cluster": (RL + ["model.base={model}", "rl.rollout_gpus=1", "rl.ray_num_cpus=2"], {},
                                   "keys 'rl.rollout_gpus'/'rl.learner_gpus': the actors reserve 1 GPUs"),
    "malformed JSONL line": (RL + ["model.base={model}", "data.train={dir}/d.jsonl"], {"d.jsonl": _line(GOOD) + b'{"id": "b", "problem": \n'},
                             "{dir}/d.jsonl:2: invalid JSON"),
    "empty field": (RL + ["model.base={model}", "data.train={dir}/d.jsonl"], {"d.jsonl": _line({**GOOD, "answer": "  "})},
                    "{dir}/d.jsonl:1: a problem row needs non-empty"),
    "invalid UTF-8": (RL + ["model.base={model}", "data.train={dir}/d.jsonl"], {"d.jsonl": _line(GOOD) + b'{"id": "b", "problem": "\xff"}\n'},
                      "{dir}/d.jsonl:2: invalid UTF-8 at byte 24"),
    "huge line": (RL + ["model.base={model}", "data.train={dir}/d.jsonl"],
                  {"d.jsonl": _line(GOOD) + b'{"id": "b", "problem": "' + b"x" * (17 << 20) + b'"}\n'}, "{dir}/d.jsonl:2: line longer than"),
    "duplicate ids": (RL + ["model.base={model}", "data.train={dir}/d.jsonl"], {"d.jsonl": _line(GOOD) + _line({**GOOD, "problem": "2+2?"})},
                      "{dir}/d.jsonl:2: duplicate id 'a' (first at line 1)"),
    "sft invalid UTF-8": (SFT + ["model.base={model}", "sft.data={dir}/t.jsonl"], {"t.jsonl": b'{"id": "\xfe"}\n'},
                          "{dir}/t.jsonl:1: invalid UTF-8"),
}



INFER = ["infer", "--problem", "1+1?", "--engine", "hf"]
SYN_RECIPE = str(REPO / "recipes" / "tiny" / "analyze.yaml")
THOUGHT = {"trace_id": "t", "index": 0, "text": "1 + 1 = 2.", "problem": "1+1?", "gold": "2", "M": 0.5, "ci_low": 0.1}
COLD = ["coldstart", "--recipe", str(REPO / "recipes" / "tiny" / "coldstart.yaml"), "run.out_dir={dir}/runs",
        "model.base={model}", "coldstart.thoughts={dir}/t.jsonl"]
BENCH = ["data", "benchmark", "math500", "--path", "{dir}/b.jsonl", "--out", "{dir}/out.jsonl"]
TRACE = {"id": "a", "problem": "1+1?", "answer": "2", "response": "<think>\n1 + 1 = 2.\n</think>\n\\boxed{2}"}


def _no_chat_template(raw: bytes) -> bytes:
    cfg = json.loads(raw)
    cfg.pop("chat_template", None)
    return json.dumps(cfg).encode()


# Numbers that are not numbers, and numbers no run can use: refused from the field's type by the recipe loader.
NUMBERS: dict[str, tuple[list[str], Files, str]] = {
    "sft.lr inf": (SFT + ["sft.lr=.inf"], {}, "key 'sft.lr': expected a finite number, got inf"),
    "rl.lr nan": (RL + ["rl.lr=.nan"], {}, "key 'rl.lr': expected a finite number, got nan"),
    "temperature nan": (RL + ["roles.short.temperature=.nan"], {}, "key 'roles.short.temperature': expected a finite number"),
    "lr 1e999": (SFT + ["sft.lr=1e999"], {}, "key 'sft.lr': expected a finite number, got inf"),
    "negative protocol.temperature": (RL + ["protocol.temperature=-0.5"], {}, "key 'protocol.temperature' must be >= 0"),
    "negative max_model_len": (RL + ["engine.max_model_len=-4"], {}, "key 'engine.max_model_len' must be >= 0"),
    "zero max_model_len": (RL + ["engine.max_model_len=0"], {}, "key 'engine.max_model_len' must be >= 1"),
    "steps no machine runs": (SFT + ["sft.steps=99999999999"], {}, "key 'sft.steps' must be <= 2147483647"),
    "nan in a recipe file": (RL[:2] + ["{dir}/r.yaml"], {"r.yaml": b"rl:\n  kl_coef: .NaN\n"}, "r.yaml: key 'rl.kl_coef': expected a finite"),
    "grade --timeout nan": (["grade", "--in", "{dir}/p.jsonl", "--out", "{dir}/o.jsonl", "--timeout", "nan"],
                            {"p.jsonl": b'{"prediction": "1", "gold": "1"}\n'}, "--timeout: expected a finite number"),
    "data synthetic --test-fraction inf": (["data", "synthetic", "--n", "10", "--out", "{dir}/s", "--test-fraction", "inf"], {},
                                           "--test-fraction: expected a finite number"),
}

# Model directories that are broken: one line naming what is wrong with which file, before anything loads them.
MODELS: dict[str, tuple[list[str], Files, str]] = {
    "truncated safetensors": (INFER + ["--model", "{dir}/model"], {"model/model.safetensors": lambda b: b[: len(b) // 2]},
                              "{dir}/model/model.safetensors: truncated"),
    "empty safetensors": (INFER + ["--model", "{dir}/model"], {"model/model.safetensors": b""},
                          "{dir}/model/model.safetensors: empty, truncated or not a safetensors file (0 bytes)"),
    "no weights": (INFER + ["--model", "{dir}/model"], {"model/model.safetensors": None}, "{dir}/model/model.safetensors: missing"),
    "config.json not JSON": (INFER + ["--model", "{dir}/model"], {"model/config.json": b'{"model_type": '},
                             "{dir}/model/config.json: not valid JSON"),
    "unknown architecture": (INFER + ["--model", "{dir}/model"],
                             {"model/config.json": lambda b: b.replace(b'"model_type": "qwen2"', b'"model_type": "qwen99"')},
                             "{dir}/model/config.json: unknown architecture model_type 'qwen99'"),
    "mismatched shapes (sft)": (SFT + ["model.base={dir}/model"],
                                {"model/config.json": lambda b: b.replace(b'"hidden_size": 256', b'"hidden_size": 128')},
                                "{dir}/model/model.safetensors: tensor model.embed_tokens.weight has shape"),
    "missing tokenizer": (INFER + ["--model", "{dir}/model"], {"model/tokenizer.json": None, "model/tokenizer_config.json": None},
                          "{dir}/model: no tokenizer"),
    "no chat template (rl)": (RL + ["model.base={dir}/model"], {"model/chat_template.jinja": None, "model/tokenizer_config.json": _no_chat_template},
                              "model {dir}/model has no chat template: set model.chat_template (docs/models.md)"),
    "LoRA target the model lacks (sft)": (SFT + ["model.base={model}", "sft.lora.target_modules=[q_proj,qkv]"], {},
                                          "key 'sft.lora.target_modules': the model at {model} has no module 'qkv'"),
    "LoRA target the model lacks (rl)": (RL + ["model.base={model}", "rl.lora.target_modules=[attn]"], {},
                                         "key 'rl.lora.target_modules': the model at {model} has no module 'attn'"),
}

# Recipes: duplicate keys, include cycles, encodings, and what can be checked before the expensive work.
RECIPES: dict[str, tuple[list[str], Files, str]] = {
    "duplicate section": (RL[:2] + ["{dir}/r.yaml"], {"r.yaml": b"rl:\n  steps: 2\nsft:\n  steps: 3\nrl:\n  lr: 0.1\n"},
                          "r.yaml:5: key 'rl' is given twice (lines 1 and 5)"),
    "duplicate nested key": (RL[:2] + ["{dir}/r.yaml"], {"r.yaml": b"rl:\n  steps: 2\n  steps: 3\n"},
                             "r.yaml:3: key 'steps' is given twice (lines 2 and 3)"),
    "base cycle": (RL[:2] + ["{dir}/a.yaml"], {"a.yaml": b"base: b.yaml\n", "b.yaml": b"base: a.yaml\n"},
                   "key 'base': recipes include each other in a cycle"),
    "base is itself": (RL[:2] + ["{dir}/a.yaml"], {"a.yaml": b"base: a.yaml\n"}, "a.yaml: key 'base': recipes include each other"),
    "missing base": (RL[:2] + ["{dir}/a.yaml"], {"a.yaml": b"base: nowhere.yaml\n"}, "recipe not found: {dir}/nowhere.yaml (the 'base' of"),
    "latin-1 recipe": (RL[:2] + ["{dir}/r.yaml"], {"r.yaml": "rl:\n  steps: 2  # café\n".encode("latin-1")},
                       "r.yaml: not UTF-8 text (byte 21)"),
    "delta not importable": (["analyze", "--recipe", SYN_RECIPE, "run.out_dir={dir}/runs", "analysis.delta=no_such_module:penalty"], {},
                             "key 'analysis.delta': cannot load 'no_such_module:penalty' (ModuleNotFoundError"),
    "delta not a function": (["analyze", "--recipe", SYN_RECIPE, "run.out_dir={dir}/runs", "analysis.delta=math:pi"], {},
                             "key 'analysis.delta': 'math:pi' is not a function"),
    "missing benchmark file (eval)": (["eval", "--recipe", str(REPO / "recipes" / "tiny" / "eval.yaml"), "--model", "{model}",
                                       "--engine", "hf", "--path", "{dir}/missing.jsonl", "evaluation.out={dir}/ev"], {},
                                      "{dir}/missing.jsonl: file not found"),
    "missing adapter (infer)": (INFER + ["--model", "{model}", "--long-adapter", "{dir}/nothing"], {},
                                "key 'roles.long.adapter': {dir}/nothing is not a PEFT adapter directory"),
}

# Text we cannot encode and outputs that cannot be written.
TEXT: dict[str, tuple[list[str], Files, str]] = {
    "lone surrogate (data benchmark)": (BENCH, {"b.jsonl": b'{"problem": "1+1?", "answer": "2"}\n{"problem": "x \\ud800", "answer": "1"}\n'},
                                        "{dir}/b.jsonl:2: lone UTF-16 surrogate '\\ud800'"),
    "lone surrogate (grade)": (["grade", "--in", "{dir}/p.jsonl", "--out", "{dir}/o.jsonl"],
                               {"p.jsonl": b'{"prediction": "\\udfff 5", "gold": "5"}\n'}, "{dir}/p.jsonl:1: lone UTF-16 surrogate"),
    "lone surrogate (sft)": (SFT + ["model.base={model}", "sft.data={dir}/t.jsonl"],
                             {"t.jsonl": b'{"id": "a", "problem": "\\ud800", "turns": []}\n'}, "{dir}/t.jsonl:1: lone UTF-16 surrogate"),
    "lone surrogate key (rl)": (RL + ["model.base={model}", "data.train={dir}/d.jsonl"],
                                {"d.jsonl": b'{"id": "a", "problem": "1+1?", "answer": "2", "\\ud800": 1}\n'}, "{dir}/d.jsonl:1: lone UTF-16 surrogate"),
    "--out is a directory (data benchmark)": (BENCH[:-1] + ["{dir}"], {"b.jsonl": b'{"problem": "1+1?", "answer": "2"}\n'},
                                              "{dir}: is a directory; give a file path"),
    "--out is a directory (data traces)": (["data", "traces", "gsm8k", "--path", "{dir}/g.jsonl", "--out", "{dir}"],
                                           {"g.jsonl": b'{"question": "q", "answer": "1 + 1 = 2\\n#### 2"}\n'}, "{dir}: is a directory"),
    "cold-start M is a string": (COLD, {"t.jsonl": json.dumps({**THOUGHT, "M": "high"}).encode() + b"\n"},
                                 "{dir}/t.jsonl:1: field 'M' must be a number, got str"),
    "cold-start index of mixed types": (COLD, {"t.jsonl": (json.dumps(THOUGHT) + "\n" + json.dumps({**THOUGHT, "index": "1"}) + "\n").encode()},
                                        "{dir}/t.jsonl:2: field 'index' must be an integer, got str"),
    "cold-start text null": (COLD, {"t.jsonl": json.dumps({**THOUGHT, "text": None}).encode() + b"\n"},
                             "{dir}/t.jsonl:1: field 'text' must be a string, got NoneType"),
    "cold-start M NaN": (COLD, {"t.jsonl": json.dumps({**THOUGHT, "M": float("nan")}).encode() + b"\n"},
                         "{dir}/t.jsonl:1: field 'M' must be finite"),
}

# Nonsense that parses: empty flags, garbage gold answers, empty or repeated inputs, traces that are not traces.
NONSENSE: dict[str, tuple[list[str], Files, str]] = {
    "infer empty --problem": (["infer", "--problem", "   ", "--model", "{model}"], {}, "--problem: empty text"),
    "infer empty --answer": (["infer", "--problem", "1+1?", "--answer", "", "--model", "{model}"], {}, "--answer: empty text"),
    "eval --protocol ,": (["eval", "--protocol", ",", "--model", "{model}"], {}, "--protocol: ',' names nothing"),
    "eval --benchmarks ' , '": (["eval", "--benchmarks", " , ", "--model", "{model}"], {}, "--benchmarks: ' , ' names nothing"),
    "eval unknown protocol": (["eval", "--protocol", "long_cot,cot", "--model", "{model}"], {}, "--protocol: unknown protocol 'cot'"),
    "gold \\boxed{": (BENCH, {"b.jsonl": b'{"problem": "p", "answer": "\\\\boxed{"}\n'}, "{dir}/b.jsonl:1: field 'answer': unbalanced braces"),
    "gold }}}}": (BENCH, {"b.jsonl": b'{"problem": "p", "answer": "}}}}"}\n'}, "{dir}/b.jsonl:1: field 'answer': unbalanced braces"),
    "gold \\left(": (BENCH, {"b.jsonl": b'{"problem": "p", "answer": "\\\\left(1"}\n'}, "{dir}/b.jsonl:1: field 'answer': \\left without"),
    "gold a bool (rl problems)": (RL + ["model.base={model}", "data.train={dir}/d.jsonl"],
                                  {"d.jsonl": b'{"id": "a", "problem": "p", "answer": true}\n'}, "{dir}/d.jsonl:1: field 'answer' must be a string or a number, got bool"),
    "gold an object": (BENCH, {"b.jsonl": b'{"problem": "p", "answer": {"x": 1}}\n'}, "{dir}/b.jsonl:1: field 'answer' must be a string or a number, got dict"),
    "empty thoughts file": (COLD, {"t.jsonl": b"\n\n"}, "{dir}/t.jsonl: no thought rows"),
    "thought given twice": (COLD, {"t.jsonl": (json.dumps(THOUGHT) + "\n") .encode() * 2},
                            "{dir}/t.jsonl:2: thought 0 of trace 't' given twice (first at line 1)"),
    "trace without <think>": (["analyze", "--recipe", SYN_RECIPE, "run.out_dir={dir}/runs", "analysis.traces={dir}/tr.jsonl"],
                              {"tr.jsonl": json.dumps({**TRACE, "response": "1 + 1 = 2, so \\boxed{2}"}).encode() + b"\n"},
                              "{dir}/tr.jsonl:1: field 'response' has no <think>"),
    "trace with a garbage gold": (["analyze", "--recipe", SYN_RECIPE, "run.out_dir={dir}/runs", "analysis.traces={dir}/tr.jsonl"],
                                  {"tr.jsonl": json.dumps({**TRACE, "answer": "{{"}).encode() + b"\n"},
                                  "{dir}/tr.jsonl:1: field 'answer': unbalanced braces"),
}
ALL = {**CASES, **NUMBERS, **MODELS, **RECIPES, **TEXT, **NONSENSE}

# Bad rows in skip mode, and valid files that look odd: exit 0, the reject count on stdout, the rejects file written.
# name -> (command, files, stdout fragment, rejects file (relative to the case folder) and how many rows it holds)
SKIPPED: dict[str, tuple[list[str], Files, str, str | None, int]] = {
    "garbage golds skipped": (BENCH + ["--on-error", "skip"], {"b.jsonl": b"".join([
        b'{"problem": "ok", "answer": "2"}\n', b'{"problem": "p", "answer": ""}\n', b'{"problem": "p", "answer": NaN}\n',
        b'{"problem": "p", "answer": [1]}\n', b'{"problem": "p", "answer": {"a": 1}}\n', b'{"problem": "p", "answer": false}\n',
        b'{"problem": "p", "answer": "\\\\boxed{"}\n', b'{"problem": "p", "answer": "}}}}"}\n', b'{"problem": "p", "answer": "\\\\left("}\n',
        b'{"problem": "\\ud800", "answer": "1"}\n'])}, "math500: 1 rows from {dir}/b.jsonl -> {dir}/out.jsonl; 9 rejected rows", "rejects.jsonl", 9),
    "BOM, CRLF and blank lines": (BENCH, {"b.jsonl": b'\xef\xbb\xbf{"problem": "a", "answer": "1"}\r\n\r\n  \r\n{"problem": "b", "answer": "2"}\r\n'},
                                  "math500: 2 rows from {dir}/b.jsonl", None, 0),
    "BOM in grade input": (["grade", "--in", "{dir}/p.jsonl", "--out", "{dir}/o.jsonl"],
                           {"p.jsonl": b'\xef\xbb\xbf{"prediction": "\\\\boxed{3}", "gold": 3}\r\n'}, "graded 1 rows: accuracy 1.0000", None, 0),
    "BOM in a recipe": (["config", "show", "{dir}/r.yaml"], {"r.yaml": b"\xef\xbb\xbfrl:\n  steps: 7\n"}, "steps: 7", None, 0),
    "sft skip mode prints its rejects": (SFT + ["model.base={model}", "sft.data={dir}/t.jsonl", "data.on_error=skip", "sft.steps=1",
                                          "sft.warmup_steps=0", "sft.eval_fraction=0"],
                                         {"t.jsonl": (REPO / "data" / "samples" / "transcripts.jsonl").read_bytes() + b'{"id": "bad"}\n'},
                                         "/rejects.jsonl  1 rejected rows", "runs/sft_long/rejects.jsonl", 1),
    "cold-start bad rows skipped": (COLD + ["data.on_error=skip"], {"t.jsonl": b"".join(json.dumps(r).encode() + b"\n" for r in [
        THOUGHT, {**THOUGHT, "index": 1, "text": "So the answer is 2.", "tail": "\\boxed{2}"}, THOUGHT, {**THOUGHT, "M": "x"},
        {**THOUGHT, "index": 2, "text": None}])}, '"rejected_rows": 3', "runs/tiny-coldstart/coldstart_rejects.jsonl", 3),
}
def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _run(name: str, args: list[str], files: Files, root: Path, model: str) -> tuple[subprocess.CompletedProcess, Path, Callable[[str], str]]:
    """Write the case's files (copying the tiny model first if one is under model/), run the CLI."""
    case = root / _slug(name)
    case.mkdir(parents=True)
    if any(f.startswith("model/") for f in files):
        shutil.copytree(model, case / "model")
    for fname, data in files.items():
        target = case / fname
        if data is None:
            target.unlink()
        else:
            target.write_bytes(data(target.read_bytes()) if callable(data) else data)
    fill = lambda s: s.replace("{dir}", str(case)).replace("{model}", model)  # noqa: E731
    res = subprocess.run([CLI, *[fill(a) for a in args]], cwd=REPO, env=env(), capture_output=True, text=True,
                         encoding="utf-8", errors="replace", timeout=300)
    return res, case, fill


def _run_case(name: str, root: Path, model: str) -> tuple[int, str, str]:
    """(exit code, stderr, the expected fragment with paths filled in)."""
    args, files, want = ALL[name]
    res, _, fill = _run(name, args, files, root, model)
    return res.returncode, res.stderr, fill(want)


def _run_skipped(name: str, root: Path, model: str) -> tuple[int, str, str, str, int | None]:
    """(exit code, stdout, stderr, the expected stdout fragment, rows in the rejects file or None)."""
    args, files, want, rejects, _ = SKIPPED[name]
    res, case, fill = _run(name, args, files, root, model)
    n = None
    if rejects is not None and (case / rejects).is_file():
        n = sum(1 for line in (case / rejects).read_text(encoding="utf-8").splitlines() if line.strip())
    return res.returncode, res.stdout, res.stderr, fill(want), n


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, tiny_model) -> dict[str, tuple]:
    """Every case's outcome; the CLI runs overlap (most of their time is Python start-up and imports)."""
    root = tmp_path_factory.mktemp("bad_input")
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(_run_case, name, root, tiny_model) for name in ALL}
        futures |= {name: pool.submit(_run_skipped, name, root, tiny_model) for name in SKIPPED}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("name", list(ALL))
def test_bad_input_exits_2_with_one_line_naming_it(outcomes, name):
    rc, stderr, want = outcomes[name]
    assert "Traceback" not in stderr, stderr[-3000:]
    # Ray's own start-up lines (INFO/WARNING with a timestamp) may precede ours on the resource check
    ours = [line for line in stderr.strip().splitlines() if line.startswith("longshort ")]
    assert rc == 2 and len(ours) == 1, stderr[-3000:]
    assert ours[0].startswith("longshort ") and ": error: " in ours[0] and want in ours[0], (want, ours[0])
    if not name.startswith("more"):  # only the resource check starts Ray
        assert len(stderr.strip().splitlines()) == 1, stderr


@pytest.mark.parametrize("name", list(SKIPPED))
def test_skipped_rows_are_counted_and_odd_valid_files_accepted(outcomes, name):
    rc, stdout, stderr, want, n = outcomes[name]
    assert rc == 0 and "Traceback" not in stderr, stderr[-3000:]
    assert want in stdout, (want, stdout[-2000:])
    assert n == (SKIPPED[name][4] if SKIPPED[name][3] else None)


def test_sft_that_goes_non_finite_stops_naming_the_step_and_writes_no_adapter(tmp_path, tiny_model):
    """A base whose weights hold a NaN (shapes fine, so the model check passes) makes the first loss NaN: the run
    stops with one line naming the step, and no checkpoint, adapter or metrics row of that step exists."""
    from safetensors.torch import load_file, save_file

    model = tmp_path / "nan-model"
    shutil.copytree(tiny_model, model)
    weights = load_file(str(model / "model.safetensors"))
    weights["model.norm.weight"][0] = float("nan")
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
    args = [a.replace("{dir}", str(tmp_path)) for a in SFT] + [f"model.base={model}", "sft.steps=3", "sft.save_every=1",
                                                               "sft.warmup_steps=0", "sft.eval_fraction=0"]
    res = subprocess.run([CLI, *args], cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    ours = [line[line.index("longshort "):] for line in res.stderr.splitlines() if "longshort sft: error:" in line]  # after a bar
    assert len(ours) == 1 and ours[0].startswith("longshort sft: error: sft: step 1: the loss or its gradient is not finite"), res.stderr
    run = tmp_path / "runs" / "sft_long"
    assert not (run / "final").exists() and not list((run / "checkpoints").glob("step-*"))
    assert not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text().strip()
