"""docs/api.md runs top to bottom: its Python blocks, in order, in one namespace, from the repository root."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import longshort

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "api.md"


def test_import_is_cheap_and_every_entry_point_resolves():
    # a fresh interpreter: `import longshort` must not pull in torch (the CLI's start-up and notebooks pay for it)
    code = "import sys, longshort; assert 'torch' not in sys.modules, 'torch imported'; print(len(longshort.__all__))"
    assert subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    for name in longshort.API:
        assert callable(getattr(longshort, name)), name
    assert set(longshort.API) <= set(dir(longshort))
    try:
        longshort.not_an_entry_point  # noqa: B018
    except AttributeError as e:
        assert "not_an_entry_point" in str(e)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


def test_the_api_page_runs_top_to_bottom(monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 4
    documented = set(re.findall(r"^\| `(\w+)\(", DOC.read_text(encoding="utf-8"), re.M))
    assert documented <= set(longshort.API), documented - set(longshort.API)  # the table names real entry points
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", os.environ.get("TOKENIZERS_PARALLELISM", "false"))
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC}:block{i + 1}", "exec"), namespace)  # noqa: S102
    assert namespace["episode"].turns and namespace["manifest"]["roles"].keys() == {"long"}
    assert namespace["summary"]["results"][0]["problems"] == 2
