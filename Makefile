# Two entry points: `make demo` (the main job) and `make test` (the test suite). Both create .venv.
PYTHON ?= python3
VENV ?= .venv
DEMO_DIR ?= ./demo
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: venv install install-test demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

venv: $(BIN)/python

# Non-editable install: tests and the demo run against what `pip install .` ships.
install: venv
	$(PIP) install -c requirements-pins.txt -r requirements-pins.txt
	$(PIP) install -c requirements-pins.txt --force-reinstall --no-deps .
	$(PIP) install -c requirements-pins.txt .

install-test: venv
	$(PIP) install -c requirements-pins.txt -r requirements-pins.txt
	$(PIP) install -c requirements-pins.txt --force-reinstall --no-deps .
	$(PIP) install -c requirements-pins.txt ".[test]"

demo: install
	$(BIN)/nnunetv2_uc demo --workdir $(DEMO_DIR)

test: install-test
	$(BIN)/pytest

clean:
	rm -rf $(VENV) build *.egg-info $(DEMO_DIR)
