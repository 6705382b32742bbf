"""Answer extraction and equivalence grading, bounded in time for adversarial model output.

One rule grades every protocol (`rule="boxed"`, the default): the answer is the content of the last complete
``\\boxed{}``; an output without one (a truncated output, a bare last number) is wrong. The older `lenient` rule
(then ``#### N``, "the answer is X", a bare expression, the last number) is kept only as a second, reported column
(`accuracy_lenient`): it grades "I think 7 or maybe 12" correct for 12, so no headline number uses it.

Pipeline for one item: extract the answer -> cheap checks in this process (normalised string match, exact decimal
comparison) -> a guard that rejects absurd inputs (power towers, huge exponent literals, deep nesting, overlong
answers) -> math-verify's symbolic/numeric comparison in a worker *process* that is killed when it exceeds the
per-item time limit (a timeout counts as incorrect).

Why worker processes: math-verify's own timeout is ``signal.alarm``; it only works in the main thread and cannot
interrupt long C-level work (big-integer arithmetic inside sympy). A killed process is a hard bound. Nothing here
ever calls ``eval``; sympy objects are built by math-verify's LaTeX parser.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Sequence

# Limits on what reaches sympy. Real benchmark golds are < 100 characters (MATH500's longest is 53).
MAX_ANSWER_CHARS = 1000
MAX_BRACE_DEPTH = 20
MAX_EXPONENT_DEPTH = 2  # a^{b^{c}} is allowed, a^{b^{c^{d}}} is not
MAX_EXPONENT_DIGITS = 6  # an integer literal inside an exponent may have at most this many digits
MAX_TOWER_LITERAL = 9  # ... and inside an exponent of an exponent it may be at most this value
MAX_FACTORIAL = 10_000
DEFAULT_TIMEOUT_S = 4.0
WORKER_START_TIMEOUT_S = 120.0  # importing sympy on a loaded 2-core machine can be slow
WORKER_MEMORY_BYTES = 4 * 1024**3  # address-space cap for a worker: a runaway big-int dies with MemoryError
PARENT_ENV = "LONGSHORT_GRADING_PARENT"  # the pid a worker must die with

# ---------------------------------------------------------------------------------------------- extraction

# Tokens that matter for boxes: an escaped backslash or brace (not grouping), a box opening (brace form, or the
# bare form `\\boxed 9`), a grouping brace. Everything else is skipped by the regex engine, so the scan is linear.
_BOX_TOKENS = re.compile(r"\\\\|\\[{}]|\\(?:boxed|fbox)(?:\s*(\{)| +([^\s${}]+))|[{}]")


def extract_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces), or None.

    "Last" is by start position (in ``\\boxed{\\boxed{1}}`` it is the inner one); an unterminated box is ignored
    in favour of the last complete one. The bare form ``\\boxed 9`` counts too, ending at a space or ``$``.
    ``\\{`` and ``\\}`` are literal braces. One pass with a brace stack: linear time, any nesting depth.
    """
    if not isinstance(text, str):
        return None
    stack: list[tuple[int, int] | None] = []  # (box start, content start) for a box's brace, None for a plain one
    best: tuple[int, int, int] | None = None  # (box start, content start, content end)
    for m in _BOX_TOKENS.finditer(text):
        if m.group(2) is not None:  # bare form: complete at once
            if best is None or m.start() > best[0]:
                best = (m.start(), m.start(2), m.end(2))
        elif m.group(1) is not None:
            stack.append((m.start(), m.end()))
        elif m.group() == "{":
            stack.append(None)
        elif m.group() == "}" and stack:
            box = stack.pop()
            if box is not None and (best is None or box[0] > best[0]):
                best = (box[0], box[1], m.start())
    return None if best is None else text[best[1] : best[2]]


_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")
_HASHES = re.compile(r"####[ \t]*([^\n]{0,200})")
_ANSWER_IS = re.compile(r"(?i)(?:final answer|the answer)\s*(?:is|:)\s*([^\n]{1,200})")
_LATEX_CMD = re.compile(r"\\(?:text|mathrm|textbf|mbox)\{[^{}]{0,100}\}|\\[A-Za-z]+")
_LATEX_MATH = re.compile(r"\\(?!text|mathrm|mbox)[A-Za-z]")  # a LaTeX command other than text/units
_WORD = re.compile(r"[A-Za-z]{3,}")
RULES = ("boxed", "lenient")


def _last(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    m = None
    for m in pattern.finditer(text):
        pass
    return m


def _clean(ans: str) -> str:
    """Strip spacing, enclosing ``$`` and a sentence-final period."""
    ans = ans.strip().strip("$").strip()
    return ans[:-1].rstrip() if ans.endswith(".") else ans


def _number_of(text: str) -> str | None:
    """The last number in `text`, thousands separators removed."""
    m = _last(_NUMBER, text)
    return None if m is None else m.group().replace(",", "")


def gsm8k_number(ans: str) -> str | None:
    """A GSM8K answer as its one number (``\\$18``, ``18 dollars``, ``1,234``, ``1e3``); None when it holds several
    ("12 apples, not 13" is ambiguous, not 13). An answer with LaTeX math (``\\frac{1}{2}``) is kept whole."""
    if _LATEX_MATH.search(ans):
        return ans
    numbers = _NUMBER.findall(ans)
    return numbers[0].replace(",", "") if len(numbers) == 1 else None


def extract_answer(text: str, source: str | None = None, rule: str = "boxed") -> str | None:
    """The final answer in a model output, by `rule` (module docstring).

    `boxed`: the content of the last complete ``\\boxed{}``. `lenient`: that, else ``#### N``, else "the answer is
    X", else the whole text when it is a bare expression (no English words, e.g. ``\\frac12``), else the last number.
    For ``source="gsm8k"`` the result is reduced to its one number (`gsm8k_number`).
    """
    if rule not in RULES:
        raise ValueError(f"unknown grading rule {rule!r} (choose from {', '.join(RULES)})")
    if not isinstance(text, str):
        return None
    ans = extract_boxed(text)
    if rule == "lenient":
        if ans is None or not ans.strip():
            m = _last(_HASHES, text)
            ans = m.group(1) if m else None
        if ans is None or not ans.strip():
            m = _last(_ANSWER_IS, text)
            ans = m.group(1) if m else None
            if ans is not None:
                ans = re.split(r"\.(?:\s|$)", ans, maxsplit=1)[0]  # stop at the end of the sentence
        if ans is None or not ans.strip():
            bare = text.strip()
            if len(bare) <= 200 and not _WORD.search(_LATEX_CMD.sub(" ", bare)):
                ans = bare
        if ans is None or not ans.strip():
            ans = _number_of(text)
    if ans is None:
        return None
    ans = _clean(ans)
    if ans and source is not None and source.lower().startswith("gsm8k"):
        return gsm8k_number(ans)
    return ans or None


def malformed_answer(ans: str) -> str | None:
    """Why a gold answer cannot be graded (None when it can): empty, unbalanced braces, an unclosed box, or a
    ``\\left`` without its ``\\right``. Such a gold would grade equal to the same garbage in a prediction."""
    if not ans.strip():
        return "the answer is empty"
    depth = 0
    for m in re.finditer(r"\\\\|\\[{}]|[{}]", ans):
        if m.group() in ("{", "}"):
            depth += 1 if m.group() == "{" else -1
            if depth < 0:
                return f"unbalanced braces in answer {ans[:40]!r}"
    if depth:
        return f"unbalanced braces in answer {ans[:40]!r}"
    if len(re.findall(r"\\left(?![A-Za-z])", ans)) != len(re.findall(r"\\right(?![A-Za-z])", ans)):
        return f"\\left without a matching \\right in answer {ans[:40]!r}"
    return None


def gold_answer(gold: object) -> str:
    """A gold answer as a string: numbers formatted (27.0 -> "27"), ``\\boxed{}`` or ``#### N`` unwrapped."""
    if isinstance(gold, int):
        return str(gold)
    if isinstance(gold, float):
        return str(int(gold)) if gold.is_integer() else repr(gold)
    text = str(gold)
    boxed = extract_boxed(text)
    if boxed is not None:
        return _clean(boxed)
    m = _last(_HASHES, text)
    if m is not None:
        return m.group(1).strip().replace(",", "")
    return _clean(text)


# ---------------------------------------------------------------------------------------------- equivalence

_NORMALISE = [
    (re.compile(r"\\left\b|\\right\b"), ""),
    (re.compile(r"\\[!,;: ]"), ""),
    (re.compile(r"\{,\}"), ","),
    (re.compile(r"\\[dt]frac"), r"\\frac"),
    (re.compile(r"\^\s*\{?\\circ\}?|°"), ""),
    (re.compile(r"\\?%|\\\$"), ""),
    (re.compile(r"\s+"), ""),
]
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d{1,6})?")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def normalise(ans: str) -> str:
    """Cheap canonical form for the fast exact match: no spacing, ``\\left``/``\\right``, units of degrees/percent."""
    s = _clean(ans)
    for pattern, repl in _NORMALISE:
        s = pattern.sub(repl, s)
    s = s.rstrip(".")
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    return s


def _decimal(s: str) -> Decimal | None:
    if not _PLAIN_NUMBER.fullmatch(s):
        return None
    try:
        return Decimal(s)
    except InvalidOperation:
        return None


def guard(ans: str) -> str | None:
    """Why `ans` must not reach sympy (None when it may): too long, too deeply nested, or an absurd power/factorial.

    Power towers are measured by exponent depth (``a^{b}`` is 1, ``a^{b^{c}}`` is 2); unbraced chains
    (``10^10^10``, ``10**10**10``) count the same way. Linear in the length.
    """
    if len(ans) > MAX_ANSWER_CHARS:
        return f"answer longer than {MAX_ANSWER_CHARS} characters"
    s = ans.replace("**", "^")
    stack: list[int] = []  # exponent depth to restore when each brace group closes
    depth = 0  # exponent depth of the current position
    pending: int | None = None  # exponent depth of the operand that follows a '^'
    tail = 0  # exponent depth of the operand that just ended (for chains like 10^10^10)
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c == "\\":  # a command or an escaped character is one operand token
            j = i + 1
            while j < n and s[j].isalpha():
                j += 1
            i = max(j, i + 2)
            tail, pending = (pending if pending is not None else depth), None
            continue
        if c == "{":
            stack.append(depth)
            if len(stack) > MAX_BRACE_DEPTH:
                return f"braces nested deeper than {MAX_BRACE_DEPTH}"
            if pending is not None:
                depth, pending = pending, None
        elif c == "}":
            tail = depth
            if stack:
                depth = stack.pop()
        elif c == "^":
            level = max(depth, tail) + 1
            if level > MAX_EXPONENT_DEPTH:
                return "power tower too deep"
            pending = level
        elif c.isdigit():
            j = i
            while j < n and s[j].isdigit():
                j += 1
            level = pending if pending is not None else depth
            digits = s[i:j]
            if level >= 1 and len(digits) > MAX_EXPONENT_DIGITS:
                return f"exponent literal {digits[:12]}... too large"
            if level >= 2 and int(digits) > MAX_TOWER_LITERAL:
                return f"power tower with exponent {digits} too large"
            k = j
            while k < n and s[k] == " ":
                k += 1
            if k < n and s[k] == "!" and (len(digits) > 6 or int(digits) > MAX_FACTORIAL):
                return f"factorial of {digits[:12]} too large"
            tail, pending = level, None
            i = j
            continue
        elif c.isalpha():
            tail, pending = (pending if pending is not None else depth), None
        elif not c.isspace():
            tail = depth
        i += 1
    return None


@dataclass(frozen=True)
class Verdict:
    """One graded item. `how`: exact | numeric | symbolic | mismatch | no_answer | rejected | timeout | error."""

    correct: bool
    extracted: str | None
    how: str
    detail: str = ""


def _fast(pred: str, gold: str) -> Verdict | None:
    """Decide without sympy when possible (None: needs the symbolic check)."""
    p, g = normalise(pred), normalise(gold)
    if not p:
        return Verdict(False, pred, "no_answer")
    if p == g:
        return Verdict(True, pred, "exact")
    dp, dg = _decimal(p), _decimal(g)
    if dp is not None and dg is not None:
        return Verdict(dp == dg, pred, "numeric" if dp == dg else "mismatch")
    for ans in (pred, gold):
        why = guard(ans)
        if why is not None:
            return Verdict(False, pred, "rejected", why)
    return None


# ---------------------------------------------------------------------------------------------- worker pool


class _Spawner:
    """Starts the workers from one daemon thread that lives as long as this process.

    A worker dies with its parent (`_die_with_parent`), and Linux sends that death signal when the *thread* that
    started the child ends, not the process. Callers may grade from short-lived threads, so no caller's thread
    may be the one that starts a worker.
    """

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="longshort-grading-spawner", daemon=True).start()

    def _serve(self) -> None:
        while True:
            args, kwargs, box, done = self.jobs.get()
            try:
                box.append(subprocess.Popen(args, **kwargs))
            except BaseException as e:  # handed to the caller, which raises it
                box.append(e)
            done.set()

    def popen(self, args: list[str], **kwargs: object) -> subprocess.Popen:
        box: list = []
        done = threading.Event()
        self.jobs.put((args, kwargs, box, done))
        done.wait()
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]


_SPAWNERS: dict[int, _Spawner] = {}  # by pid: a forked child needs its own thread


def _spawner() -> _Spawner:
    with _POOL_LOCK:
        if os.getpid() not in _SPAWNERS:
            _SPAWNERS[os.getpid()] = _Spawner()
        return _SPAWNERS[os.getpid()]


class _Worker:
    """One grading subprocess (``python -m longshort.grading --worker``) speaking JSON lines over pipes."""

    def __init__(self) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("OMP_NUM_THREADS", "1")
        env[PARENT_ENV] = str(os.getpid())
        # Own session: a Ctrl-C in the terminal reaches the parent only, which decides what to stop.
        self.proc = _spawner().popen(
            [sys.executable, "-m", "longshort.grading", "--worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True,
        )
        self.fd = self.proc.stdout.fileno()
        self.buf = b""
        self.ready = False
        self.item: int | None = None
        self.deadline = time.monotonic() + WORKER_START_TIMEOUT_S

    def send(self, item: int, pred: str, gold: str, timeout: float) -> None:
        self.item, self.deadline = item, time.monotonic() + timeout
        try:
            self.proc.stdin.write((json.dumps([pred, gold, timeout]) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:  # it died; the EOF on its stdout reports the item as an error
            pass

    def lines(self) -> list[bytes] | None:
        """Complete lines read so far (None at EOF: the worker died)."""
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            return None
        self.buf += chunk
        *done, self.buf = self.buf.split(b"\n")
        return done

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


class _Pool:
    """Persistent grading workers; an item that overruns its time limit gets its worker killed and replaced."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.workers: list[_Worker] = []
        self.lock = threading.Lock()

    def run(self, items: list[tuple[int, str, str]], workers: int, timeout: float) -> dict[int, Verdict]:
        with self.lock:
            while len(self.workers) < min(workers, len(items)):
                self.workers.append(_Worker())
            try:
                return self._dispatch(deque(items), timeout)
            except BaseException:  # e.g. Ctrl-C: a busy worker would later answer for an item nobody waits for
                for w in list(self.workers):
                    if w.item is not None:
                        w.kill()
                        self.workers.remove(w)
                raise

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self.workers[self.workers.index(w)] = _Worker()

    def _dispatch(self, todo: deque[tuple[int, str, str]], timeout: float) -> dict[int, Verdict]:
        out: dict[int, Verdict] = {}
        texts = {i: p for i, p, _ in todo}
        need = len(todo)
        while len(out) < need:
            for w in self.workers:
                if w.ready and w.item is None and todo:
                    i, p, g = todo.popleft()
                    w.send(i, p, g, timeout)
            active = [w for w in self.workers if not w.ready or w.item is not None]
            if not active:  # cannot happen while items remain; a guard against a silent busy loop
                raise RuntimeError("grading pool has no active worker")
            wait = max(0.0, min(w.deadline for w in active) - time.monotonic())
            readable, _, _ = select.select([w.fd for w in active], [], [], wait)
            for w in list(active):
                if w.fd in readable:
                    lines = w.lines()
                    if lines is None:  # the worker died (e.g. out of memory): the item is wrong, not the run
                        if w.item is not None:
                            out[w.item] = Verdict(False, texts[w.item], "error", "grading worker died")
                        elif not w.ready:
                            raise RuntimeError("grading worker failed to start (see stderr above)")
                        self._replace(w)
                        continue
                    for line in lines:
                        if line == b"ready":
                            w.ready, w.deadline = True, float("inf")
                        elif w.item is not None:
                            ok, detail = json.loads(line)
                            how = "symbolic" if ok else "timeout" if detail == "timeout" else "error" if detail else "mismatch"
                            out[w.item] = Verdict(bool(ok), texts[w.item], how, detail)
                            w.item, w.deadline = None, float("inf")
                elif time.monotonic() >= w.deadline:
                    if w.item is None:
                        raise RuntimeError(f"grading worker did not start within {WORKER_START_TIMEOUT_S:.0f} s")
                    out[w.item] = Verdict(False, texts[w.item], "timeout", f"over {timeout:g} s")
                    self._replace(w)
        return out

    def close(self) -> None:
        if os.getpid() != self.pid:  # inherited by a fork: the workers belong to the parent
            return
        for w in self.workers:
            w.kill()
        self.workers = []


_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> _Pool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid():
            _POOL = _Pool()
            atexit.register(_POOL.close)
        return _POOL


def _default_workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def compare_many(
    preds: Sequence[str | None], golds: Sequence[str], workers: int | None = None, timeout: float = DEFAULT_TIMEOUT_S
) -> list[Verdict]:
    """Compare extracted answers with gold answers; symbolic checks run in parallel worker processes."""
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions but {len(golds)} gold answers")
    verdicts: list[Verdict | None] = []
    slow: list[tuple[int, str, str]] = []
    for i, (p, g) in enumerate(zip(preds, golds)):
        v = Verdict(False, p, "no_answer") if p is None else _fast(p, g)
        if v is None:
            slow.append((i, p, g))
        verdicts.append(v)
    if slow:
        for i, v in _pool().run(slow, workers or _default_workers(), timeout).items():
            verdicts[i] = v
    return verdicts  # type: ignore[return-value]


def is_equivalent(pred: str, gold: str, timeout: float = DEFAULT_TIMEOUT_S) -> bool:
    """True when two answer strings are mathematically equal (``0.5`` = ``\\frac12``); bounded by `timeout`."""
    return compare_many([pred], [gold], workers=1, timeout=timeout)[0].correct


def grade_verdicts(
    preds: Sequence[str],
    golds: Sequence[object],
    sources: Sequence[str | None] | None = None,
    workers: int | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    rule: str = "boxed",
) -> list[Verdict]:
    """Grade raw model outputs by `rule`: extract each answer, then compare with the gold answer."""
    srcs = sources if sources is not None else [None] * len(preds)
    extracted = [extract_answer(p, s, rule) for p, s in zip(preds, srcs)]
    return compare_many(extracted, [gold_answer(g) for g in golds], workers=workers, timeout=timeout)


def regrade(strict: Sequence[Verdict], answers: Sequence[str | None], golds: Sequence[str],
            workers: int | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> list[Verdict]:
    """Verdicts of other extracted `answers` (the lenient column) where they differ from the strict ones' answers;
    an item whose answer is the same keeps its strict verdict, so nothing is compared twice."""
    todo = [i for i, (v, a) in enumerate(zip(strict, answers)) if a != v.extracted]
    out = list(strict)
    for i, v in zip(todo, compare_many([answers[i] for i in todo], [golds[i] for i in todo], workers, timeout)):
        out[i] = v
    return out


def grade_many(
    preds: Sequence[str],
    golds: Sequence[object],
    sources: Sequence[str | None] | None = None,
    workers: int | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    rule: str = "boxed",
) -> list[bool]:
    """Correctness of each raw model output (timeouts and rejected inputs count as incorrect)."""
    return [v.correct for v in grade_verdicts(preds, golds, sources, workers, timeout, rule)]


# ---------------------------------------------------------------------------------------------- worker side


def _die_with_parent() -> None:
    """End this worker when the process that started it ends, even by SIGKILL (which runs no clean-up there) and
    even in the middle of C-level work: Linux's PR_SET_PDEATHSIG, else a thread that watches the parent pid."""
    parent = int(os.environ.get(PARENT_ENV, os.getppid()))
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        armed = libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        armed = False
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    if not armed:

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()


def _worker_main() -> None:
    """Serve ``[pred, gold, timeout]`` lines with ``[correct, error]`` lines until stdin closes."""
    import logging

    _die_with_parent()

    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):
        pass
    class TimeoutFlag(logging.Handler):
        """math-verify swallows its own timeouts and only logs them; this turns the log line into a verdict."""

        hit = False

        def emit(self, record: logging.LogRecord) -> None:
            self.hit = self.hit or str(record.msg).startswith("Timeout")

    flag = TimeoutFlag()
    mv_log = logging.getLogger("math_verify")
    mv_log.addHandler(flag)
    mv_log.setLevel(logging.WARNING)
    mv_log.propagate = False
    # The protocol owns the real stdout; anything a library prints goes to stderr instead of corrupting it.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    from math_verify import parse, verify

    out.write(b"ready\n")
    out.flush()
    for line in sys.stdin.buffer:
        pred, gold, timeout = json.loads(line)
        soft = max(1, int(timeout) // 2)  # math-verify's own alarm interrupts Python-level work early
        flag.hit = False
        try:
            g = parse("\\boxed{" + gold + "}", parsing_timeout=soft)
            p = parse("\\boxed{" + pred + "}", parsing_timeout=soft)
            ok = bool(g and p and verify(g, p, timeout_seconds=soft))
            result = [ok, "timeout" if flag.hit and not ok else ""]
        except (Exception, MemoryError, RecursionError) as e:  # sympy internals: the item is wrong, not the run
            result = [False, type(e).__name__]
        out.write((json.dumps(result) + "\n").encode())
        out.flush()


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _worker_main()
