# reprun: two commands do all set-up on a fresh machine — `make demo` and `make test`.
VENV     ?= .venv
PYTHON   ?= python3
BIN      := $(VENV)/bin
REPRUN   := $(BIN)/reprun
STAMP    := $(VENV)/.installed

.PHONY: all install engine images test-deps demo test test-fast check bench clean dist

all: install

# editable_mode=compat: a plain path in a .pth file. The default editable finder costs every
# command about 20 ms of imports at interpreter start (setuptools calls compat transitional).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

# Bytecode as a wheel install would have it: where PYTHONDONTWRITEBYTECODE is set, an editable
# install otherwise compiles every module of reprun again at each command.
install: $(STAMP)
	$(BIN)/python -m compileall -q orchestrator

# A Docker engine (the user's own, or Debian's dockerd started here) and a registry on 127.0.0.1.
engine:
	bash scripts/engine.sh

# The base image (debootstrap, no registry needed) and the example training image, both pushed
# to the local registry; the example specs are then locked to this machine's image IDs.
images: engine install
	bash images/base/build.sh
	bash scripts/images.sh

demo: images
	bash scripts/demo.sh

test: images test-deps
	$(BIN)/pytest -q -n 2 --dist loadgroup

# Everything that needs no engine: pure logic, the orchestration on the scripted executor in
# tests/unit/, the store on real SQLite files. An engine test is one marked `engine` or asking
# for the engine's fixtures (tests/conftest.py); no engine is reached, even where one runs.
test-fast: install
	DOCKER_HOST=unix:///nonexistent/reprun-test-fast.sock REPRUN_FUZZ_SHARE=0.1 \
	  $(BIN)/pytest -q -n 2 -m 'not engine'

# The scheduled rebuild check over the example specs (specs/nondeterministic/ is left out on
# purpose: it exists to differ).
check: images
	$(REPRUN) check specs/*.yaml --junit .reprun/check.xml --report-dir .reprun/check

bench: images
	$(BIN)/python bench/run.py

# A wheel of reprun in dist/, its shell templates and JSON Schemas inside, for `pip install`
# or `pipx install dist/reprun-*.whl` in another repository (README "Using reprun in your
# repository").
dist: install
	rm -rf dist build
	$(BIN)/pip wheel -q --no-deps -w dist .
	rm -rf build

clean:
	rm -rf $(VENV) .reprun build dist *.egg-info

# Debian packages only the tests use (a headless Chromium opens the HTML report).
test-deps:
	bash scripts/test-deps.sh
