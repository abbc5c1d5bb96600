# The two commands of the README: `make demo` and `make test`.
# Each creates the virtual environment and installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit slurm bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/apportion demo

test: lint typecheck slurm unit

# A real single-host Slurm for the Slurm adapter's tests (scripts/slurm_up.sh installs it with
# apt where it can). Without it the Slurm tests skip and say why — except under CI=true, where
# this step and those tests fail instead.
slurm:
	@if [ "$$CI" = "true" ]; then bash scripts/slurm_up.sh; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		bash scripts/slurm_up.sh || echo "Slurm could not be started; its tests will skip"; \
	else echo "not root: Slurm tests will skip unless Slurm runs (scripts/slurm_up.sh)"; fi

lint: $(STAMP)
	$(BIN)/ruff check
	$(BIN)/ruff format --check

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/allocation.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
