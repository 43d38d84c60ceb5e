# Two commands set everything up: `make demo` and `make test`. Both create or refresh .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp

.PHONY: demo test test-long lint bench tools clean

$(STAMP): pyproject.toml requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sentinel demo

# External tools the tests drive for real: promtool (Prometheus). Installed from Debian when missing.
tools:
	@command -v promtool >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing prometheus tools from Debian"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else echo "promtool missing: apt-get install prometheus (the promtool tests will fail)"; fi; }

test: $(STAMP) tools
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not slow"

test-long: $(STAMP) tools
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# CPU benchmarks; the GPU ones run on a CUDA machine with `bash tests/gpu/run.sh` (see bench/RESULTS.md).
bench: $(STAMP)
	$(PY) bench/datapath.py
	$(PY) bench/probes_cpu.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis bench/out
