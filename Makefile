# `make demo` runs the main job, `make test` the whole test suite.
# Both build a local virtual environment in .venv on first use and reuse it.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch on machines without CUDA; a CUDA user can override,
# e.g. `make TORCH_SPEC="torch --index-url ..." demo`.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed
COMPILED := $(VENV)/.descriptor-compiled

.PHONY: demo test test-all lint bench venv clean-venv

venv: $(COMPILED)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# torch first, so nothing that depends on it pulls a multi-GB CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

# The default encoder compiled once (numba caches it on disk), not during the
# first run; again whenever its source changes.
$(COMPILED): $(STAMP) napari_hila/encoders/_descriptor_kernels.py napari_hila/encoders/descriptor.py
	$(BIN)/python -c "from napari_hila.encoders.descriptor import warm_up; warm_up()"
	@touch $(COMPILED)

demo: $(COMPILED)
	@bash scripts/with_display.sh $(BIN)/napari-hila demo

test: $(COMPILED)
	@bash scripts/system_deps.sh
	$(BIN)/ruff check napari_hila tests scripts
	$(BIN)/ruff format --check napari_hila tests scripts
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-all: $(COMPILED)
	@bash scripts/system_deps.sh
	HILA_SLOW=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check napari_hila tests scripts
	$(BIN)/ruff format --check napari_hila tests scripts

clean-venv:
	rm -rf $(VENV)
