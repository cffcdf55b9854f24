# The two commands: `make run` (app + worker on SQLite) and `make test`
# (the whole suite on SQLite, then on a throwaway PostgreSQL).
# Tests close connections after each request (DB_CONN_MAX_AGE=0): the live
# server's threads must not hold the test database open at teardown.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUNTIME_STAMP := $(VENV)/.runtime-installed
DEV_STAMP := $(VENV)/.dev-installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: run test venv dev-venv lint test-sqlite test-postgres bench bench-http bench-pages bench-scaling bench-revisions screenshots clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(RUNTIME_STAMP): requirements.txt | $(PY)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

$(DEV_STAMP): requirements.txt requirements-dev.txt | $(PY)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $(RUNTIME_STAMP) $@

# The throughput benchmark's peer (PgQueuer) on top of the dev dependencies.
$(BENCH_STAMP): requirements.txt requirements-dev.txt requirements-bench.txt | $(PY)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-bench.txt
	touch $(RUNTIME_STAMP) $(DEV_STAMP) $@

venv: $(RUNTIME_STAMP)
dev-venv: $(DEV_STAMP)

run: $(RUNTIME_STAMP)
	$(PY) manage.py migrate --noinput
	$(PY) manage.py load_demo
	$(PY) manage.py ensure_dev_admin
	$(PY) scripts/run_dev.py

lint: $(DEV_STAMP)
	$(PY) manage.py check
	$(PY) manage.py makemigrations --check --dry-run
	$(PY) -m ruff check .
	$(PY) -m mypy

test-sqlite: $(DEV_STAMP)
	@bash scripts/ensure_chromium.sh
	@echo "== test suite on SQLite =="
	env -u DATABASE_URL DB_CONN_MAX_AGE=0 $(PY) -m pytest

test-postgres: $(DEV_STAMP)
	@echo "== test suite on PostgreSQL =="
	DB_CONN_MAX_AGE=0 $(PY) scripts/with_postgres.py -- $(PY) -m pytest

# The two passes run side by side (-j2): each is mostly one Python process waiting on its database,
# workers, browser or servers, so together they take about as long as the PostgreSQL pass alone
# (16 min one after the other on a 2-core machine). --output-sync prints each pass's output whole when
# it ends; the target fails if either pass fails.
test: lint
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-sqlite test-postgres

# Every monitoring page at 10k and 1M tasks (README "Performance"; ~10 min). --durable: fsync on, as in production.
bench-pages: $(DEV_STAMP)
	$(PY) scripts/with_postgres.py --durable -- $(PY) bench/pages.py

# Claim latency (with and without each flow control) and the monitoring pages at 10k, 1M and 10M tasks
# (docs/scaling.md; ~10 GB, ~40 min). --durable: fsync on, as in production.
bench-scaling: $(DEV_STAMP)
	$(PY) scripts/with_postgres.py --durable -- $(PY) bench/claim_scaling.py --pages --controls

# The claim with no flow control, this tree against the revision before issue 15 (BASE=...), alternated
# on one durable server at 10k and 1M tasks (docs/scaling.md section 6; ~15 min).
bench-revisions: $(DEV_STAMP)
	$(PY) scripts/with_postgres.py --durable -- $(PY) bench/claim_revisions.py $(if $(BASE),--base $(BASE))

# Every page at desktop (1440x900), phone (390x844) and dark, on the demo with seeded tasks, into
# docs/screenshots/ (linked from README "Monitoring pages"); the same test runs, without saving, in make test.
screenshots: $(DEV_STAMP)
	SAVE_SCREENSHOTS=1 env -u DATABASE_URL DB_CONN_MAX_AGE=0 $(PY) -m pytest -q tests/test_browser.py -k screenshots

# Ours vs PgQueuer vs a raw SQL loop, 20k no-op tasks on 80k finished ones (README "Performance"; ~15 min).
# --durable: fsync and synchronous_commit on, as in production (the test suite keeps the fast settings).
bench: $(BENCH_STAMP)
	$(PY) scripts/with_postgres.py --durable -- $(PY) bench/throughput.py

# The HTTP worker example against gunicorn vs the in-process worker (README "Performance"; ~3 min).
# --durable: fsync and synchronous_commit on, as in production.
bench-http: $(DEV_STAMP)
	$(PY) scripts/with_postgres.py --durable -- $(PY) bench/http_throughput.py

clean:
	rm -rf $(VENV) db.sqlite3* .test-db.sqlite3* .pytest_cache .ruff_cache
