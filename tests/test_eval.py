"""Evaluation harness and the `infer` / `eval` commands, on the real engines, tiny model and MATH500 file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longshort.cli import main
from longshort.config import load_recipe
from longshort.errors import UserError
from longshort.eval import evaluate
from longshort.metrics import episode_metrics
from longshort.types import Episode, Turn, read_episodes

RESULT_FIELDS = {
    "protocol", "benchmark", "problems", "samples", "episodes", "accuracy", "accuracy_lenient", "accuracy_std", "pass_at_k", "maj_at_k",
    "answered_rate", "tokens_per_problem", "tokens_by_role", "b_seq", "b_total", "tokens_read", "turns", "calls_by_kind",
    "rethink_rate", "rethinks_per_episode", "format_failure_rate", "format_failure_episodes", "latency_s",
    "latency_p90_s", "end",
}


def eval_recipe(tmp_path: Path, benchmarks_dir: str, tiny_adapters: dict[str, str], *extra: str):
    return load_recipe(
        str(Path(__file__).parent.parent / "recipes" / "tiny" / "eval.yaml"),
        [
            f"evaluation.path={benchmarks_dir}/math500.jsonl",
            f"evaluation.out={tmp_path / 'ev'}",
            f"roles.long.adapter={tiny_adapters['long']}",
            f"roles.short.adapter={tiny_adapters['short']}",
            "engine.max_model_len=1024",
            *extra,
        ],
    )


def test_eval_end_to_end_on_vllm_with_resume(vllm_engine, tiny_model, tiny_adapters, benchmarks_dir, tmp_path):
    rc = eval_recipe(tmp_path, benchmarks_dir, tiny_adapters)
    summary = evaluate(vllm_engine, rc, tiny_model, tiny_adapters, progress=False)
    out = tmp_path / "ev"
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["results"] == json.loads(json.dumps(summary["results"]))
    rows = {(r["protocol"], r["benchmark"]): r for r in on_disk["results"]}
    assert set(rows) == {("long_short", "math500"), ("pdr", "math500")}
    for (name, _), r in rows.items():
        assert RESULT_FIELDS <= set(r)
        assert (r["problems"], r["samples"], r["episodes"]) == (2, 2, 4)
        eps = list(read_episodes(str(out / name / "math500.jsonl")))
        assert [(e.problem_id, e.meta["sample"]) for e in eps][:2] == [(eps[0].problem_id, 0), (eps[0].problem_id, 1)]
        assert r["accuracy"] == sum(bool(e.correct) for e in eps) / 4
        assert r["b_seq"] == sum(e.b_seq for e in eps) / 4 and r["b_total"] == sum(e.b_total for e in eps) / 4
        assert r["tokens_per_problem"] == sum(e.generated_tokens for e in eps) / 4
    assert rows[("pdr", "math500")]["calls_by_kind"]["draft"] == 3 + 1  # schedule [3, 1]
    assert rows[("pdr", "math500")]["b_total"] > rows[("pdr", "math500")]["b_seq"]
    assert set(rows[("long_short", "math500")]["tokens_by_role"]) <= {"long", "short"}
    assert (out / "accuracy_vs_bseq.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "summary.md").read_text()
    assert "| pdr | math500 | 2 |" in md and "accuracy_vs_bseq.png" in md

    # resume: everything is done, so nothing is regenerated and the episodes are unchanged
    jsonl = out / "pdr" / "math500.jsonl"
    before = (jsonl.stat().st_mtime_ns, jsonl.read_text())
    again = evaluate(vllm_engine, rc, tiny_model, tiny_adapters, progress=False)
    assert (jsonl.stat().st_mtime_ns, jsonl.read_text()) == before
    assert [r["accuracy"] for r in again["results"]] == [r["accuracy"] for r in summary["results"]]

    # a larger limit resumes: only the new problem's episodes are generated, the old ones are kept
    more = eval_recipe(tmp_path, benchmarks_dir, tiny_adapters, "evaluation.limit=3", "evaluation.protocols=[pdr]")
    evaluate(vllm_engine, more, tiny_model, tiny_adapters, progress=False)
    eps = list(read_episodes(str(jsonl)))
    assert len(eps) == 6 and [e.to_dict() for e in eps[:4]] == [json.loads(line) for line in before[1].splitlines()]
    merged = json.loads((out / "summary.json").read_text())["results"]
    assert {(r["protocol"], r["problems"]) for r in merged} == {("long_short", 2), ("pdr", 3)}  # earlier row kept

    # a different configuration never mixes into the same file
    changed = eval_recipe(tmp_path, benchmarks_dir, tiny_adapters, "protocol.pdr_kappa=16", "evaluation.protocols=[pdr]")
    with pytest.raises(UserError, match="protocol.pdr_kappa"):
        evaluate(vllm_engine, changed, tiny_model, tiny_adapters, progress=False)


def _ep(pid: str, sample: int, answer: str | None, correct: bool, short_texts: list[str], ok: bool = True) -> Episode:
    ep = Episode(problem_id=pid, problem="p", gold="1", protocol="long_short", answer=answer, correct=correct, meta={"sample": sample})
    ep.add(Turn(role="long", prompt_ids=[1, 2, 3], completion_ids=[4, 5], text="<think>x</think>", format_ok=ok, wall_s=0.5))
    for t in short_texts:
        ep.add(Turn(role="short", prompt_ids=[1], completion_ids=[6], text=t, wall_s=0.25))
    return ep


def test_metrics_hand_checked():
    eps = [
        _ep("a", 0, "1", True, ["<answer>1</rethink>", "<answer>\\boxed{1}</answer>"]),
        _ep("a", 1, "2", False, ["<answer>\\boxed{2}</answer>"]),
        _ep("b", 0, "3", False, ["<answer>\\boxed{3}</answer>"], ok=False),
        _ep("b", 1, None, False, ["bad"]),
    ]
    m = episode_metrics(eps)
    assert (m["problems"], m["samples"], m["episodes"]) == (2, 2, 4)
    assert m["accuracy"] == 0.25  # 1 of 4 episodes
    assert m["accuracy_std"] == 0.25  # per-sample accuracies 0.5 and 0.0
    assert m["pass_at_k"] == 0.5 and m["answered_rate"] == 0.75
    assert m["rethink_rate"] == 1 / 5 and m["rethinks_per_episode"] == 0.25  # 1 rethink in 5 short turns
    assert m["format_failure_rate"] == 1 / 9 and m["format_failure_episodes"] == 0.25
    assert m["tokens_by_role"] == {"long": 2.0, "short": 1.25}
    assert m["tokens_per_problem"] == 3.25
    # hand-built turns have no step and are all accepted: each is a step of its own, so B_seq = B_total = generated;
    # each turn's input is its own prompt (roots): 3 for the long turn, 1 for each short one
    assert m["b_seq"] == m["b_total"] == m["tokens_per_problem"] == (4 + 3 + 3 + 3) / 4
    assert m["tokens_read"] == (5 + 4 + 4 + 4) / 4
    assert m["turns"] == 9 / 4
    assert m["latency_s"] == (1.0 + 0.75 * 3) / 4


def test_infer_and_eval_commands_on_hf(tiny_model, benchmarks_dir, tmp_path, capsys):
    rc = main(["infer", "--model", tiny_model, "--engine", "hf", "--protocol", "pdr", "--problem", "What is 17 + 25?",
               "--answer", "42", "protocol.pdr_schedule=[2,1]", "protocol.max_tokens=8", "engine.max_model_len=1024"])
    text = capsys.readouterr().out
    assert rc == 0
    assert text.count(" draft ") == 3 and text.count(" judge ") == 1 and "off-path" in text
    assert "B_seq" in text and "B_total" in text and "correct: " in text

    out = tmp_path / "cli_ev"
    rc = main(["eval", "--model", tiny_model, "--engine", "hf", "--protocol", "long_cot,long_short", "--benchmarks", "math500",
               "--path", f"{benchmarks_dir}/math500.jsonl", "--limit", "2", "--samples", "1", "--out", str(out),
               "roles.long.max_tokens=8", "roles.short.max_tokens=8", "protocol.max_tokens=8", "engine.max_model_len=1024"])
    assert rc == 0
    results = json.loads((out / "summary.json").read_text())["results"]
    assert [(r["protocol"], r["episodes"]) for r in results] == [("long_cot", 2), ("long_short", 2)]
    assert "| long_cot | math500 |" in capsys.readouterr().out
    # the saved episodes were sampled with other caps: resuming refuses them (naming the key), --no-resume starts over
    again = ["eval", "--model", tiny_model, "--engine", "hf", "--protocol", "long_cot", "--benchmarks", "math500",
             "--path", f"{benchmarks_dir}/math500.jsonl", "--limit", "2", "--samples", "1", "--out", str(out),
             "protocol.max_tokens=9", "engine.max_model_len=1024"]
    assert main(again + ["--resume"]) == 2 and "protocol.max_tokens" in capsys.readouterr().err
    assert main(again + ["--no-resume", "--no-progress"]) == 0
    assert "long_cot/math500" not in capsys.readouterr().err  # no progress bar


def test_eval_command_rejects_bad_flags(tiny_model, capsys):
    assert main(["eval", "--model", tiny_model, "--protocol", "nope", "--engine", "hf"]) == 2
    assert "unknown protocol 'nope'" in capsys.readouterr().err
    assert main(["eval", "--model", tiny_model, "--samples", "0", "--engine", "hf"]) == 2
    assert "evaluation.samples" in capsys.readouterr().err
