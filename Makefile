# longshort — `make demo` runs the main job, `make test` runs the suite (`test-fast`, `test-integration`: the tiers
# below it, README "Test tiers"). All set up .venv first.
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done

.PHONY: setup test test-fast test-integration demo bench clean

setup: $(STAMP)

# Reruns only when the dependency list or the installer changes (a second `make setup` is a no-op).
$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

# The whole suite (CI): every tier.
test: setup
	$(PY) -m pytest -q tests

# Test tiers (tests/conftest.py derives each test's tier from the fixtures it uses): unit tests only, no engine, no
# training; then everything but the slow tier (adds real vLLM/HF engines, SFT/RL training, Ray).
test-fast: setup
	$(PY) -m pytest -q -m unit tests

test-integration: setup
	$(PY) -m pytest -q -m "unit or integration" tests

# The whole Long⊗Short pipeline on the embedded tiny model; a rerun reuses finished stages (docs/pipeline.md).
# DEMO_ARGS adds options or key=value overrides, e.g. DEMO_ARGS=--quick.
demo: setup
	$(VENV)/bin/longshort pipeline --recipe recipes/tiny/pipeline.yaml $(DEMO_ARGS)

# Every benchmark (bench/run_all.py, ~40 min on 2 cores): bench/results.json + docs/benchmarks.md. TRL is the
# RL baseline, installed here only (the `bench` extra), never by setup. BENCH_ARGS=--quick for a short run.
bench: setup
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf runs out
