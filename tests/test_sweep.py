"""`longshort eval --sweep`: the Pareto plane, on the tiny model with the HF engine and the real MATH500 file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longshort.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def sweep_args(tiny_model: str, benchmarks_dir: str, out: Path, *extra: str) -> list[str]:
    return ["eval", "--model", tiny_model, "--engine", "hf", "--protocol", "long_cot,pdr", "--benchmarks", "math500",
            "--path", f"{benchmarks_dir}/math500.jsonl", "--limit", "2", "--samples", "1", "--out", str(out),
            "--sweep", "protocol.pdr_schedule=[2,1];[3,1]", "protocol.max_tokens=6", "engine.max_model_len=1024", *extra]


def snapshot(out: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(out)): (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*")
            if p.is_file() and p.suffix in (".json", ".jsonl") and p.name != "pareto.json"}


def test_sweep_writes_the_pareto_plane_and_resumes(tiny_model, benchmarks_dir, tmp_path, capsys):
    out = tmp_path / "sw"
    assert main(sweep_args(tiny_model, benchmarks_dir, out)) == 0
    printed = capsys.readouterr()
    pareto = json.loads((out / "pareto.json").read_text())
    rows = {(r["override"]["protocol.pdr_schedule"][0], r["protocol"]): r for r in pareto["rows"]}
    assert set(rows) == {(2, "long_cot"), (2, "pdr"), (3, "long_cot"), (3, "pdr")}
    assert [p["override"] for p in pareto["points"]] == [{"protocol.pdr_schedule": [2, 1]}, {"protocol.pdr_schedule": [3, 1]}]
    for r in rows.values():
        assert r["n"] == r["problems"] == 2 and 0.0 <= r["accuracy_ci"][0] <= r["accuracy"] <= r["accuracy_ci"][1] <= 1.0
        for cost in ("b_seq", "b_total"):
            lo, hi = r[f"{cost}_ci"]
            assert lo <= r[cost] <= hi and set(r["frontier"]) == {"b_seq", "b_total"}
        eps = [json.loads(line) for line in (out / r["run"] / "math500.jsonl").read_text().splitlines()]
        assert len(eps) == 2 and {e["protocol"] for e in eps} == {r["protocol"]}
    # PDR really ran each schedule: 2 + 1 and 3 + 1 drafts per episode (a judge between), so B_total grows
    assert rows[(2, "pdr")]["calls_by_kind"]["draft"] == 3 and rows[(3, "pdr")]["calls_by_kind"]["draft"] == 4
    assert rows[(2, "pdr")]["b_total"] < rows[(3, "pdr")]["b_total"] and not rows[(2, "pdr")]["shared"]
    # long CoT reads no protocol.pdr_* key: evaluated once, the same row at both points, and said so
    assert rows[(2, "long_cot")]["shared"] and rows[(2, "long_cot")]["ignores"] == ["protocol.pdr_schedule"]
    assert rows[(2, "long_cot")]["run"] == rows[(3, "long_cot")]["run"] == "runs/base/long_cot"
    assert {k: v for k, v in rows[(2, "long_cot")].items() if k not in ("point", "override")} == \
        {k: v for k, v in rows[(3, "long_cot")].items() if k not in ("point", "override")}
    # long CoT (6 tokens, one call) costs less than any PDR point and no accuracy is above 1: it is on both frontiers
    assert rows[(2, "long_cot")]["frontier"] == {"b_seq": True, "b_total": True}
    for name in ("pareto_bseq.png", "pareto_btotal.png"):
        assert (out / name).read_bytes()[:8] == PNG
    assert "| pdr_schedule=[3, 1] | pdr |" in printed.out and "wrote " in printed.out

    # a rerun skips both finished points: no episode or point file is rewritten, the rows are the same
    before = snapshot(out)
    assert main(sweep_args(tiny_model, benchmarks_dir, out)) == 0
    assert capsys.readouterr().err.count("finished earlier, skipped") == 2
    assert snapshot(out) == before
    assert json.loads((out / "pareto.json").read_text())["rows"] == pareto["rows"]

    # a lost point file: that point is rebuilt from the episodes already written (none is generated again)
    (out / "points" / f"{pareto['points'][1]['point']}.json").unlink()
    assert main(sweep_args(tiny_model, benchmarks_dir, out)) == 0
    assert capsys.readouterr().err.count("finished earlier, skipped") == 1
    after = snapshot(out)
    assert all(after[k] == v for k, v in before.items() if k.endswith(".jsonl"))
    assert json.loads((out / "pareto.json").read_text())["rows"] == pareto["rows"]

    # other settings never mix into the finished points: the first changed key is named, exit 2, nothing written
    assert main(sweep_args(tiny_model, benchmarks_dir, out, "protocol.max_tokens=5")) == 2
    assert "protocol.max_tokens" in capsys.readouterr().err
    assert snapshot(out) == after


@pytest.mark.parametrize("sweep, message", [
    ("protocol.pdr_schedul=[2,1];[3,1]", "unknown key 'protocol.pdr_schedul'"),
    ("protocol.pdr_schedule=[2,1];[2,2]", "key 'protocol.pdr_schedule' must be positive and end with 1"),
    ("protocol.sr_rounds=1;two", "key 'protocol.sr_rounds': expected int"),
    ("evaluation.limit=1;2", "key 'evaluation.limit' cannot be swept"),
    ("roles.long.adapter=a;b", "key 'roles.long.adapter' cannot be swept"),
    ("protocol.sr_rounds=1;;2", "key 'protocol.sr_rounds': an empty value"),
])
def test_sweep_bad_point_fails_before_anything_runs(tiny_model, benchmarks_dir, tmp_path, capsys, sweep, message):
    out = tmp_path / "bad"
    args = sweep_args(tiny_model, benchmarks_dir, out)
    args[args.index("--sweep") + 1] = sweep
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()  # stopped before the engine started or any file was written
