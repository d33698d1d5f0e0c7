# The two set-up commands of the README: `make lab` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: install lab test lint notebooks browser demo bench clean

$(STAMP): pyproject.toml $(wildcard package.json) $(wildcard labextension/src/*.ts labextension/style/* labextension/schema/*)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	# The build hook runs `jlpm install` and builds the labextension (needs node >= 18).
	$(BIN)/python -m pip install -q -e ".[test,lint]"
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
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) build node_modules cloudbutton_jupyter/labextension lib tsconfig.tsbuildinfo
