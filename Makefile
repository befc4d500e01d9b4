# The README's commands. `make demo` and `make test` work on a fresh machine: they find a
# Python >= 3.12, build .venv with the pinned versions (constraints.txt) and run.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
DEMO_DIR ?= runs/demo

.PHONY: help venv test test-slow test-all demo bench lock clean

help:
	@echo "make demo       set up and train the default experiment on built-in data (CPU; ~1-2 min on 2 free cores)"
	@echo "make test       set up and run the test suite (no slow tests)"
	@echo "make test-slow  only the tests marked slow"
	@echo "make test-all   every test"
	@echo "make bench      kernel/op benchmarks on whatever backend is present"

$(STAMP): pyproject.toml constraints.txt scripts/find_python.sh
	@py=$$(./scripts/find_python.sh) && echo "using $$py" && "$$py" -m venv --clear $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	@touch $@

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist worksteal -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist worksteal $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/python -m experiments.run --config=experiments/configs/synthetic/demo.py --workdir=$(DEMO_DIR)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.ops

# Re-resolve the lock after changing dependencies in pyproject.toml.
lock:
	@py=$$(./scripts/find_python.sh) && rm -rf /tmp/ssm_jax_lock && "$$py" -m venv /tmp/ssm_jax_lock
	/tmp/ssm_jax_lock/bin/python -m pip install -q 'jax==0.11.2' 'jaxlib==0.11.2' 'flax==0.12.10' 'optax==0.2.8' -e '.[test]'
	@{ sed -n '1,3p' constraints.txt; /tmp/ssm_jax_lock/bin/python -m pip freeze --exclude-editable; } > constraints.txt.new && mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
