# The two set-up commands of the README: `make lab` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Every install resolves from the committed lock (`make lock` refreshes it), the isolated
# build environment of the labextension hook included.
LOCK := requirements/lock.txt
PIP_LOCKED = -m pip install -q -c $(LOCK) --build-constraint $(LOCK)
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: install lab test lint notebooks browser demo bench mutate clean lock lock-upgrade test-latest

$(STAMP): pyproject.toml $(LOCK) $(wildcard package.json) $(wildcard labextension/src/*.ts labextension/style/* labextension/schema/*)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c $(LOCK) pip  # the locked pip knows --build-constraint
	# The build hook runs `jlpm install` and builds the labextension (needs node >= 18).
	$(BIN)/python $(PIP_LOCKED) -e ".[test,lint]"
	# Dev mode: the environment's labextension dir links to the built copy in the tree
	# (it runs `jupyter-builder`, found on the venv's PATH).
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/jupyter labextension develop --overwrite . >/dev/null
	touch $@

install: $(STAMP)

# Chromium from Debian's packages for the real-browser tests (never a downloaded browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "install Debian's chromium (sudo apt-get install chromium) for the browser tests"; fi; }

# The printed URL opens the quickstart too (a file argument would only reach a browser
# that Jupyter opens itself).
lab: install
	$(BIN)/jupyter lab $(ROOT_FLAG) --LabApp.default_url=/lab/tree/notebooks/quickstart.ipynb

test: install browser
	$(BIN)/python -m pytest -q tests

# ruff and mypy (strict on the executor) as configured in pyproject.toml, the notebooks
# in sync with their sources, eslint and prettier on the TypeScript.
lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python notebooks/_build.py --check
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/jlpm run lint:check

# Regenerate notebooks/*.ipynb from their sources in notebooks/src/.
notebooks: install
	$(BIN)/python notebooks/_build.py

demo: install
	$(BIN)/python -m cloudbutton_jupyter.demo

bench: install
	$(BIN)/python $(PIP_LOCKED) -e ".[bench]"
	$(BIN)/python benchmarks/run.py

# Mutation testing (tools/mutate.py runs mutmut): the groups of tools/mutate.toml (modules,
# optionally narrowed to functions, and the tests that exercise them), each scored per
# module; `make mutate MUTATE_ONLY="worker local"` runs some groups. Results are kept in
# build/mutate/<group>/ (a later run re-tests only changed functions; after adding tests,
# MUTATE_ARGS=--retest-survivors; MUTATE_ARGS=--fresh starts over). See the README for the
# run time.
MUTATE_PLAN ?= tools/mutate.toml
MUTATE_ONLY ?=
MUTATE_ARGS ?=

mutate: install
	# The `mutate` extra's packages, without rebuilding the project itself.
	$(BIN)/python -m pip install -q -c $(LOCK) $$($(BIN)/python -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['mutate']))")
	$(BIN)/python tools/mutate.py --plan $(MUTATE_PLAN) $(if $(MUTATE_ONLY),--only $(MUTATE_ONLY)) $(MUTATE_ARGS)

# Resolve the lock with pip's resolver in a scratch venv: `lock` keeps the pins it has and
# adds what is new; `lock-upgrade` moves everything to the newest releases that fit pyproject.
lock lock-upgrade:
	rm -rf build/lock-venv
	$(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/python -m pip install -q -U pip
	build/lock-venv/bin/python requirements/lock.py $(if $(filter lock-upgrade,$@),--upgrade)

# The suite against the newest releases, in its own venv, ignoring the lock.
test-latest: browser
	test -x .venv-latest/bin/python || $(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q -U pip
	.venv-latest/bin/python -m pip install -q -U --upgrade-strategy eager -e ".[test]"
	PATH="$(abspath .venv-latest/bin):$$PATH" .venv-latest/bin/jupyter labextension develop --overwrite . >/dev/null
	mkdir -p build && .venv-latest/bin/python -m pip freeze --exclude-editable > build/latest-versions.txt
	@echo "versions under test: build/latest-versions.txt (diff it with $(LOCK))"
	.venv-latest/bin/python -m pytest -q tests

clean:
	rm -rf $(VENV) .venv-latest build node_modules cloudbutton_jupyter/labextension lib tsconfig.tsbuildinfo
