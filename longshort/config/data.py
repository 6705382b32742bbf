"""Data sections: where problems and traces come from, and the synthetic long-CoT task."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from longshort.config.loader import doc
from longshort.errors import ConfigError


@dataclass
class FieldsConfig:
    """Column names of your rows, mapped to ours; null = our own name (and its known aliases)."""

    id: str | None = doc("Column holding the row id; null = `id` (a row without one gets an id from its line or row).", None)
    problem: str | None = doc("Column holding the problem, e.g. `question`; null = `problem` (or `question`).", None)
    answer: str | None = doc("Column holding the gold answer, e.g. `expected_answer`; null = `answer`.", None)
    response: str | None = doc("Column holding the long-CoT response of a trace, e.g. `generation`; null = `response`.", None)
    messages: str | None = doc(
        "Column holding TRL-style chat rows, a list of {role, content}: the one user message is the problem, the last "
        "assistant message the response (filling only what the row has no column for); null = `messages`.",
        None,
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and not value.strip():
                raise ConfigError(f"key 'data.fields.{f.name}' must name a column (or be null), got {value!r}")

    def mapping(self) -> dict[str, str]:
        """{our name: your column} of the fields that are set."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass
class DataConfig:
    train: str | None = doc(
        "Training problems/traces: JSONL (.jsonl/.json), Parquet (.parquet) or a `datasets` folder (save_to_disk); "
        "null = the stage's default.",
        None,
        path=True,
    )
    test: str | None = doc("Held-out problems (JSONL, Parquet or a `datasets` folder).", None, path=True)
    split: str | None = doc(
        "Split to read when a path is a DatasetDict folder (save_to_disk of several splits); null = `train`.", None
    )
    fields: FieldsConfig = doc(
        "Column mapping of your files (data.train, analysis.traces, sft.data, eval's --path), e.g. "
        "`fields: {problem: question, answer: expected_answer}`.",
        factory=FieldsConfig,
    )
    on_error: Literal["raise", "skip"] = doc(
        "Bad rows: `raise` stops with file:line; `skip` writes them to rejects.jsonl and counts them in the summary.", "raise"
    )

    def resume_keys(self) -> tuple[str, ...]:
        """The keys of this section that change the rows read, beyond `data.train` and `data.on_error`, to record in a
        stage's resume settings: only those set, so a run started before they existed still resumes."""
        keys = [f"data.fields.{k}" for k in self.fields.mapping()]
        return tuple(keys + (["data.split"] if self.split is not None else []))
