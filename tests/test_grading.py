"""Grader: extraction, equivalence (math-verify in bounded worker processes), adversarial inputs, `longshort grade`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longshort.grading import (
    Verdict,
    compare_many,
    extract_answer,
    extract_boxed,
    gold_answer,
    grade_many,
    grade_verdicts,
    guard,
    is_equivalent,
    malformed_answer,
    regrade,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(REPO, ".venv", "bin", "longshort")


def _jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    "text, want",
    [
        (r"first \boxed{1}, then \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),  # the LAST box
        (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),  # nested braces
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),  # escaped braces are not grouping
        (r"\boxed{5} and later a truncated \boxed{6", "5"),  # unterminated last box -> last complete one
        (r"\fbox{x+1}", "x+1"),
        (r"so $x^2 + y^2 = \boxed 9$.", "9"),  # bare form used in MATH solutions
        (r"\boxed{\boxed{7}}", "7"),  # last by start position
        (r"\boxed {42}", "42"),
        ("no box here, x < 3", None),
        (r"\\boxed{3}", None),  # a LaTeX line break followed by the word 'boxed'
    ],
)
def test_extract_boxed(text, want):
    assert extract_boxed(text) == want


@pytest.mark.parametrize(
    "text, source, want",
    [
        (r"... so the total is \boxed{1,234}.", None, "1,234"),
        (r"... so the total is \boxed{\$1,234}.", "gsm8k", "1234"),
        ("She makes 9 * 2 = $18 every day.\n#### 18", None, "18"),
        ("The answer is 42.", None, "42"),
        ("Final answer: $x = 7$", None, "x = 7"),
        (r"\frac12", None, r"\frac12"),  # a bare expression is the answer itself
        (r"\frac12", "gsm8k", r"\frac12"),  # not reduced to '12'
        ("We get 5 apples and then 7 pears", None, "7"),  # last number
        ("I do not know", None, None),
    ],
)
def test_extract_answer_lenient_fallbacks(text, source, want):
    assert extract_answer(text, source, rule="lenient") == want


@pytest.mark.parametrize(
    "text, source, want",
    [
        (r"... so the total is \boxed{1,234}.", None, "1,234"),
        (r"first \boxed{1}, then \boxed{7}", None, "7"),
        ("She makes 9 * 2 = $18 every day.\n#### 18", None, None),  # no box: no answer under the one rule
        ("The answer is 42.", None, None),
        ("I think 7 or maybe 12", None, None),
        ("x+" * 50_000 + "1", None, None),  # a 100k-character expression is not an answer
        (r"so 5 + 7 = 12 and then \boxed{1", None, None),  # truncated mid-box
        (r"\boxed{12 apples, not 13}", "gsm8k", None),  # two numbers: ambiguous, not 13
        (r"\boxed{\$18 dollars}", "gsm8k", "18"),
        (r"\boxed{1e3}", "gsm8k", "1e3"),
    ],
)
def test_extract_answer_strict_rule_is_the_last_box(text, source, want):
    assert extract_answer(text, source) == want


def test_strict_rule_cannot_be_fooled_where_the_lenient_one_is():
    """The issue's cases: the lenient column is fooled by the first two, the rule every protocol is graded by is
    not; the GSM8K reader is exact under both (an ambiguous box is no answer, `1e3` is 1000, not 3)."""
    preds = ["I think 7 or maybe 12", "x+" * 50_000 + "1", r"\boxed{12 apples, not 13}", "#### 1e3"]
    golds = ["12", "1", "13", "1000"]
    srcs = [None, None, "gsm8k", "gsm8k"]
    assert grade_many(preds, golds, sources=srcs) == [False, False, False, False]
    assert grade_many(preds, golds, sources=srcs, rule="lenient") == [True, True, False, True]
    with pytest.raises(ValueError, match="unknown grading rule"):
        extract_answer("1", rule="loose")


def test_regrade_only_compares_answers_that_differ():
    strict = compare_many(["5", None], ["5", "7"])
    lenient = regrade(strict, ["5", "7"], ["5", "7"])
    assert [v.correct for v in lenient] == [True, True] and lenient[0] is strict[0]


def test_non_ascii_digits():
    """Documented in docs/grading.md: Unicode decimal digits (fullwidth, Arabic-Indic) are digits; superscripts
    and other digit-like symbols are not."""
    got = grade_many([r"\boxed{１２}", r"\boxed{١٢}", r"\boxed{²}", r"\boxed{12}"], ["12", "12", "2", "١٢"])
    assert got == [True, True, False, True]


@pytest.mark.parametrize("gold", [r"\boxed{", "}}}}", r"\left(", "  ", r"{1"])
def test_malformed_gold_answers_are_named(gold):
    assert malformed_answer(gold) is not None


@pytest.mark.parametrize("gold", [r"\left(3,\frac{\pi}{2}\right)", r"\{1,2\}", "[1,2)", r"\frac{1}{2}", "B", "-7", r"\leftarrow"])
def test_ordinary_gold_answers_are_not_malformed(gold):
    assert malformed_answer(gold) is None


def test_gold_answer_normalises_numbers_and_wrappers():
    assert gold_answer(27.0) == "27"
    assert gold_answer(-1.0) == "-1"
    assert gold_answer(70) == "70"
    assert gold_answer("Janet sells 9 eggs.\n#### 2,125") == "2125"
    assert gold_answer(r"the answer is \boxed{\frac{3}{4}}") == r"\frac{3}{4}"


# ---------------------------------------------------------------------------------------------- equivalence

EQUIVALENT = [
    ("0.5", r"\frac12"),
    (r"(3,\pi/2)", r"\left(3,\frac{\pi}{2}\right)"),
    (r"2\sqrt2", r"\sqrt8"),
    ("27", "27.0"),
    ("1{,}000", "1000"),
    ("1,000", "1000"),
    (r"\dfrac{3}{4}", "0.75"),
    ("3/4", "0.75"),
    ("x+1", "1+x"),
    (r"\{1,2\}", r"\{2,1\}"),
    ("106", r"106^\circ"),
    ("Evelyn", r"\text{Evelyn}"),
]
NOT_EQUIVALENT = [
    ("2", "3"),
    ("27.5", "27"),
    ("(1,2)", "(2,1)"),
    ("[1,2)", "[1,2]"),
    ("x+1", "x-1"),
    (r"\frac{1}{3}", "0.3333"),
    (r"\sqrt8", "3"),
    ("1{,}001", "1000"),
]


def test_equivalences_and_non_equivalences():
    preds = [p for p, _ in EQUIVALENT + NOT_EQUIVALENT]
    golds = [g for _, g in EQUIVALENT + NOT_EQUIVALENT]
    got = compare_many(preds, golds)
    assert [v.correct for v in got] == [True] * len(EQUIVALENT) + [False] * len(NOT_EQUIVALENT), got
    assert all(v.how in ("exact", "numeric", "symbolic", "mismatch") for v in got)
    # the fast paths answer without sympy; the symbolic ones went through a worker
    assert got[3].how == "numeric" and got[4].how == "exact" and got[0].how == "symbolic"


def test_is_equivalent_in_a_thread():
    """math-verify alone raises in a non-main thread (signal.alarm); the worker processes make it thread-safe."""
    out: list[bool] = []
    t = threading.Thread(target=lambda: out.append(is_equivalent(r"(3,\pi/2)", r"\left(3,\frac{\pi}{2}\right)")))
    t.start()
    t.join(60)
    assert out == [True]


def test_grade_many_on_real_math500(benchmarks_dir):
    """Each MATH500 reference solution, graded against its own gold, is correct; against another item's gold, not."""
    rows = _jsonl(os.path.join(benchmarks_dir, "math500.jsonl"))
    assert grade_many([r["solution"] for r in rows], [r["answer"] for r in rows]) == [True] * len(rows)
    sub = rows[:40]
    shifted = grade_verdicts([r["solution"] for r in sub[1:]], [r["answer"] for r in sub[:-1]], workers=2)
    for v, a, b in zip(shifted, sub[1:], sub[:-1]):
        if gold_answer(a["answer"]) == gold_answer(b["answer"]):
            assert v.correct
        elif a["answer"].isdigit() and b["answer"].isdigit():
            assert not v.correct and v.how == "mismatch"
    assert sum(v.correct for v in shifted) <= 3


def test_gsm8k_source_reduces_to_the_number(benchmarks_dir):
    rows = _jsonl(os.path.join(benchmarks_dir, "gsm8k_test.jsonl"))[:50]
    golds = [r["answer"] for r in rows]  # raw worked solutions ending '#### N'
    preds = [r["answer"].split("####")[0] + f"So she makes \\boxed{{\\${r['answer'].split('####')[-1].strip()}}} dollars." for r in rows]
    assert grade_many(preds, golds, sources=["gsm8k"] * len(rows)) == [True] * len(rows)


# ---------------------------------------------------------------------------------------------- adversarial


@pytest.mark.parametrize(
    "ans, reason",
    [
        (r"10^{10^{10^{10}}}", "tower"),
        (r"10^{10^{10}}", "tower"),
        ("10**10**10", "tower"),
        ("10^10^10^10", "tower"),
        (r"2^{12345678}", "exponent literal"),
        ("1000000!", "factorial"),
        ("{" * 30 + "1" + "}" * 30, "nested"),
        ("x+" * 2000 + "1", "longer"),
    ],
)
def test_guard_rejects_absurd_inputs(ans, reason):
    why = guard(ans)
    assert why is not None and reason in why
    v = compare_many([ans], ["5"])[0]
    assert v == Verdict(False, ans, "rejected", why)


@pytest.mark.parametrize("ans", [r"2^{10}", r"e^{x^2}", r"2^{3^2}", r"\frac{1}{2}", "x_{1}^{2}", r"\left(3,\frac{\pi}{2}\right)", "120!"])
def test_guard_lets_ordinary_answers_through(ans):
    assert guard(ans) is None


def test_adversarial_items_finish_within_bounds():
    """Huge exponents, deep braces and megabyte outputs: every item graded, all wrong, in a few seconds."""
    mega = "Let me think. " * 80_000 + r"\boxed{42}"  # ~1.1 MB
    preds = [
        r"\boxed{10^{10^{10^{10}}}}",
        r"\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
        "{" * 200_000 + r"\boxed{" * 1000,  # only unterminated groups
        mega,
        "\x00\x07 garbage \u202e\U0001f600 " * 1000,
        r"\boxed{9^{9^{9}}}",  # passes the guard; sympy would take forever -> time limit
    ]
    golds = ["5", "2", "3", "41", "0", "1"]
    t = time.monotonic()
    got = grade_verdicts(preds, golds, timeout=2.0)
    wall = time.monotonic() - t
    assert [v.correct for v in got] == [False] * len(preds)
    assert got[0].how == "rejected" and got[1].how == "rejected" and got[2].how == "no_answer"
    assert got[3].extracted == "42" and got[3].how == "mismatch"
    assert got[5].how == "timeout"
    assert wall < 15, wall  # generous: includes a worker start on a loaded 2-core machine


def test_hard_timeout_kills_and_replaces_the_worker():
    """Below math-verify's own 1 s alarm only the process kill can stop the item; the next item still grades."""
    t = time.monotonic()
    v = compare_many([r"9^{9^{9}}"], ["1"], timeout=0.5)[0]
    assert v.how == "timeout" and "over 0.5 s" in v.detail
    assert time.monotonic() - t < 5
    assert is_equivalent("0.5", r"\frac{1}{2}")


# ---------------------------------------------------------------------------------------------- fuzzing

_FRAGMENTS = ["\\boxed{", "\\fbox{", "\\boxed 7", "{", "}", "\\{", "\\}", "\\\\", "a", "1", " ", "$", "x<3", "\\frac"]


def _reference_boxed(text: str) -> str | None:
    """Quadratic reference: tokenise left to right, then for every box find its closing brace by counting."""
    toks: list[tuple[str, int, int]] = []  # (kind, start, end)
    i = 0
    while i < len(text):
        if text.startswith("\\\\", i) or text.startswith("\\{", i) or text.startswith("\\}", i):
            i += 2
            continue
        for name in ("\\boxed", "\\fbox"):
            if text.startswith(name, i):
                j = i + len(name)
                k = j
                while k < len(text) and text[k].isspace():
                    k += 1
                if k < len(text) and text[k] == "{":
                    toks.append(("box", i, k + 1))
                    i = k + 1
                    break
                k = j
                while k < len(text) and text[k] == " ":
                    k += 1
                e = k
                while e < len(text) and not text[e].isspace() and text[e] not in "${}":
                    e += 1
                if k > j and e > k:
                    toks.append(("bare", k, e))
                    i = e
                    break
        else:
            if text[i] in "{}":
                toks.append((text[i], i, i + 1))
            i += 1
    best = None
    for idx, (kind, s, e) in enumerate(toks):
        if kind == "bare":
            best = text[s:e]
        elif kind == "box":
            depth = 1
            for kind2, s2, _ in toks[idx + 1 :]:
                depth += 1 if kind2 in ("box", "{") else -1 if kind2 == "}" else 0
                if depth == 0:
                    best = text[e:s2]
                    break
    return best


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=40).map("".join))
def test_fuzz_extract_boxed_matches_reference(text):
    assert extract_boxed(text) == _reference_boxed(text)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_extraction_never_crashes(text):
    t = time.monotonic()
    box = extract_boxed(text)
    ans = extract_answer(text)
    assert box is None or box in text
    assert ans is None or isinstance(ans, str)
    guard(text)
    assert time.monotonic() - t < 1


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_grade_end_to_end(tmp_path, benchmarks_dir):
    rows = _jsonl(os.path.join(benchmarks_dir, "aime25.jsonl"))
    preds = []
    for i, r in enumerate(rows):
        ans = r["answer"] if i % 3 else r["answer"] + 1  # every third one is wrong
        preds.append({"id": r["id"], "prediction": f"Thinking...\nSo the answer is $\\boxed{{{ans}}}$.", "gold": r["answer"]})
    inp, out = tmp_path / "preds.jsonl", tmp_path / "graded.jsonl"
    inp.write_text("".join(json.dumps(p) + "\n" for p in preds))
    res = subprocess.run([CLI, "grade", "--in", str(inp), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    graded = _jsonl(str(out))
    assert [g["correct"] for g in graded] == [bool(i % 3) for i in range(len(rows))]
    assert all(g["extracted"] == str(r["answer"] if i % 3 else r["answer"] + 1) for i, (g, r) in enumerate(zip(graded, rows)))
    assert "accuracy 0.6667 (20 correct)" in res.stdout


@pytest.mark.parametrize(
    "lines, where",
    [
        (['{"prediction": "1", "gold": "1"}', '{"prediction": "1", "gold": '], ":2:"),
        (['{"prediction": "1"}'], ":1: missing field 'gold'"),
        (['{"prediction": 5, "gold": "5"}'], ":1: field 'prediction' must be str"),
    ],
)
def test_cli_grade_bad_input(tmp_path, lines, where):
    inp = tmp_path / "bad.jsonl"
    inp.write_text("\n".join(lines) + "\n")
    res = subprocess.run([CLI, "grade", "--in", str(inp), "--out", str(tmp_path / "o.jsonl")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert f"{inp}{where}" in res.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_worker_module_runs_standalone():
    """The worker protocol itself: one JSON line in, one verdict line out (what the pool relies on)."""
    proc = subprocess.run([sys.executable, "-m", "longshort.grading_workers", "--worker"], input='["0.5", "\\\\frac12", 4]\n',
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == ["ready", "[true, \"\"]"]


def test_cli_grade_reports_the_lenient_column_and_refuses_bad_golds_and_flags(tmp_path):
    rows = [{"prediction": r"so \boxed{4}", "gold": 4}, {"prediction": "it is 5, cut off", "gold": "5"}]
    inp, out = tmp_path / "p.jsonl", tmp_path / "g.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = subprocess.run([CLI, "grade", "--in", str(inp), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "accuracy 0.5000 (1 correct)" in res.stdout and "lenient (last number, reported only) 1.0000" in res.stdout
    assert [(g["correct"], g["correct_lenient"]) for g in _jsonl(str(out))] == [(True, True), (False, True)]
    bad = tmp_path / "bad.jsonl"
    for line, want in [('{"prediction": "1", "gold": NaN}', ":1: field 'gold': not a finite number"),
                       ('{"prediction": "1", "gold": "\\\\boxed{"}', ":1: field 'gold': unbalanced braces")]:
        bad.write_text(line + "\n")
        res = subprocess.run([CLI, "grade", "--in", str(bad), "--out", str(out)], capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and f"{bad}{want}" in res.stderr, res.stderr
    for flags, want in [(["--timeout", "nan"], "--timeout: expected a finite number"), (["--out", str(tmp_path)], "is a directory")]:
        res = subprocess.run([CLI, "grade", "--in", str(inp), "--out", str(out), *flags], capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and "Traceback" not in res.stderr and want in res.stderr, res.stderr


def test_workers_started_from_a_finished_thread_keep_working():
    """Linux sends a child's death signal when the *thread* that started it ends: workers are started from a
    process-long thread, so one first used from a short-lived thread still grades afterwards."""
    t = threading.Thread(target=lambda: is_equivalent("0.25", r"\frac14"))
    t.start()
    t.join(60)
    time.sleep(0.5)
    v = compare_many([r"(1,\pi/2)"], [r"\left(1,\frac{\pi}{2}\right)"], workers=1)[0]
    assert v.correct and v.how == "symbolic", v


def test_workers_die_with_a_killed_grade(tmp_path):
    """SIGKILL of `grade` runs no clean-up there; its workers (in their own session) must still go with it."""
    import signal

    import psutil

    inp = tmp_path / "slow.jsonl"
    inp.write_text("".join(json.dumps({"prediction": r"\boxed{9^{9^{9}}}", "gold": str(i)}) + "\n" for i in range(2)))
    proc = subprocess.Popen([CLI, "grade", "--in", str(inp), "--out", str(tmp_path / "o.jsonl"), "--workers", "2",
                             "--timeout", "120"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline, workers = time.monotonic() + 60, []
    while len(workers) < 2 and time.monotonic() < deadline:
        workers = [p for p in psutil.Process(proc.pid).children() if "--worker" in p.cmdline()]
        time.sleep(0.1)
    assert len(workers) == 2, "the grading workers did not start"
    time.sleep(1.0)  # past start-up: busy on the items
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    alive = workers
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.1)
    for p in alive:
        p.kill()
    assert not alive, f"orphaned grading workers: {[p.pid for p in alive]}"
