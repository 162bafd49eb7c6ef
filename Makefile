# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch/torchvision pinned to the builds this project is tested with (pip takes them from a local copy here)
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
GTSRB_ROOT ?= $(abspath ../shared/gtsrb)
PYTEST_ARGS ?=
# two pytest workers on two cores (one torch thread each, tests/conftest.py); a module's tests share a worker, so
# module fixtures are built once. PYTEST_XDIST= runs everything in one process.
PYTEST_XDIST ?= -n 2 --dist loadscope
DEMO_ARGS ?=  # appended to the demo's training command (tests/test_readme_commands.py shrinks the run)
BENCH_ARGS ?= data.data_dir=$(GTSRB_ROOT) data.image_size=227 data.batch_size=64 model=alexnet_bn \
	model.channels_last=true trainer.precision=32-true bench.lrn_batch=32 bench.out=logs/bench.json
# gpu-check: experiment=gpu on a GPU machine: the bare bf16 training ceiling, Lightning fit from disk and the
# share of its time spent waiting for the next batch, and every precision/format switch, as one table + JSON.
GPU_CHECK_ARGS ?=
GPU_CHECK_OUT ?= logs/gpu_check.json

.PHONY: venv demo test test-fast lint format docs bench gpu-check clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)  ## train on generated synthetic data, offline, on CPU
	$(BIN)/python -m alexnet_gtsrb.train experiment=demo $(DEMO_ARGS)

test: $(STAMP)  ## lint + type check + the docs site, built strictly + the whole test suite (what CI runs)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(MAKE) --no-print-directory docs
	GTSRB_ROOT=$(GTSRB_ROOT) $(BIN)/python -m pytest $(PYTEST_XDIST) --durations=25 $(PYTEST_ARGS)

test-fast: $(STAMP)  ## skip the slow (subprocess training) tests
	GTSRB_ROOT=$(GTSRB_ROOT) $(BIN)/python -m pytest $(PYTEST_XDIST) -m "not slow" --durations=10 $(PYTEST_ARGS)

bench: $(STAMP)  ## throughput/memory table: compute ceiling, end to end, input pipeline, LRN, memory
	$(BIN)/python -m alexnet_gtsrb.bench $(BENCH_ARGS)

gpu-check: $(STAMP)  ## on a GPU: fit vs bf16 ceiling, data wait, precision/format switches (experiment=gpu)
	$(BIN)/python -m alexnet_gtsrb.bench experiment=gpu data.data_dir=$(GTSRB_ROOT) \
		"bench.sections=[ceiling,e2e,precision]" bench.steps=30 bench.warmup=5 bench.e2e_warmup=20 \
		bench.out=$(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

docs: $(STAMP)  ## the documentation site into site/ (mkdocs.yml); a broken link, page or docstring fails it
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf logs site .pytest_cache .ruff_cache
