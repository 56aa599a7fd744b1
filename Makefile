# One-command set-up: `make demo` and `make test` create .venv if missing and install into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.litcache-installed
RUN ?= runs/demo

.PHONY: install test test-slow demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# constraints.txt pins the tested torch/torchvision (their wheels lie on local disk here).
$(STAMP): $(BIN)/python setup.py setup.cfg constraints.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

demo: install
	$(BIN)/python pipelines/demo.py --run $(RUN)

clean:
	rm -rf runs .pytest_cache
