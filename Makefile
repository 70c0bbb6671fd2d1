# Thin wrappers. The README names two of them: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test lint fmt lab bench chaos lock clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	bash scripts/demo.sh

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check toolkit tests bench scripts
	$(BIN)/ruff format --check toolkit tests bench scripts
	$(BIN)/mypy --strict

fmt: $(STAMP)
	$(BIN)/ruff format toolkit tests bench scripts
	$(BIN)/ruff check --fix toolkit tests bench scripts

# JupyterLab on the notebooks, wired to the demo's embedded stack (run `make demo` once first;
# this restarts the stack if it was stopped).
LAB_STATE := $(CURDIR)/.r2migrate/demo
lab: $(STAMP)
	R2MIGRATE_STATE_DIR=$(LAB_STATE) $(BIN)/r2migrate dev up
	R2MIGRATE_STATE_DIR=$(LAB_STATE) $(BIN)/jupyter lab --notebook-dir=$(CURDIR)/notebooks

# This tool against s5cmd, rclone and the aws CLI on the same server; prints ratios.
bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# The fault-injection scenarios at large counts; prints what was injected and what was lost.
chaos: $(STAMP)
	$(BIN)/python scripts/chaos.py $(CHAOS_ARGS)

# Re-pin every dependency to what is installed now (run after changing pyproject.toml).
lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^r2migrate' > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
