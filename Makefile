# Two commands on a fresh machine:  make run  (set up + default experiment),  make test.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Extra Hydra overrides for `make run`, e.g.  make run ARGS="dataset=cifar10 num_rounds=3"
ARGS   ?=
# Extra pytest arguments, e.g.  make test PYTEST_ARGS="-k payload"
PYTEST_ARGS ?=

.PHONY: setup run test data clean

setup: $(STAMP)

# pip (not uv/poetry) and torch==2.13.0 exactly: that is what installs the CPU build of PyTorch.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: setup
	$(BIN)/python run_simulation.py $(ARGS)

# Two workers, one per core; each test file runs whole on one worker (its module fixtures, e.g. a
# deployment, are made once), so the files of real runs overlap with the others' waits. Files go out
# in collection order, the longest first (tests/conftest.py, HEAVIEST_FILES_FIRST).
TEST_WORKERS ?= 2

test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# Offline machines of this project: write MNIST, CIFAR-10/100 from ../shared into ./data.
data: setup
	$(BIN)/python ../shared/datasets/materialize.py data

clean:
	rm -rf outputs multirun .pytest_cache
