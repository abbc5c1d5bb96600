# The two commands of the README: `make demo` and `make test`.
# Each creates the virtual environment and installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUNTIME := $(VENV)/.installed-runtime

.PHONY: demo test lint typecheck unit unit-postgresql slurm sge postgres redis chromium sandbox web tenant-user tenant-users bench clean

# The demo needs Apportion only; the tests add the dev tools (ruff, mypy, pytest, Playwright, …).
$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[server]'
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# As root, the demo's jobs run as the job user (tenant-user); otherwise as you, by explicit opt-in.
demo: $(RUNTIME) web tenant-user
	@if [ "$$(id -u)" = 0 ]; then $(BIN)/apportion demo; \
	else APPORTION_ALLOW_JOBS_AS_SERVER_USER=true $(BIN)/apportion demo; fi

test: lint typecheck tenant-users slurm sge postgres redis chromium sandbox web unit unit-postgresql

# A real single-host Slurm for the Slurm adapter's tests (scripts/slurm_up.sh installs it with
# apt where it can). Without it the Slurm tests skip and say why — except under CI=true, where
# this step and those tests fail instead.
slurm:
	@if [ "$$CI" = "true" ]; then bash scripts/slurm_up.sh; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		bash scripts/slurm_up.sh || echo "Slurm could not be started; its tests will skip"; \
	else echo "not root: Slurm tests will skip unless Slurm runs (scripts/slurm_up.sh)"; fi

# A real single-host Son of Grid Engine for the sge adapter's tests (scripts/sge_up.sh installs
# Debian's gridengine-* with apt where it can). Without it the SGE tests skip and say why —
# except under CI=true, where this step and those tests fail instead.
sge:
	@if [ "$$CI" = "true" ]; then bash scripts/sge_up.sh; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		bash scripts/sge_up.sh || echo "SGE could not be started; its tests will skip"; \
	else echo "not root: SGE tests will skip unless SGE runs (scripts/sge_up.sh)"; fi

# A real PostgreSQL on 127.0.0.1:5440 (scripts/postgres_up.sh installs Debian's postgresql with
# apt where it can) for the store's tests on PostgreSQL. Without it those tests skip and say why —
# except under CI=true, where this step and those tests fail instead.
postgres:
	@if [ "$$CI" = "true" ]; then bash scripts/postgres_up.sh; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		bash scripts/postgres_up.sh || echo "PostgreSQL could not be started; its tests will skip"; \
	else echo "not root: PostgreSQL tests will skip unless scripts/postgres_up.sh ran"; fi

# A real Redis on 127.0.0.1:6390 (scripts/redis_up.sh installs Debian's redis-server with apt
# where it can) for the tests of events across servers. Without it those tests skip and say why —
# except under CI=true, where this step and those tests fail instead.
redis:
	@if [ "$$CI" = "true" ]; then bash scripts/redis_up.sh; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		bash scripts/redis_up.sh || echo "Redis could not be started; its tests will skip"; \
	else echo "not root: Redis tests will skip unless scripts/redis_up.sh ran"; fi

# The unprivileged OS user that jobs run as when the server is root (docs/security.md). The
# job-isolation tests need it as root; without it they skip and say why — except under CI=true,
# where this step and those tests fail instead.
tenant-user:
	@if [ "$$(id -u)" = 0 ]; then bash scripts/tenant_user.sh \
		|| { [ "$$CI" != "true" ] || exit 1; echo "the job user could not be created; job tests will skip"; }; \
	elif [ "$$CI" = "true" ]; then echo "CI=true: not root, cannot create the job user"; exit 1; \
	else echo "not root: jobs run as this user only with allow_jobs_as_server_user"; fi

# The tests' second tenant: an account mapped to its own OS user (tests/test_accounts.py).
tenant-users: tenant-user
	@if [ "$$(id -u)" = 0 ]; then JOB_USER=apportion-tenant-b bash scripts/tenant_user.sh \
		|| { [ "$$CI" != "true" ] || exit 1; echo "the second tenant user could not be created; its tests will skip"; }; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check
	$(BIN)/ruff format --check

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

# The server tests again, each test server on a PostgreSQL database of its own
# (APPORTION_TEST_STORE, tests/postgres_env.py): the routes, sockets and job paths that write
# the store, on the dialect replicas share (the SIGKILL crash tests among them). The store's own
# tests already ran on both in `unit`; the whole suite passes this way too, but for the two
# tests of the SQLite file's modes (about 10 minutes: not in every run).
POSTGRESQL_TESTS := $(addprefix tests/test_,$(addsuffix .py,accounts applications arrays auth \
	create_then_submit dependencies events exit_codes_and_clean fair_share files \
	holds_outside_the_lock job_admission job_crashes job_events job_lifecycle job_races jobs \
	policy_upload preemption queue_limits quota_admission registry_rest restart seed_000 \
	seed_002 seed_003 ws_allocation))
unit-postgresql: $(STAMP)
	APPORTION_TEST_STORE=postgresql $(BIN)/pytest -q $(POSTGRESQL_TESTS)

# The dashboard's browser dependencies, from web/package-lock.json (docs/dashboard.md).
web: src/apportion/server/static/vendor/socket.io.min.js
src/apportion/server/static/vendor/socket.io.min.js: web/package-lock.json web/copy-vendor.mjs
	cd web && npm ci --no-audit --no-fund && node copy-vendor.mjs

# Debian's Chromium for the dashboard's browser tests (never `playwright install`). Without it
# those tests skip and say why — except under CI=true, where this step and those tests fail.
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends chromium >/dev/null; } \
		|| { [ "$$CI" != "true" ] || exit 1; echo "Chromium could not be installed; the browser tests will skip"; }; \
	elif [ "$$CI" = "true" ]; then echo "CI=true: /usr/bin/chromium is missing and this is not root"; exit 1; \
	else echo "not root: the dashboard's browser tests will skip unless /usr/bin/chromium exists"; fi

# The policy sandbox: Debian's bubblewrap and the user apportion-sandbox (scripts/sandbox_up.sh).
# Without them the sandbox tests skip and say why, and the server tests run policies with
# unsandboxed_policies (tests/sandbox_env.py) — except under CI=true, where this step and those tests fail.
sandbox:
	@if command -v bwrap >/dev/null && getent passwd apportion-sandbox >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		bash scripts/sandbox_up.sh || { [ "$$CI" != "true" ] || exit 1; echo "the policy sandbox could not be set up; its tests will skip"; }; \
	elif [ "$$CI" = "true" ]; then echo "CI=true: bwrap or the user apportion-sandbox is missing and this is not root"; exit 1; \
	else echo "not root: the policy sandbox tests will skip unless scripts/sandbox_up.sh ran"; fi

bench: $(STAMP)
	$(BIN)/python benchmarks/allocation.py
	$(BIN)/python benchmarks/jobs.py
	$(BIN)/python benchmarks/replicas.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
