"""Evaluation harness (`longshort eval`, docs/protocols.md and docs/budgets.md)."""

from __future__ import annotations

from dataclasses import dataclass

from longshort.config.loader import doc
from longshort.errors import ConfigError


@dataclass
class EvalConfig:
    benchmarks: list[str] = doc(
        "Benchmarks to evaluate (math500, aime24, aime25, amc23, gsm8k, ...); with `path`, any name (your own benchmark).",
        factory=lambda: ["math500"],
    )
    path: str | None = doc(
        "A local copy of the benchmark, JSONL, Parquet or a `datasets` folder, its columns mapped by `data.fields` "
        "(only with a single benchmark).",
        None,
        path=True,
    )
    split: str | None = doc("Benchmark split (also: which split of a DatasetDict `path`); null = the benchmark's test split.", None)
    limit: int | None = doc("Evaluate only the first N problems of each benchmark; null = all.", None)
    samples: int = doc("K: episodes per problem; accuracy is the mean over all K samples.", 1)
    protocols: list[str] = doc("Protocols to evaluate, each on every benchmark; empty = [protocol.name].", factory=list)
    batch_size: int = doc("Episodes per protocol call (one batched engine call per step); results are saved after each.", 64)
    out: str | None = doc("Output folder; null = `<run dir>/eval`.", None)
    plot: bool = doc("Write accuracy_vs_bseq.png (accuracy against mean B_seq of every protocol × benchmark).", True)

    def __post_init__(self) -> None:
        if not self.benchmarks:
            raise ConfigError("key 'evaluation.benchmarks' must name at least one benchmark")
        if self.path is not None and len(self.benchmarks) != 1:
            raise ConfigError(f"key 'evaluation.path' needs exactly one benchmark, got {len(self.benchmarks)}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"key 'evaluation.limit' must be >= 1, got {self.limit}")
        if self.samples < 1:
            raise ConfigError(f"key 'evaluation.samples' must be >= 1, got {self.samples}")
        if self.batch_size < 1:
            raise ConfigError(f"key 'evaluation.batch_size' must be >= 1, got {self.batch_size}")
