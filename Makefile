# Entry points: `make demo` (the main job), `make test` (the test suite, against what ships) and `make dev` (an
# editable install for working on the code). All create .venv; each puts its own kind of install of the project there.
PYTHON ?= python3
VENV ?= .venv
DEMO_DIR ?= ./demo
# Where the torch/torchvision pair of requirements-pins.txt comes from. Empty: PyPI (torch 2.14.1's default Linux
# wheel is built for CUDA 13.0 and needs an NVIDIA driver >= 580). For an older cluster driver pick the build of
# the same pair for its CUDA, e.g. make install TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
TORCH_INDEX_URL ?=
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
TORCH_PAIR := -c requirements-pins.txt -r requirements-pins.txt $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))

.PHONY: venv install install-test dev demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

venv: $(BIN)/python

# Non-editable install: tests and the demo run against what `pip install .` ships.
install: venv
	$(PIP) install $(TORCH_PAIR)
	$(PIP) install -c requirements-pins.txt --force-reinstall --no-deps .
	$(PIP) install -c requirements-pins.txt .

install-test: venv
	$(PIP) install $(TORCH_PAIR)
	$(PIP) install -c requirements-pins.txt --force-reinstall --no-deps .
	$(PIP) install -c requirements-pins.txt ".[test]"

# Editable install with the test extras: edits to the checkout are seen without reinstalling (`make test` and
# `make install` replace it with a non-editable one again).
dev: venv
	$(PIP) install $(TORCH_PAIR)
	$(PIP) install -c requirements-pins.txt -e ".[test]"

demo: install
	$(BIN)/nnunetv2_uc demo --workdir $(DEMO_DIR)

test: install-test
	$(BIN)/pytest

clean:
	rm -rf $(VENV) build *.egg-info $(DEMO_DIR)
