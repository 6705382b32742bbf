"""Data assets: real benchmarks (normalised rows ``{id, problem, answer, source}``), the synthetic long-CoT task, and
`read_rows`, the one loader of every row file (JSONL, Parquet, `datasets` folders; field mapping, chat rows)."""

from longshort.data.benchmarks import BENCHMARKS, Benchmark, load_benchmark, load_problems
from longshort.data.rows import read_rows

__all__ = ["BENCHMARKS", "Benchmark", "load_benchmark", "load_problems", "read_rows"]
