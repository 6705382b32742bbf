"""SFT examples from transcripts: one role's chat view as (input_ids, loss mask), split, batched, packed.

A transcript row is `{"id", "problem", "gold", "turns": [{"role": "long"|"short", "text"}, ...]}` (optionally
`"target_role"`); a plain long-CoT trace `{"id", "problem", "answer"|"gold", "response"}` is a one-turn transcript
whose turn belongs to the trained role, and so is a TRL-style `messages` row (its user message the problem, its
last assistant message the response). Rows come from `longshort.data.rows` (JSONL, Parquet or a `datasets`
folder, with the `data.fields` mapping); a row without an id gets `<file stem>-<line or row>`. The view is rendered by `longshort.chat.tokenize_view`, so the training
sequence is exactly what the engine sees when the role generates, and its mask is RL's: 1 on exactly the tokens
the role generates (its turns' text, and the end-of-turn token only where no stop string ended the turn; docs/sft.md).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from longshort.chat import tokenize_view
from longshort.data.rows import read_rows
from longshort.io import Rejects, validated
from longshort.types import ROLES


@dataclass
class Example:
    id: str
    input_ids: list[int]
    mask: list[int]  # 1 = the trained role's own token (loss on it), 0 = context

    @property
    def trainable(self) -> int:
        return sum(self.mask[1:])  # the first token has no prediction


@dataclass
class Dataset:
    train: list[Example]
    eval: list[Example]
    counts: Counter = field(default_factory=Counter)  # rows read, used, skipped (by reason), truncated
    rejects: Rejects = field(default_factory=Rejects)


def parse_row(row: dict[str, Any], where: str, role: str) -> tuple[str, str, list[tuple[str, str]]] | str:
    """(id, problem, turns) of one row, or the reason it has nothing for `role` (a str). Raises ValueError if malformed."""
    for key in ("id", "problem"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise ValueError(f"field '{key}' must be a non-empty string")
    if "turns" in row:
        turns = row["turns"]
        if not isinstance(turns, list) or not turns:
            raise ValueError("field 'turns' must be a non-empty list")
        out = []
        for i, t in enumerate(turns):
            if not isinstance(t, dict) or t.get("role") not in ROLES or not isinstance(t.get("text"), str):
                raise ValueError(f"turns[{i}] must be {{'role': 'long'|'short', 'text': str}}")
            if not t["text"].strip():
                raise ValueError(f"turns[{i}].text is empty")
            out.append((t["role"], t["text"]))
        target = row.get("target_role")
        if target is not None and target not in ROLES:
            raise ValueError(f"field 'target_role' must be 'long' or 'short', got {target!r}")
        if target is not None and target != role:
            return "other_target_role"
        if not any(r == role for r, _ in out):
            return "no_own_turns"
        return row["id"], row["problem"], out
    if "response" in row:
        if not isinstance(row["response"], str) or not row["response"].strip():
            raise ValueError("field 'response' must be a non-empty string")
        return row["id"], row["problem"], [(role, row["response"])]
    raise ValueError("row has neither 'turns' (transcript) nor 'response' (long-CoT trace)")


def load_examples(
    path: str | Path,
    tokenizer: Any,
    role: str,
    system_prompt: str,
    max_length: int,
    on_error: Literal["raise", "skip"] = "raise",
    fields: Any = None,
    split: str | None = None,
    stop: Sequence[str] = (),
) -> tuple[list[Example], Counter, Rejects]:
    """Read a transcripts file (JSONL, Parquet or a `datasets` folder; `fields` maps your columns to ours) into
    `role`'s examples. Malformed rows raise DataError(file:line or file:row N) or go to rejects. `stop` = the role's
    stop strings (`roles.<role>.stop`): a turn ending in one was stopped there, so its end-of-turn token is context."""
    rejects = Rejects()
    counts: Counter = Counter()
    examples: list[Example] = []
    found = read_rows(path, fields=fields, split=split, on_error=on_error, rejects=rejects)

    def records():
        for n, row in found:
            counts["rows"] += 1
            if "id" not in row or isinstance(row["id"], int) and not isinstance(row["id"], bool):
                row = {**row, "id": str(row.get("id", f"{found.name}-{n}"))}
            yield found.where(n), (found.where(n), row)

    rows = validated(records(), lambda r: parse_row(r[1], r[0], role), on_error, rejects,
                     key=lambda parsed: None if isinstance(parsed, str) else parsed[0])
    for _, parsed in rows:
        if isinstance(parsed, str):  # well-formed, but nothing for this role: counted, not an error
            counts[f"skipped_{parsed}"] += 1
            continue
        rid, problem, turns = parsed
        ids, mask = tokenize_view(tokenizer, system_prompt, problem, turns, viewer=role, stop=stop)
        if len(ids) > max_length:
            counts["truncated"] += 1
            ids, mask = ids[:max_length], mask[:max_length]
        ex = Example(rid, ids, mask)
        if ex.trainable == 0:
            counts["skipped_no_trainable_tokens_within_max_length"] += 1
            continue
        examples.append(ex)
    counts["rejected"] = len(rejects)
    counts["examples"] = len(examples)
    return examples, counts, rejects


def split(examples: list[Example], eval_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Deterministic train/eval split from the seed (at least one train example; eval empty if fraction is 0)."""
    if not examples:
        return [], []
    order = np.random.default_rng([seed, 1]).permutation(len(examples))
    n_eval = min(int(round(eval_fraction * len(examples))), len(examples) - 1) if eval_fraction > 0 else 0
    eval_idx = set(order[:n_eval].tolist())
    return (
        [e for i, e in enumerate(examples) if i not in eval_idx],
        [e for i, e in enumerate(examples) if i in eval_idx],
    )


@dataclass
class Row:
    """One padded/packed row of a batch: ids, loss mask, position ids (restart at each packed example)."""

    input_ids: list[int]
    mask: list[int]
    position_ids: list[int]


def pack(examples: Sequence[Example], max_length: int) -> list[Row]:
    """Concatenate examples in order into rows of at most `max_length` tokens (an example is never split)."""
    rows: list[Row] = []
    cur = Row([], [], [])
    for ex in examples:
        if cur.input_ids and len(cur.input_ids) + len(ex.input_ids) > max_length:
            rows.append(cur)
            cur = Row([], [], [])
        cur.input_ids += ex.input_ids
        # The first token of each packed example has no in-example prediction: never train on the boundary.
        cur.mask += [0] + ex.mask[1:]
        cur.position_ids += list(range(len(ex.input_ids)))
    if cur.input_ids:
        rows.append(cur)
    return rows


def collate(rows: Sequence[Row], pad_id: int, packed: bool) -> dict[str, Any]:
    """Right-padded tensors. Unpacked rows get an attention mask; packed rows get restarting position ids
    (transformers then attends only within each example), and their right padding is masked out of the loss."""
    import torch

    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids)
        mask[i, :n] = torch.tensor(r.mask)
        att[i, :n] = 1
        pos[i, :n] = torch.tensor(r.position_ids)
        # Padding continues as its own "example" so it never joins the last real one.
        pos[i, n:] = torch.arange(width - n)
    batch = {"input_ids": ids, "loss_mask": mask}
    if packed:
        batch["position_ids"] = pos
    else:
        batch["attention_mask"] = att
    return batch


def rows_for(examples: Sequence[Example], max_length: int, packed: bool) -> list[Row]:
    if packed:
        return pack(examples, max_length)
    return [Row(e.input_ids, e.mask, list(range(len(e.input_ids)))) for e in examples]
