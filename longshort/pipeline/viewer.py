"""A static trajectory viewer: sample episodes turn by turn, coloured by role, with rewards and advantages.

One self-contained HTML file (no scripts, no network): RL episodes from the first and last logged steps, every
system's answer to the same held-out problems side by side, and those episodes of every system turn by turn.
Each episode shown has its own anchor and its place in its group ("sample 2 of 4"), counted from the file:
`meta.sample` restarts with every batch, so two samples of one group (a problem drawn twice in a step) can carry
the same one.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from longshort.io import atomic_write_text, read_jsonl
from longshort.pipeline.plan import Plan

PER_GROUP = 4  # episodes shown per section, and held-out problems compared side by side
COLOURS = {"long": "#dbe8f6", "short": "#fbe3cf", "base": "#e6e6e6"}
STYLE = """body{font-family:system-ui,sans-serif;max-width:72em;margin:2em auto;color:#222}
.ep{border:1px solid #bbb;border-radius:6px;margin:1em 0;padding:.6em}
.turn{border-radius:4px;margin:.4em 0;padding:.4em;white-space:pre-wrap;font-family:monospace;font-size:.85em}
.meta{font-size:.85em;color:#555}.ok{color:#171}.bad{color:#a11}
.tag{font-weight:bold;font-family:system-ui,sans-serif;font-size:.8em}
table.side{border-collapse:collapse;font-size:.85em;width:100%}
table.side td,table.side th{border:1px solid #ccc;padding:.3em;vertical-align:top;text-align:left}
table.side td.problem{max-width:22em;white-space:pre-wrap}"""


def _rows(path: Path) -> list[dict[str, Any]]:
    return [r for _, r in read_jsonl(path, on_error="skip")] if path.is_file() else []


def indexed(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
    """Each episode with its place in its group (`meta.group`, else its problem id), in file order."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(str(r.get("meta", {}).get("group", r.get("problem_id"))), []).append(i)
    place = {i: (k, len(members)) for members in groups.values() for k, i in enumerate(members)}
    return [(r, f"sample {place[i][0] + 1} of {place[i][1]}") for i, r in enumerate(rows)]


def _verdict(ep: dict[str, Any]) -> str:
    return '<span class="ok">correct</span>' if ep.get("correct") else '<span class="bad">wrong</span>'


def _tokens(ep: dict[str, Any]) -> int:
    return sum(len(t.get("completion_ids", [])) for t in ep.get("turns", []))


def render_episode(ep: dict[str, Any], place: str = "", anchor: str = "") -> str:
    meta = ep.get("meta", {})
    head = (f'<div class="meta"><b>{html.escape(str(ep.get("problem_id")))}</b>'
            + (f" · {html.escape(place)}" if place else "")
            + (f" · group {html.escape(str(meta['group']))}" if "group" in meta else "")
            + f' — gold {html.escape(str(ep.get("gold")))}, answer {html.escape(str(ep.get("answer")))}: {_verdict(ep)}'
            + f", {_tokens(ep)} tokens" + (f", step {meta['step']}" if "step" in meta else "") + "</div>")
    rewards = ep.get("rewards") or {}
    advantages = ep.get("advantages") or {}
    if rewards:
        head += '<div class="meta">' + "; ".join(
            f"{role}: reward {r.get('total', 0):.3f} (" + ", ".join(f"{k} {v:.2f}" for k, v in r.items() if k != "total")
            + f"), advantage {advantages.get(role, 0):+.3f}" for role, r in rewards.items()) + "</div>"
    body = [f'<div class="turn" style="background:#fff;border:1px dashed #ccc">{html.escape(ep.get("problem", ""))}</div>']
    for t in ep.get("turns", []):
        role = t.get("role", "base")
        tag = f'{role} · {t.get("kind", "turn")} · {len(t.get("completion_ids", []))} tokens' + ("" if t.get("format_ok", True) else " · format error")
        body.append(f'<div class="turn" style="background:{COLOURS.get(role, "#eee")}"><span class="tag">{html.escape(tag)}</span>\n'
                    f'{html.escape(t.get("text", ""))}</div>')
    ident = f' id="{html.escape(anchor)}"' if anchor else ""
    return f'<div class="ep"{ident}>{head}{"".join(body)}</div>'


def _key(ep: dict[str, Any]) -> tuple[str, int]:
    return (str(ep.get("problem_id")), int(ep.get("meta", {}).get("sample", 0)))


def side_by_side(systems: dict[str, list[dict[str, Any]]], keys: list[tuple[str, int]]) -> str:
    """A table: one row per (problem, sample), one column per system, each cell that system's answer, verdict
    and tokens, linked to its episode below."""
    by_key = {name: {_key(e): e for e in eps} for name, eps in systems.items()}
    head = "<tr><th>problem</th><th>gold</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in systems) + "</tr>"
    rows = []
    for k, key in enumerate(keys):
        first = next(m[key] for m in by_key.values() if key in m)
        cells = []
        for name in systems:
            ep = by_key[name].get(key)
            cells.append("<td>—</td>" if ep is None else
                         f'<td><a href="#eval-{html.escape(name)}-{k}">{html.escape(str(ep.get("answer") or "no answer"))}</a> '
                         f"{_verdict(ep)}, {_tokens(ep)} tokens</td>")
        label = html.escape(key[0]) + (f" · sample {key[1] + 1}" if any(s for _, s in keys) else "")
        rows.append(f'<tr><td class="problem"><b>{label}</b>\n{html.escape(first.get("problem", ""))}</td>'
                    f'<td>{html.escape(str(first.get("gold")))}</td>{"".join(cells)}</tr>')
    return f'<table class="side">{head}{"".join(rows)}</table>'


def write_viewer(plan: Plan, path: Path) -> int:
    """Write the viewer; return the number of episodes shown."""
    parts = [f"<!doctype html><meta charset=utf-8><title>longshort episodes</title><style>{STYLE}</style>",
             f"<h1>Episodes — {html.escape(str(plan.run_dir))}</h1>",
             '<p class="meta">Turns coloured by role: <span style="background:#dbe8f6">long</span> '
             '<span style="background:#fbe3cf">short</span> <span style="background:#e6e6e6">base (single model)</span>.</p>']
    shown = 0
    rl = _rows(plan.stages["rl"].dir / "episodes.jsonl")
    for title, slug, step in (("RL, first logged step", "rl-first", rl[0] if rl else None),
                              ("RL, last logged step", "rl-last", rl[-1] if rl else None)):
        if step is None:
            continue
        mine = indexed([r for r in rl if r.get("meta", {}).get("step") == step.get("meta", {}).get("step")])[:PER_GROUP]
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts += [render_episode(e, place, f"{slug}-{k}") for k, (e, place) in enumerate(mine)]
        shown += len(mine)
    eval_dir = plan.stages["eval"].dir
    systems = {d.name: [r for f in sorted(d.glob("synthetic/*/synthetic.jsonl")) for r in _rows(f)]
               for d in (sorted(p for p in eval_dir.iterdir() if p.is_dir()) if eval_dir.is_dir() else [])}
    systems = {name: eps for name, eps in systems.items() if eps}
    if systems:
        # the same problems for every system: long CoT's first ones (the baseline), else the first system's
        ref = systems.get("long_cot") or next(iter(systems.values()))
        keys = list(dict.fromkeys(_key(e) for e in ref))[:PER_GROUP]
        parts += ["<h2>Held-out split: every system on the same problems</h2>", side_by_side(systems, keys)]
        for name, eps in systems.items():
            by_key = {_key(e): e for e in eps}
            mine = [(k, by_key[key]) for k, key in enumerate(keys) if key in by_key]
            parts.append(f"<h2>Held-out split: {html.escape(name)}</h2>")
            many = any(s for _, s in keys)  # K > 1 samples per problem: say which one each episode is
            parts += [render_episode(e, f"sample {keys[k][1] + 1}" if many else "", f"eval-{name}-{k}") for k, e in mine]
            shown += len(mine)
    atomic_write_text(path, "\n".join(parts) + "\n")
    return shown
