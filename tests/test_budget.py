"""Nominal budgets (`longshort budget`): B_seq and B_total from the caps, hand-computed; the CLI's flags and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longshort import budget
from longshort.cli import main
from longshort.config import load_recipe

RECIPES = Path(__file__).parent.parent / "recipes"


def nominal(protocol: str, *overrides: str, answer_buffer: int = 0) -> dict:
    rc = load_recipe(None, list(overrides))
    return budget.nominal(protocol, rc.protocol, rc.roles, answer_buffer)


@pytest.mark.parametrize(
    "mode,b_seq,b_total,calls",
    [
        # 3 rounds of drafts (8 + 4 + 1 calls at T = 512) and 2 distill steps between them
        ("shared_topk", 3 * 512 + 2 * 512, 13 * 512 + 2 * 512, 15),  # one judge per boundary
        ("per_sample_topk", 3 * 512 + 2 * 512, 13 * 512 + (4 + 1) * 512, 18),  # one judge per next-round call
        ("global_summary", 3 * 512 + 2 * 64, 13 * 512 + 2 * 64, 15),  # one summary per boundary, capped at κ = 64
        ("random_k", 3 * 512, 13 * 512, 13),  # no distill call
    ],
)
def test_pdr_8_4_1(mode, b_seq, b_total, calls):
    r = nominal("pdr", "protocol.pdr_schedule=[8,4,1]", "protocol.max_tokens=512", "protocol.pdr_kappa=64",
                f"protocol.pdr_distill={mode}")
    assert (r["b_seq"], r["b_total"], r["calls"]) == (b_seq, b_total, calls)
    assert [s["calls"] for s in r["steps"] if "drafts" in s["name"]] == [8, 4, 1]


def test_sr_long_cot_long_short():
    sr = nominal("sr", "protocol.sr_rounds=2", "protocol.max_tokens=100")
    assert (sr["b_seq"], sr["b_total"], sr["calls"]) == (300, 300, 3)  # solve + 2 refines
    ea = nominal("sr", "protocol.sr_rounds=2", "protocol.max_tokens=100", "protocol.sr_error_analysis=true")
    assert (ea["b_seq"], ea["b_total"], ea["calls"]) == (500, 500, 5)  # + an analysis before each refine
    assert nominal("sr", "protocol.sr_rounds=0", "protocol.max_tokens=100")["b_seq"] == 100
    lc = nominal("long_cot", "protocol.max_tokens=700")
    assert (lc["b_seq"], lc["b_total"], lc["calls"]) == (700, 700, 1)
    ls = nominal("long_short", "protocol.max_turns=5", "roles.long.max_tokens=300", "roles.short.max_tokens=50")
    assert (ls["b_seq"], ls["b_total"]) == (3 * 300 + 2 * 50, 1000)  # long, short, long, short, long
    assert [s["cap"] for s in ls["steps"]] == [300, 50, 300, 50, 300]


def test_answer_buffer_adds_to_every_call_but_the_summary():
    r = nominal("pdr", "protocol.pdr_schedule=[2,1]", "protocol.max_tokens=100", answer_buffer=10)
    assert (r["b_seq"], r["b_total"]) == (3 * 110, 4 * 110)  # drafts, judge, final
    r = nominal("pdr", "protocol.pdr_schedule=[2,1]", "protocol.max_tokens=100", "protocol.pdr_distill=global_summary",
                "protocol.pdr_kappa=30", answer_buffer=10)
    assert (r["b_seq"], r["b_total"]) == (110 + 30 + 110, 2 * 110 + 30 + 110)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["budget", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_prints_a_table_and_one_json_line(capsys):
    rc, out, _ = run_cli(capsys, "--protocol", "pdr", "--schedule", "8,4,1", "--max-tokens", "512")
    assert rc == 0
    lines = out.splitlines()
    result = json.loads(lines[-1])
    assert (result["b_seq"], result["b_total"]) == (2560, 7680)
    assert result["settings"]["schedule"] == [8, 4, 1] and result["settings"]["distill"] == "shared_topk"
    assert any(line.startswith("total") and "2560" in line and "7680" in line for line in lines)
    assert not any(line.startswith("{") for line in lines[:-1])


def test_cli_defaults_from_the_recipe_and_flags_override(capsys):
    recipe = str(RECIPES / "tiny" / "eval.yaml")
    rc_ = load_recipe(recipe)
    rc, out, _ = run_cli(capsys, "--recipe", recipe, "--protocol", "sr")
    assert rc == 0
    assert not rc_.protocol.sr_error_analysis
    assert json.loads(out.splitlines()[-1])["b_seq"] == (1 + rc_.protocol.sr_rounds) * rc_.protocol.max_tokens  # 3 × 12
    rc, out, _ = run_cli(capsys, "--recipe", recipe, "--protocol", "sr", "--rounds", "3", "--max-tokens", "10",
                         "--no-error-analysis")
    assert json.loads(out.splitlines()[-1])["b_seq"] == 40
    rc, out, _ = run_cli(capsys, "--recipe", recipe, "--protocol", "long_short", "--max-turns", "3",
                         "--long-max-tokens", "20", "--short-max-tokens", "5", "roles.short.max_tokens=7")
    assert json.loads(out.splitlines()[-1])["b_seq"] == 45  # flags beat overrides: 20 + 5 + 20


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["--protocol", "pdr", "--schedule", "8,4"], "--schedule"),  # must end in 1
        (["--protocol", "pdr", "--schedule", "8,0,1"], "--schedule"),
        (["--protocol", "pdr", "--schedule", "8,x,1"], "--schedule"),
        (["--protocol", "pdr", "--schedule", ""], "--schedule"),
        (["--protocol", "pdr", "--max-tokens", "0"], "--max-tokens"),
        (["--protocol", "sr", "--rounds", "-1"], "--rounds"),
        (["--protocol", "pdr", "--kappa", "1.5"], "--kappa"),
        (["--protocol", "pdr", "--distill", "best"], "--distill"),
        (["--protocol", "long_short", "--max-turns", "0"], "--max-turns"),
        (["--protocol", "long_short", "--long-max-tokens", "many"], "--long-max-tokens"),
        (["--protocol", "pdr", "--answer-buffer", "-3"], "--answer-buffer"),
        (["--protocol", "tree"], "--protocol"),
    ],
)
def test_cli_bad_values_exit_2_naming_the_flag(capsys, argv, flag):
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and f"error: {flag}:" in err
