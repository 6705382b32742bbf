"""What an RL step logs and the run's summary.md. The episodes' metrics carry the names and meanings eval's summary
uses (longshort/metrics.py: `tokens_per_problem`, `rethink_rate` = rethinks per short turn, ...); beside them each
role's rewards, advantages and share of the step, the learner's statistics, the sync check and the phase times."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longshort.io import append_jsonl, atomic_write_text
from longshort.metrics import episode_metrics
from longshort.rl.learner import LearnerStats
from longshort.rl.rewards import COMPONENTS
from longshort.run.logs import MetricsLog, truncate
from longshort.types import ROLES, Episode


def episode_row(episodes: list[Episode]) -> dict[str, Any]:
    m: dict[str, Any] = episode_metrics(episodes)
    for k in ("latency_s", "latency_p90_s"):  # wall times go with the step's other times, under time/
        m[f"time/episode_{k}"] = m.pop(k)
    solved = [ep for ep in episodes if ep.correct]
    m["tokens_per_solved"] = sum(ep.generated_tokens for ep in solved) / len(solved) if solved else None  # null: none solved
    for role in ROLES:
        eps = [ep for ep in episodes if role in ep.rewards]
        if not eps:
            continue
        k = len(eps)
        turns = [t for ep in eps for t in ep.turns if t.role == role]
        m[f"{role}/reward"] = sum(ep.rewards[role]["total"] for ep in eps) / k
        for c in COMPONENTS:
            m[f"{role}/reward/{c}"] = sum(ep.rewards[role][c] for ep in eps) / k
        m[f"{role}/accuracy"] = sum(1 for ep in eps if ep.correct) / k
        m[f"{role}/advantage_abs"] = sum(abs(ep.advantages.get(role, 0.0)) for ep in eps) / k
        m[f"{role}/tokens_per_problem"] = sum(ep.tokens_by_role().get(role, 0) for ep in eps) / k
        m[f"{role}/turns"] = len(turns) / k
        m[f"{role}/format_failure_rate"] = sum(1 for t in turns if not t.format_ok) / len(turns) if turns else 0.0
    return m


def learner_row(stats: dict[str, LearnerStats]) -> dict[str, Any]:
    return {k: v for role, s in stats.items() for k, v in s.metrics(role).items()}


def sync_row(diffs: dict[str, float], sent: int, ok: bool) -> dict[str, Any]:
    return {**{f"sync/{r}_max_diff": d for r, d in diffs.items()}, "sync/ok": ok,
            "sync/max_abs_diff": max(diffs.values(), default=0.0), "sync/bytes": sent}


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    last = summary["last"]
    lines = [f"# RL run {run_dir.name}", "", f"steps: {summary['steps']} (resumed from step {summary['resumed_from']})", ""]
    place = summary["placement"]
    nodes = {n for ids in place.values() for n in ids}
    lines += [f"Ray nodes used: {len(nodes)} (" + "; ".join(f"{k}: {', '.join(v)}" for k, v in place.items()) + ")", ""]
    p = summary["precision"]
    lines += [f"Precision: learner {p['learner']['resolved']} on {p['learner']['device']}, engine {p['engine']['resolved']} on "
              f"{p['engine']['device']}, sync tolerance {p['sync_tolerance']:g} (precision.json)", ""]
    keys = ["accuracy", "tokens_per_problem", "tokens_per_solved", "rethink_rate", "long/reward", "short/reward", "long/kl",
            "short/kl", "time/step"]
    lines += ["| metric | last step |", "|---|---|"] + [f"| {k} | {'-' if last[k] is None else format(last[k], '.4g')} |"
                                                         for k in keys if k in last]
    atomic_write_text(run_dir / "summary.md", "\n".join(lines) + "\n")


class StepLog:
    """Where a step is recorded: its row in metrics.jsonl (and TensorBoard, W&B, MLflow as run.report_to asks), its
    first rl.log_episodes episodes in episodes.jsonl once the step is synced, and the progress bar. Both files are
    cut back to the step resumed from (0 included), so no step is logged twice."""

    def __init__(self, run_dir: Path, start_step: int, recipe: Any, progress: bool) -> None:
        from tqdm import tqdm

        self.metrics = MetricsLog(run_dir, start_step, recipe.run.report_to)
        self.episodes_path, self.keep = run_dir / "episodes.jsonl", recipe.rl.log_episodes
        truncate(self.episodes_path, start_step, step_of=lambda ep: ep.get("meta", {}).get("step"))
        self.bar = tqdm(total=recipe.rl.steps, initial=start_step, desc="rl", disable=not progress, dynamic_ncols=True)
        self.last: dict[str, Any] = {}

    def row(self, row: dict[str, Any]) -> None:
        self.metrics.log(row)
        self.last = row

    def synced(self, episodes: list[Episode]) -> None:
        for ep in episodes[: self.keep]:
            append_jsonl(self.episodes_path, ep.to_dict())
        self.bar.update(1)
        self.bar.set_postfix(acc=f"{self.last['accuracy']:.2f}", tok=f"{self.last['tokens_per_problem']:.0f}", sync="ok")

    def close(self) -> None:
        self.bar.close()
        self.metrics.close()
