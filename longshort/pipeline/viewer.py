"""A static trajectory viewer: sample episodes turn by turn, coloured by role, with rewards and advantages.

One self-contained HTML file (no scripts, no network): RL episodes from the first and last logged steps, and
held-out evaluation episodes of every system.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from longshort.io import atomic_write_text, read_jsonl
from longshort.pipeline.plan import Plan

PER_GROUP = 4  # episodes shown per section
COLOURS = {"long": "#dbe8f6", "short": "#fbe3cf", "base": "#e6e6e6"}
STYLE = """body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;color:#222}
.ep{border:1px solid #bbb;border-radius:6px;margin:1em 0;padding:.6em}
.turn{border-radius:4px;margin:.4em 0;padding:.4em;white-space:pre-wrap;font-family:monospace;font-size:.85em}
.meta{font-size:.85em;color:#555}.ok{color:#171}.bad{color:#a11}
.tag{font-weight:bold;font-family:system-ui,sans-serif;font-size:.8em}"""


def _episodes(path: Path, limit: int, pick: Any = None) -> list[dict[str, Any]]:
    rows = [r for _, r in read_jsonl(path, on_error="skip")] if path.is_file() else []
    if pick:
        rows = pick(rows)
    return rows[:limit]


def render_episode(ep: dict[str, Any]) -> str:
    verdict = '<span class="ok">correct</span>' if ep.get("correct") else '<span class="bad">wrong</span>'
    meta = ep.get("meta", {})
    head = (f'<div class="meta"><b>{html.escape(str(ep.get("problem_id")))}</b> — gold {html.escape(str(ep.get("gold")))}, '
            f'answer {html.escape(str(ep.get("answer")))}: {verdict}'
            + (f", step {meta['step']}" if "step" in meta else "") + "</div>")
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
    return f'<div class="ep">{head}{"".join(body)}</div>'


def write_viewer(plan: Plan, path: Path) -> int:
    """Write the viewer; return the number of episodes shown."""
    sections: list[tuple[str, list[dict[str, Any]]]] = []
    rl_eps = plan.stages["rl"].dir / "episodes.jsonl"

    def first_step(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rows if r.get("meta", {}).get("step") == rows[0].get("meta", {}).get("step")] if rows else []

    def last_step(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rows if r.get("meta", {}).get("step") == rows[-1].get("meta", {}).get("step")] if rows else []

    sections.append(("RL, first logged step", _episodes(rl_eps, PER_GROUP, first_step)))
    sections.append(("RL, last logged step", _episodes(rl_eps, PER_GROUP, last_step)))
    eval_dir = plan.stages["eval"].dir
    for system_dir in sorted(p for p in eval_dir.iterdir() if p.is_dir()) if eval_dir.is_dir() else []:
        for f in sorted(system_dir.glob("synthetic/*/synthetic.jsonl")):
            sections.append((f"Held-out split: {system_dir.name}", _episodes(f, PER_GROUP)))
    parts = [f"<!doctype html><meta charset=utf-8><title>longshort episodes</title><style>{STYLE}</style>",
             f"<h1>Episodes — {html.escape(str(plan.run_dir))}</h1>",
             '<p class="meta">Turns coloured by role: <span style="background:#dbe8f6">long</span> '
             '<span style="background:#fbe3cf">short</span> <span style="background:#e6e6e6">base (single model)</span>.</p>']
    shown = 0
    for title, eps in sections:
        if not eps:
            continue
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts += [render_episode(e) for e in eps]
        shown += len(eps)
    atomic_write_text(path, "\n".join(parts) + "\n")
    return shown
