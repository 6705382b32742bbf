"""Atomic writes and strict JSONL reading."""

import os

import pytest

from longshort.errors import DataError
from longshort.io import Rejects, atomic_write_text, read_jsonl


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a" / "out.txt"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two" and os.listdir(p.parent) == ["out.txt"]


def test_read_jsonl_names_file_and_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"a": 1}\n\n{"a": \n[1, 2]\n\xff\xfe\n{"a": 2}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:3: invalid JSON"):
        list(read_jsonl(p))
    rejects = Rejects()
    rows = list(read_jsonl(p, on_error="skip", rejects=rejects))
    assert [n for n, _ in rows] == [1, 6]
    assert [r["where"].rsplit(":", 1)[1] for r in rejects.rows] == ["3", "4", "5"]
    assert "invalid UTF-8" in rejects.rows[2]["reason"] and "expected a JSON object" in rejects.rows[1]["reason"]
    with pytest.raises(DataError, match="file not found"):
        list(read_jsonl(tmp_path / "missing.jsonl"))


def test_json_writers_are_strict(tmp_path):
    from longshort.io import append_jsonl, to_json, write_json, write_jsonl

    row = {"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}, "e": (1, 2)}
    assert to_json(row) == '{"a": null, "b": [null, 1.5], "c": {"d": null}, "e": [1, 2]}'
    write_json(tmp_path / "x.json", row)
    write_jsonl(tmp_path / "x.jsonl", [row])
    append_jsonl(tmp_path / "x.jsonl", row)
    for name in ("x.json", "x.jsonl"):
        text = (tmp_path / name).read_text()
        assert "NaN" not in text and "Infinity" not in text
    assert [r["a"] for _, r in read_jsonl(tmp_path / "x.jsonl")] == [None, None]


def test_validated_is_the_one_rule_for_bad_rows():
    from longshort.io import validated

    def check(r):
        if not isinstance(r.get("x"), int):
            raise ValueError("field 'x' must be an integer")
        return r

    records = [("f.jsonl:1", {"id": "a", "x": 1}), ("f.jsonl:2", {"id": "b", "x": "no"}),
               ("f.jsonl:3", {"id": "a", "x": 2}), ("g.jsonl:1", {"id": "a", "x": 3}), ("f.jsonl:5", {"x": 4})]
    with pytest.raises(DataError, match=r"^f\.jsonl:2: field 'x' must be an integer$"):
        list(validated(records, check, "raise", None, key=lambda r: r.get("id")))
    rejects = Rejects()
    kept = list(validated(records, check, "skip", rejects, key=lambda r: r.get("id")))
    assert [w for w, _ in kept] == ["f.jsonl:1", "f.jsonl:5"]  # rows without an id are never duplicates
    assert [(r["where"], r["reason"]) for r in rejects.rows] == [
        ("f.jsonl:2", "field 'x' must be an integer"),
        ("f.jsonl:3", "duplicate id 'a' (first at line 1)"),
        ("g.jsonl:1", "duplicate id 'a' (first at f.jsonl:1)"),
    ]


def test_rejects_file_is_this_runs(tmp_path):
    path = tmp_path / "rejects.jsonl"
    r = Rejects()
    r.add("f:1", "bad")
    r.write(path)
    assert [row for _, row in read_jsonl(path)] == [{"where": "f:1", "reason": "bad"}]
    Rejects().write(path)  # a rerun on fixed data leaves no stale rejects behind
    assert not path.exists()
