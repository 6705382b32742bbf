"""Security properties of the package, checked on its source (AST, not regexes) and on real behaviour.

- weights and states load without pickle: every `torch.load` passes weights_only=True; no pickle-family module
  is imported; no `numpy.load(allow_pickle=True)`; nothing saves with safe_serialization=False;
- `trust_remote_code` is never a literal True: it only comes from the recipe flag, which defaults to False;
- no `eval`/`exec`/`compile` builtins and no `shell=True` anywhere; model output fed to the grader runs nothing;
- Ray: a local cluster is started without the dashboard (tests/reliability/test_rl_faults.py checks the running
  processes); hub tokens in the environment never reach a run directory (checked by the kill-and-resume trials).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from harness import REPO

PACKAGE = REPO / "longshort"
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _sources() -> list[tuple[Path, ast.Module]]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 30
    return [(f, ast.parse(f.read_text(encoding="utf-8"), str(f))) for f in files]


SOURCES = _sources()


def _calls(name: str):
    """(file, call) for every call whose function is `name` or `<anything>.name`."""
    for f, tree in SOURCES:
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                fn = node.func
                if (isinstance(fn, ast.Name) and fn.id == name) or (isinstance(fn, ast.Attribute) and fn.attr == name):
                    yield f, node


def _kw(call: ast.Call, key: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == key), None)


def _where(f: Path, node: ast.AST) -> str:
    return f"{f.relative_to(REPO)}:{node.lineno}"


def test_torch_load_is_always_weights_only():
    calls = [(f, c) for f, c in _calls("load") if isinstance(c.func, ast.Attribute) and getattr(c.func.value, "id", "") == "torch"]
    assert calls, "expected the trainer-state loads"
    for f, c in calls:
        v = _kw(c, "weights_only")
        assert isinstance(v, ast.Constant) and v.value is True, _where(f, c)


def test_no_pickle_modules_or_pickle_options():
    for f, tree in SOURCES:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert not {a.name.split(".")[0] for a in node.names} & PICKLE_MODULES, _where(f, node)
            elif isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] not in PICKLE_MODULES, _where(f, node)
    for f, c in _calls("load"):
        v = _kw(c, "allow_pickle")
        assert v is None or (isinstance(v, ast.Constant) and v.value is False), _where(f, c)
    for f, c in _calls("save_pretrained"):
        v = _kw(c, "safe_serialization")
        assert v is None or (isinstance(v, ast.Constant) and v.value is True), _where(f, c)


def test_trust_remote_code_only_from_the_recipe_flag():
    from longshort.config import load_recipe

    assert load_recipe(None).model.trust_remote_code is False
    for f, tree in SOURCES:
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert not isinstance(node.value, ast.Constant), f"{f.relative_to(REPO)}: literal trust_remote_code"


def test_no_eval_exec_or_shell():
    for name in ("eval", "exec", "compile", "__import__"):
        found = [_where(f, c) for f, c in _calls(name) if isinstance(c.func, ast.Name)]
        assert not found, (name, found)
    for name in ("run", "Popen", "call", "check_call", "check_output", "system"):
        for f, c in _calls(name):
            v = _kw(c, "shell")
            assert v is None or (isinstance(v, ast.Constant) and v.value is False), _where(f, c)
    assert not [_where(f, c) for f, c in _calls("system") if getattr(c.func.value, "id", "") == "os"]


@pytest.mark.parametrize(
    "payload",
    [
        "\\boxed{__import__('os').system('touch {marker}')}",
        "\\boxed{exec(\"open('{marker}', 'w').write('x')\")}",
        "\\boxed{eval(compile(\"open('{marker}','w')\", 'x', 'exec'))}",
        "<answer>{{{{ open('{marker}', 'w') }}}}</answer> \\boxed{$(touch {marker})}",
    ],
)
def test_model_output_is_never_executed(tmp_path, payload):
    """Adversarial answers go through extraction and the symbolic grader (worker processes) and run nothing."""
    from longshort.grading import compare_many, extract_answer

    marker = tmp_path / "pwned"
    text = payload.replace("{marker}", str(marker))
    pred = extract_answer(text)
    verdicts = compare_many([pred, pred], ["2", "x + 1"], workers=1, timeout=10)
    assert [v.correct for v in verdicts] == [False, False]
    assert not marker.exists()
