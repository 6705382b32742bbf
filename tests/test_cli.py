"""The CLI's shared grammar: --version, --config as the same flag as --recipe, `config keys [SECTION]` with defaults."""

from __future__ import annotations

import pytest

from longshort import __version__
from longshort.cli import main
from longshort.config import load_recipe

RECIPE = "recipes/tiny/sft_long.yaml"


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"longshort {__version__}"


def test_config_is_the_recipe_flag_on_every_recipe_command():
    from longshort.cli import build_parser

    parser, _ = build_parser()
    for command in ("sft", "rl", "analyze", "coldstart", "eval", "pipeline", "budget"):
        a = parser.parse_args([command, "--recipe", RECIPE, "sft.lr=0.5"])
        b = parser.parse_args([command, "--config", RECIPE, "sft.lr=0.5"])
        assert a.recipe == b.recipe == RECIPE and a.overrides == b.overrides == ["sft.lr=0.5"], command


def test_config_show_takes_the_recipe_either_way(capsys):
    assert main(["config", "show", RECIPE, "sft.lr=0.5"]) == 0
    positional = capsys.readouterr().out
    assert main(["config", "show", "--config", RECIPE, "sft.lr=0.5"]) == 0
    assert capsys.readouterr().out == positional and "lr: 0.5" in positional
    assert main(["config", "show"]) == 2
    assert "needs a recipe" in capsys.readouterr().err


def test_config_keys_of_one_section_with_defaults(capsys):
    assert main(["config", "keys", "coldstart"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.startswith("coldstart.") for line in lines)
    threshold = next(line for line in lines if line.startswith("coldstart.threshold "))
    assert repr(load_recipe(RECIPE).coldstart.__class__().threshold) in threshold.split()
    assert main(["config", "keys", "no_such_section"]) == 2
    assert "sections:" in capsys.readouterr().err
