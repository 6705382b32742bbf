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


def test_every_command_with_recipe_takes_config_too():
    """Walks the real parser, so a command added later without the alias fails here."""
    import argparse

    from longshort.cli import build_parser

    def parsers(p, name):
        yield name, p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, child in action.choices.items():
                    yield from parsers(child, f"{name} {sub}")

    seen = []
    for name, p in parsers(build_parser()[0], "longshort"):
        for action in p._actions:
            if "--recipe" in action.option_strings:
                assert "--config" in action.option_strings, name
                seen.append(name)
    assert {"longshort sft", "longshort serve", "longshort chat", "longshort infer", "longshort config show"} <= set(seen)


@pytest.mark.parametrize("command", ["sft", "rl", "analyze", "coldstart", "pipeline"])
def test_run_flags_set_their_run_keys_over_the_overrides(command, tmp_path):
    from longshort.cli import build_parser
    from longshort.commands.common import apply_run_arguments

    parser, _ = build_parser()
    args = parser.parse_args([command, "--config", RECIPE, "--out", str(tmp_path / "2024"), "--seed", "3", "--no-resume",
                              "run.seed=9"])
    recipe = apply_run_arguments(load_recipe(args.recipe, args.overrides), args)
    assert recipe.run_dir == tmp_path / "2024" and recipe.run.name == "2024"  # a string, not YAML's number
    assert (recipe.run.seed, recipe.run.resume) == (3, "never")  # the flag wins over run.seed=9
    args = parser.parse_args([command, "--recipe", RECIPE, "--resume"])
    recipe = apply_run_arguments(load_recipe(args.recipe, args.overrides), args)
    assert (recipe.run.resume, recipe.run.seed, recipe.run_dir) == ("auto", 0, load_recipe(RECIPE).run_dir)


def test_bad_run_flags_exit_2_before_any_work(capsys):
    assert main(["sft", "--recipe", RECIPE, "--seed", "-1"]) == 2
    assert "--seed" in capsys.readouterr().err
    assert main(["coldstart", "--recipe", RECIPE, "--out", " "]) == 2
    assert "--out: empty path" in capsys.readouterr().err


def test_pipeline_out_moves_every_stage(tmp_path, capsys):
    assert main(["pipeline", "--recipe", "recipes/tiny/pipeline.yaml", "--out", str(tmp_path / "p"), "--dry-run"]) == 0
    stages = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert stages and all(f" in {tmp_path / 'p'}/" in line for line in stages), stages


def test_serve_and_chat_take_a_seed():
    from longshort.cli import build_parser
    from longshort.commands.serve import bundle_settings

    parser, _ = build_parser()
    for command in ("serve", "chat"):
        recipe, where = bundle_settings(parser.parse_args([command, "--export", "unused", "--config", RECIPE, "--seed", "5"]))
        assert recipe.run.seed == 5 and where == RECIPE
