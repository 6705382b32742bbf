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

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Sequence

from longshort.grading_workers import run_symbolic

# Limits on what reaches sympy. Real benchmark golds are < 100 characters (MATH500's longest is 53).
MAX_ANSWER_CHARS = 1000
MAX_BRACE_DEPTH = 20
MAX_EXPONENT_DEPTH = 2  # a^{b^{c}} is allowed, a^{b^{c^{d}}} is not
MAX_EXPONENT_DIGITS = 6  # an integer literal inside an exponent may have at most this many digits
MAX_TOWER_LITERAL = 9  # ... and inside an exponent of an exponent it may be at most this value
MAX_FACTORIAL = 10_000
DEFAULT_TIMEOUT_S = 4.0

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
        for i, (ok, how, detail) in run_symbolic(slow, workers, timeout).items():
            verdicts[i] = Verdict(ok, preds[i], how, detail)
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
