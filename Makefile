# The two first commands of the README: `make demo` and `make test`.
# Each creates .venv, installs recess into it (once), and installs the Debian packages
# its job needs (HAProxy; PostgreSQL for the tests) when they are missing.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo demo-docker test test-busy lint bench system-deps clean serve

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

system-deps:
	@./scripts/system-deps.sh

demo: $(STAMP) system-deps
	$(VENV)/bin/python -m demo.run

# The same story with the portal in containers (Podman or Docker, images built FROM scratch);
# says why and exits 0 where no engine can run containers.
demo-docker: $(STAMP) system-deps
	$(VENV)/bin/python -m demo.docker_run

test: $(STAMP) system-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -n 2  # two workers: most tests wait on processes, HAProxy and health checks

# The same suite on a busy machine: two CPU-bound processes run beside it (scripts/busy.sh starts
# them, and stops them afterwards, also when the suite fails).
test-busy: $(STAMP) system-deps
	./scripts/busy.sh $(MAKE) --no-print-directory test

serve: $(STAMP) system-deps
	RECESS_CONFIG=recess.toml $(VENV)/bin/recess serve

bench: $(STAMP) system-deps
	@for b in benchmarks/*.py; do echo "== $$b"; $(VENV)/bin/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .recess .pytest_cache
