# The two commands of the README: `make run` (the whole stack on embedded defaults) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin

.PHONY: run test test-fast lint ci-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[demo]' --config-settings editable_mode=compat
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	touch $@ $(VENV)/.installed-run

# The local stack runs with DEBUG on; production leaves it off (the settings' own default).
run: export DJANGO_DEBUG ?= 1
run: $(VENV)/.installed-run
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py ensure_admin
	@if [ -z "$$AZURE_OPENAI_ENDPOINT" ]; then \
		echo "No AZURE_OPENAI_ENDPOINT: starting the bundled emulator on http://127.0.0.1:8089"; procs="web worker emulator"; \
	else procs="web worker"; fi; \
	PATH="$(BIN):$$PATH" exec $(BIN)/honcho -f Procfile start $$procs

# pytest exits 5 when it collected nothing: that is a failure here, never a pass.
PYTEST_NOTHING_IS_A_FAILURE = rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose"; exit 1; fi; exit $$rc

test: $(VENV)/.installed-dev
	@$(BIN)/pytest $(PYTEST_ARGS); $(PYTEST_NOTHING_IS_A_FAILURE)

# Everything but the tests marked slow (real q clusters, Chromium, the soak and bench smokes): under a minute.
test-fast: $(VENV)/.installed-dev
	@$(BIN)/pytest -m "not slow" $(PYTEST_ARGS); $(PYTEST_NOTHING_IS_A_FAILURE)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) db.sqlite3 staticfiles .pytest_cache
