# oomemu: each target builds the virtual environment from pyproject.toml first.
PYTHON ?= python3
VENV ?= .venv
ARGS ?=
SPEED ?= 1
DAEMON_POLICIES := v6.6,v6.6+earlyoom,v6.6+lmkd,v6.6+oomd,v6.6+systemd-oomd

.DEFAULT_GOAL := help
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,plot,cluster]'
	@rm -f $(VENV)/.installed-*
	@touch $@

.PHONY: help install run-demo sweep-demo sweep-check test test-fast stress fuzz bench compare compare-daemons claims cleanup clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## make the virtual environment (.venv) from pyproject.toml

run-demo: $(STAMP) ## mlocked under v4.17 and under timeout, side by side; pictures and traces in out/demo
	$(BIN)/oomemu demo --speed $(SPEED) --out out/demo $(ARGS)

sweep-demo: $(STAMP) ## timeout's patience (0.25-20 s) and v6.6's reaper delay (0-5 s) over three families; out/sweep-demo
	@mkdir -p out/sweep-demo
	$(BIN)/oomemu sweep examples/families/mlocked.toml examples/families/mmap_sem_held.toml \
	    examples/families/livelock.toml --policies v4.17,timeout,v6.6 \
	    --set reap_timeout_s=0.25,0.5,1,2,5,10,20 --set oom_reaper_delay_s=0,0.5,1,2,5 \
	    --out out/sweep-demo/sweep.jsonl --plot out/sweep-demo/sweep.png $(ARGS)

# 200 points (5 families of 4 x 10 policies and constants), each twice
CHECK_GRID := $(foreach f,mlocked mmap_sem_held livelock mmu_notifier shared_file,examples/families/$(f).toml) \
    --policies v4.17,timeout,v6.6 --set reap_timeout_s=0.25,0.5,1,2,5,10,20 --set oom_reaper_delay_s=0,2 --repeat 2

sweep-check: $(STAMP) ## 200 points with --jobs 2 and through a local Dask cluster: the same outcomes (out/sweep-check)
	@rm -rf out/sweep-check && mkdir -p out/sweep-check
	$(BIN)/oomemu sweep $(CHECK_GRID) --jobs 2 --out out/sweep-check/local.jsonl > out/sweep-check/local.txt
	$(BIN)/oomemu sweep $(CHECK_GRID) --dask local --jobs 2 --out out/sweep-check/dask.jsonl > out/sweep-check/dask.txt
	$(BIN)/oomemu sweep-diff out/sweep-check/local.jsonl out/sweep-check/dask.jsonl

test: $(STAMP) ## the whole test suite (ARGS= passes pytest options)
	$(BIN)/python -m pytest $(ARGS)

test-fast: $(STAMP) ## the pure and ipc layers only (tests/pure, tests/ipc): no runs, well under a minute
	$(BIN)/python -m pytest tests/pure tests/ipc $(ARGS)

stress: $(STAMP) ## only the repeated real-process runs
	$(BIN)/python -m pytest -m stress $(ARGS)

fuzz: $(STAMP) ## 2000 mutated scenario files: load each, run what loads (N= changes the count)
	$(BIN)/python -m bench.fuzz --n $(or $(N),2000) $(ARGS)

bench: $(STAMP) ## figures beside their floors: start-up, USS, OOM round trip, reaper lateness (ARGS=--quick: short)
	$(BIN)/python -m bench $(ARGS)

compare: $(STAMP) ## every scenario under every policy, checked against the stated outcomes
	$(BIN)/oomemu compare --speed 10 --check $(ARGS)

compare-daemons: $(STAMP) ## every scenario under v6.6 and each user-space daemon on it, checked
	$(BIN)/oomemu compare --speed 10 --check --policies $(DAEMON_POLICIES) $(ARGS)

claims: $(STAMP) ## regenerate the README's tables of outcomes (kernel policies, daemons) from real runs
	$(BIN)/python -m emulator.tools.claims README.md
	$(BIN)/python -m emulator.tools.claims README.md --daemons

cleanup: $(STAMP) ## remove leftovers (processes, /dev/shm) of runs whose supervisor died
	$(BIN)/oomemu cleanup

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache build out *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
