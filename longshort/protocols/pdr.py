"""`pdr`: Parallel-Distill-Refine (Madaan et al. 2510.01123).

Round r makes M_r = `pdr_schedule[r]` parallel draft calls, each seeing the problem and a workspace;
between rounds a distill step rebuilds the workspace from that round's drafts only, bounded by
κ = `pdr_kappa` tokens. The last round is one call whose output is the answer.

A draft is read by what it shows (`pdr_workspace_from: visible`, the default): the text after its `</think>`,
else its conclusion (last sentences) and boxed answer (`prompts.visible_part`); `full` reads the whole draft.
Judges, summaries and workspaces all read that part. Distill modes:

- `shared_topk`: one self-judging call per episode picks the k best drafts; everyone reads the same k.
- `per_sample_topk`: each next-round call gets its own judging call, which sees the drafts in its own
  random order (so greedy judges still differ) and picks that call's k drafts.
- `random_k`: each next-round call reads its own k drafts drawn at random (no LLM call; RSA, 2509.26626).
- `summary` (old name `global_summary`): one LLM call per episode summarises all drafts (max κ tokens).
- `oracle_correct` / `oracle_incorrect` (evaluation only): everyone reads the first k drafts graded right /
  wrong against the gold answer; with none, the next round reads the problem alone (`meta.oracle_empty`).

A workspace of chosen drafts lists them (best first) with each cut to its END (conclusion and answer) so the
whole is ≤ κ tokens; a summary is cut to its end too. Judge and summary prompts show every draft, cut to their
ends so the prompt fits the engine context.

Budgets (docs/budgets.md): every call is a fresh context, and each round and each distill step is one
protocol step (`Turn.step`). B_seq counts the critical path: per step, its longest generation (whichever
draft that is); B_total every call's generated tokens. The accepted path (`Turn.accepted`, the answer's
lineage) runs back from the final call: its workspace's distill call (if any), then the first draft that
workspace drew on (the judge's top pick; by convention the first draft for a summary), that draft's own
workspace, and so on to round 0.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from longshort.chat import encode
from longshort.config.core import ProtocolConfig
from longshort.errors import ConfigError, UserError
from longshort.grading import compare_many, extract_answer, extract_boxed
from longshort.protocols import prompts
from longshort.protocols.calls import Call, Setup, execute, prompt_limit, seed_for, solution_ok, solver_call
from longshort.types import Episode

ORACLE = {"oracle_correct": True, "oracle_incorrect": False}  # evaluation-only modes: the verdict that qualifies


@dataclass
class _Workspace:
    """What one draft call reads, and where it came from (for the accepted path)."""

    text: str | None = None  # None: the problem alone (round 0, or an oracle round where no draft qualified)
    distill: int | None = None  # turn index of the distill/judge call that built it
    drafts: list[int] = field(default_factory=list)  # draft turns it drew on; [0] is on the accepted path


def shown(protocol: ProtocolConfig, text: str) -> str:
    """What of a draft the distill step and the next round read (`protocol.pdr_workspace_from`)."""
    return prompts.visible_part(text) if protocol.pdr_workspace_from == "visible" else text


def workspace(tokenizer: object, pieces: list[str], kappa: int) -> str:
    """The chosen drafts' parts as numbered attempts, best first, each cut to its end so the whole is ≤ κ tokens."""
    return prompts.fit(tokenizer, lambda cut: prompts.numbered(cut, "Attempt"), pieces, kappa)


def _drafts_block(setup: Setup, problem: str, template: str, texts: list[str], cap: int, **extra: object) -> str:
    def build(pieces: list[str]) -> str:
        return template.format(problem=problem, n=len(pieces), drafts=prompts.numbered(pieces), **extra)

    return prompts.fit(setup.tokenizer, build, texts, prompt_limit(setup, cap))


def _select(text: str, order: list[int], k: int) -> tuple[list[int], bool]:
    """Positions (into the round's drafts) the judge picked, best first, padded to k in shown order.

    `order[j]` is the draft shown as candidate j+1. Returns (chosen, parsed_ok)."""
    boxed = extract_boxed(text) or ""
    chosen: list[int] = []
    for num in re.findall(r"\d+", boxed):
        j = int(num) - 1
        if 0 <= j < len(order) and order[j] not in chosen:
            chosen.append(order[j])
    want = min(k, len(order))
    ok = len(chosen) >= want
    chosen = chosen[:want]
    for pos in order:
        if len(chosen) >= want:
            break
        if pos not in chosen:
            chosen.append(pos)
    return chosen, ok


def _oracle(setup: Setup, live: list[Episode], drafts: dict[int, list[int]], r: int, m_next: int) -> dict[int, list[_Workspace]]:
    """Evaluation only: one shared workspace per episode of its first k drafts graded right (`oracle_correct`) or
    wrong (`oracle_incorrect`) against the gold answer, by the protocol's own answer rule; all graded in one batch."""
    p = setup.protocol
    want = ORACLE[p.pdr_distill]
    items = [(ep, i) for ep in live for i in drafts[id(ep)]]
    verdicts = compare_many([extract_answer(ep.turns[i].text, ep.meta.get("source")) for ep, i in items], [ep.gold for ep, _ in items])
    right = {(id(ep), i): v.correct for (ep, i), v in zip(items, verdicts)}
    out: dict[int, list[_Workspace]] = {}
    for ep in live:
        pick = [i for i in drafts[id(ep)] if right[(id(ep), i)] == want][: p.pdr_k]
        ep.meta.setdefault("selected", []).append({"round": r, "slot": -1, "drafts": pick})
        if pick:
            ws = _Workspace(workspace(setup.tokenizer, [shown(p, ep.turns[i].text) for i in pick], p.pdr_kappa), None, pick)
        else:  # nothing qualifies: the next round starts afresh from the problem, never from drafts of the other kind
            ep.meta.setdefault("oracle_empty", []).append(r)
            ws = _Workspace()
        out[id(ep)] = [ws] * m_next
    return out


def distill(setup: Setup, live: list[Episode], drafts: dict[int, list[int]], r: int, m_next: int) -> dict[int, list[_Workspace]]:
    """Build each live episode's `m_next` workspaces from its round-r drafts (one batched call, if any).

    Records each choice of drafts in `meta.selected` ({round, slot, drafts}; slot -1: shared by every call)."""
    p = setup.protocol
    mode, kappa, k = p.pdr_distill, p.pdr_kappa, p.pdr_k
    if mode in ORACLE:
        return _oracle(setup, live, drafts, r, m_next)
    out: dict[int, list[_Workspace]] = {}
    calls: list[tuple[Call, list[int], int]] = []  # (call, shown order, which next-round slot; -1 = all)
    for ep in live:
        ds = drafts[id(ep)]
        texts = [shown(p, ep.turns[i].text) for i in ds]
        sample = ep.meta.get("sample", 0)
        if mode == "random_k":  # RSA: a fresh subset per next-round call, seeded by the episode's own seed
            out[id(ep)] = []
            for slot in range(m_next):
                rng = random.Random(seed_for(setup.seed, ep.problem_id, sample, r, "random_k", slot))
                pick = rng.sample(range(len(ds)), min(k, len(ds)))
                out[id(ep)].append(_Workspace(workspace(setup.tokenizer, [texts[j] for j in pick], kappa), None, [ds[j] for j in pick]))
                ep.meta.setdefault("selected", []).append({"round": r, "slot": slot, "drafts": [ds[j] for j in pick]})
            continue
        if mode == "summary":
            user = _drafts_block(setup, ep.problem, prompts.SUMMARY, texts, kappa)
            call = solver_call(setup, ep, user, "distill", seed_for(setup.seed, ep.problem_id, sample, r, "summary"), cap=kappa)
            jobs = [(call, list(range(len(ds))), -1)]
        else:
            slots = [-1] if mode == "shared_topk" else list(range(m_next))
            jobs = []
            for slot in slots:
                order = list(range(len(ds)))
                if slot >= 0:  # per-sample: each judge sees its own order
                    random.Random(seed_for(setup.seed, ep.problem_id, sample, r, "order", slot)).shuffle(order)
                user = _drafts_block(setup, ep.problem, prompts.JUDGE, [texts[j] for j in order], p.max_tokens, k=min(k, len(ds)))
                call = solver_call(setup, ep, user, "judge", seed_for(setup.seed, ep.problem_id, sample, r, "judge", slot))
                jobs.append((call, order, slot))
        if any(c is None for c, _, _ in jobs):
            ep.meta["end"] = "context_full"
            continue
        calls += jobs
    execute(setup, [c for c, _, _ in calls])
    for call, order, slot in calls:
        ep = call.episode
        ds = drafts[id(ep)]
        index = call.turns[0]
        turn = ep.turns[index]
        if mode == "summary":
            turn.format_ok = bool(turn.text.strip())
            # capped at κ generated tokens, but its text can re-encode longer: cut to κ (marker included), keeping
            # the summary's end, where its conclusion is
            ws = _Workspace(prompts.fit(setup.tokenizer, lambda cut: cut[0], [turn.text], kappa), index, list(ds))
        else:
            chosen, parsed = _select(turn.text, order, k)
            turn.format_ok = parsed and turn.finish_reason != "length"
            picked = [ds[j] for j in chosen]
            ws = _Workspace(workspace(setup.tokenizer, [shown(p, ep.turns[i].text) for i in picked], kappa), index, picked)
            ep.meta.setdefault("selected", []).append({"round": r, "slot": slot, "drafts": picked})
        out.setdefault(id(ep), []).append(ws)
    for ep in live:  # shared workspaces serve every next-round call
        if id(ep) in out and len(out[id(ep)]) == 1 and m_next > 1:
            out[id(ep)] = out[id(ep)] * m_next
    return out


def check_sampling(protocol: ProtocolConfig) -> None:
    """Refuse greedy parallel drafts: with more than one draft per round at temperature 0 they would all be the
    same text. Run by `run` and, before any stage, by the pipeline's plan for a recipe that evaluates `pdr`."""
    schedule = list(protocol.pdr_schedule)
    if protocol.temperature_of("pdr") == 0 and max(schedule) > 1:
        key = protocol.temperature_key("pdr")
        unset = " (protocol.pdr_temperature is null)" if key == "temperature" else ""
        raise ConfigError(f"key 'protocol.{key}' is 0 (greedy){unset}: the {max(schedule)} parallel drafts of "
                          f"protocol.pdr_schedule {schedule} would all be the same text; set protocol.pdr_temperature > 0")


def run(setup: Setup, episodes: list[Episode]) -> None:
    p = setup.protocol
    tok = setup.tokenizer
    schedule = list(p.pdr_schedule)
    check_sampling(p)
    if p.pdr_distill in ORACLE:
        missing = next((ep.problem_id for ep in episodes if not ep.gold), None)
        if missing is not None:
            raise UserError(f"key 'protocol.pdr_distill' is {p.pdr_distill}: it grades drafts against the gold answer, "
                            f"and problem {missing!r} has none")
    origin: dict[tuple[int, int], _Workspace] = {}  # (id(episode), draft turn) -> the workspace it read
    workspaces = {id(ep): [_Workspace()] * schedule[0] for ep in episodes}
    live = list(episodes)
    drafts: dict[int, list[int]] = {}
    for ep in episodes:
        ep.meta.update(end="final", schedule=schedule, distill=p.pdr_distill, rounds=[], workspace_tokens=[])
    for r, m in enumerate(schedule):
        pending: list[tuple[Call, list[_Workspace]]] = []
        for ep in live:
            wss = workspaces[id(ep)]
            sample = ep.meta.get("sample", 0)
            if all(ws is wss[0] for ws in wss):  # one shared prompt: one request, n = M_r samples
                groups = [(wss[0], m)]
            else:
                groups = [(ws, 1) for ws in wss]
            jobs = []
            for slot, (ws, n) in enumerate(groups):
                user = ep.problem if ws.text is None else prompts.PDR_DRAFT.format(problem=ep.problem, workspace=ws.text)
                jobs.append((solver_call(setup, ep, user, "draft", seed_for(setup.seed, ep.problem_id, sample, r, "draft", slot), n=n), [ws] * n))
            if any(c is None for c, _ in jobs):
                ep.meta["end"] = "context_full"
                continue
            pending += jobs
        execute(setup, [c for c, _ in pending])
        drafts = {}
        for call, wss in pending:
            ep = call.episode
            for index, ws in zip(call.turns, wss):
                ep.turns[index].format_ok = solution_ok(ep.turns[index])
                origin[(id(ep), index)] = ws
                drafts.setdefault(id(ep), []).append(index)
        live = [ep for ep in live if id(ep) in drafts]
        for ep in live:
            ep.meta["rounds"].append(drafts[id(ep)])
        if r + 1 < len(schedule):
            workspaces = distill(setup, live, drafts, r, schedule[r + 1])
            live = [ep for ep in live if id(ep) in workspaces]
            for ep in live:  # what each next-round call read on top of the problem (≤ κ; 0: the problem alone)
                ep.meta["workspace_tokens"].append([len(encode(tok, ws.text)) if ws.text else 0 for ws in workspaces[id(ep)]])
    finished = {id(ep) for ep in live}
    for ep in episodes:
        for t in ep.turns:
            t.accepted = False
        if id(ep) in finished:
            final = drafts[id(ep)][0]
            ep.answer = extract_answer(ep.turns[final].text, ep.meta.get("source"))
            ep.meta["answer_turn"] = final
            _accept_path(ep, final, origin)


def _accept_path(ep: Episode, final: int, origin: dict[tuple[int, int], _Workspace]) -> None:
    """Mark the sequential path back from the final call: workspace distill call, first source draft, ..."""
    index: int | None = final
    while index is not None:
        ep.turns[index].accepted = True
        ws = origin[(id(ep), index)]
        if ws.distill is not None:
            ep.turns[ws.distill].accepted = True
        index = ws.drafts[0] if ws.drafts else None
