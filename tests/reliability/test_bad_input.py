"""Bad recipes and bad data through the real CLI: exit 2, exactly one stderr line naming the key or file:line, no
traceback. Only what the stage tests do not already cover (tests/test_config.py: overrides of `config show`;
tests/test_sft.py: sft values and a bad transcript; tests/test_benchmarks.py, tests/test_grading.py: benchmark
files and `grade` input)."""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from harness import CLI, REPO, env

RL = ["rl", "--recipe", str(REPO / "recipes" / "tiny" / "rl.yaml"), "--no-progress", "engine.kind=hf", "run.out_dir={dir}/runs"]
SFT = ["sft", "--recipe", str(REPO / "recipes" / "tiny" / "sft_long.yaml"), "run.out_dir={dir}/runs"]
GOOD = {"id": "a", "problem": "1+1?", "answer": "2"}


def _line(obj) -> bytes:
    return json.dumps(obj).encode() + b"\n"


# name -> (command + overrides, {file name: bytes} written to the case folder, what the one stderr line must contain).
# "{dir}" is the case folder, "{model}" the session's tiny model (no model is built for a failing run).
CASES: dict[str, tuple[list[str], dict[str, bytes], str]] = {
    "recipe unknown key": (RL[:2] + ["{dir}/r.yaml"], {"r.yaml": b"rl:\n  steps: 2\n  lrr: 0.1\n"}, "r.yaml: unknown key 'rl.lrr'"),
    "recipe wrong type": (RL[:2] + ["{dir}/r.yaml"], {"r.yaml": b"rl:\n  steps: many\n"}, "r.yaml: key 'rl.steps': expected int, got 'many'"),
    "recipe section not a mapping": (RL[:2] + ["{dir}/r.yaml"], {"r.yaml": b"rl: 3\n"}, "key 'rl'"),
    "negative lr": (RL + ["rl.lr=-1e-3"], {}, "key 'rl.lr' must be > 0"),
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


def _run_case(name: str, root: Path, model: str) -> tuple[int, str, str]:
    """Write the case's files, run the CLI; (exit code, stderr, the expected fragment with paths filled in)."""
    args, files, want = CASES[name]
    case = root / name.replace(" ", "_").replace("(", "").replace(")", "")
    case.mkdir(parents=True)
    for fname, data in files.items():
        (case / fname).write_bytes(data)
    fill = lambda s: s.replace("{dir}", str(case)).replace("{model}", model)  # noqa: E731
    argv = [fill(a) for a in args]
    res = subprocess.run([CLI, *argv], cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    return res.returncode, res.stderr, fill(want)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, tiny_model) -> dict[str, tuple[int, str, str]]:
    """Every case's outcome; the CLI runs overlap (most of their time is Python start-up and imports)."""
    root = tmp_path_factory.mktemp("bad_input")
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(_run_case, name, root, tiny_model) for name in CASES}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_one_line_naming_it(outcomes, name):
    rc, stderr, want = outcomes[name]
    assert "Traceback" not in stderr, stderr[-3000:]
    # Ray's own start-up lines (INFO/WARNING with a timestamp) may precede ours on the resource check
    ours = [line for line in stderr.strip().splitlines() if line.startswith("longshort ")]
    assert rc == 2 and len(ours) == 1, stderr[-3000:]
    assert ours[0].startswith("longshort ") and ": error: " in ours[0] and want in ours[0], (want, ours[0])
    if not name.startswith("more"):  # only the resource check starts Ray
        assert len(stderr.strip().splitlines()) == 1, stderr
