# Two commands do everything: `make run` and `make test` (installs included).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,snapshot,local-redis,client]'
	touch $(STAMP)

run: $(STAMP)  ## serve on the configured port; starts a local redis-server if none answers; a first admin key if none
	$(BIN)/provider-registry serve --local-redis --first-run-key

test: $(STAMP)  ## the whole suite, against private redis-server and PostgreSQL database
	$(BIN)/pytest

bench: $(STAMP)  ## the benchmarks of docs/PERFORMANCE.md; options: make bench BENCH_ARGS="--rounds 3"
	$(BIN)/python bench/bench_api.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var build *.egg-info
