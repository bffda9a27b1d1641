# Two commands for a newcomer:  `make demo`  and  `make test`.
# Both create (or reuse) .venv and install everything first.
#
# TORCH_SPEC picks the torch build. The default is the CPU wheel this project is
# developed and tested with. Elsewhere, choose your own, e.g.
#   make demo TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
#   make demo TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu"
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.compress-installed
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint format clean samples

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: a later unpinned dependency would otherwise pull a CUDA build.
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/compress run sample_models/digits_cnn/plan.yaml --out out/demo_digits_cnn

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" -x $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check cli compressor tests sample_models benchmarks
	$(VENV)/bin/ruff format --check cli compressor tests sample_models benchmarks
	$(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff format cli compressor tests sample_models benchmarks
	$(VENV)/bin/ruff check --fix cli compressor tests sample_models benchmarks

# Retrain the committed sample checkpoints (deterministic; under a minute each, the tiny
# Llama about 10 minutes on 2 cores).
samples: install
	$(PY) -m sample_models.digits_mlp.train
	$(PY) -m sample_models.digits_cnn.train
	$(PY) -m sample_models.text_transformer.train
	$(PY) -m sample_models.tiny_llama.train

clean:
	rm -rf out .pytest_cache .ruff_cache
