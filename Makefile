# Two commands do everything: `make run` and `make test` (installs included).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The dashboard's browser test drives Debian's chromium (Playwright cannot download its own
# here); `make test` installs it once, as root, or through sudo otherwise.
CHROMIUM := /usr/bin/chromium
SUDO     := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: run test bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,snapshot,local-redis,client]'
	touch $(STAMP)

run: $(STAMP)  ## serve on the configured port; starts a local redis-server if none answers; a first admin key if none
	$(BIN)/provider-registry serve --local-redis --first-run-key

test: $(STAMP) $(CHROMIUM)  ## the whole suite, against private redis-server and PostgreSQL database
	$(BIN)/pytest

$(CHROMIUM):
	$(SUDO) apt-get update
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium

bench: $(STAMP)  ## the benchmarks of docs/PERFORMANCE.md; options: make bench BENCH_ARGS="--rounds 3"
	$(BIN)/python bench/bench_api.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var build *.egg-info
