# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV   ?= .venv
EXTRAS ?= dev,inference
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# Python 3.12 for `make test-py312`: pyenv's, else on PATH (the first that runs).
PYTHON312 ?= $(shell for p in $$HOME/.pyenv/versions/3.12*/bin/python3.12 $$(command -v python3.12); do "$$p" --version >/dev/null 2>&1 && { echo "$$p"; break; }; done)

NODE_STAMP := node_modules/.installed-stamp

.PHONY: install browser demo test test-unit test-py312 print-python312 bench contracts lint-template clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	touch $(STAMP)

# solcjs, OpenZeppelin, anvil and hls.js come from npm, pinned by package-lock.json.
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $(NODE_STAMP)

# The job page's player, vendored into the package the control plane deploys (its pages load
# nothing from elsewhere): hls.js and its licence.
STATIC := chalicelib/ui/static
$(STATIC)/hls.min.js: $(NODE_STAMP)
	cp node_modules/hls.js/dist/hls.min.js $@
	cp node_modules/hls.js/LICENSE $(STATIC)/hls.LICENSE

install: $(STAMP) $(NODE_STAMP) $(STATIC)/hls.min.js

# The pages' tests drive a real browser: Debian's Chromium and its driver (never a download
# at test time). As root, or through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromedriver >/dev/null && { command -v chromium || command -v chromium-browser; } >/dev/null \
		|| { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver; }

# Recompile the escrow into chalicelib/settlement/artifacts/ (committed, and packaged with the
# control plane: the runtime needs no compiler).
contracts: $(NODE_STAMP)
	node contracts/build.js

demo: install
	$(PY) scripts/demo.py $(ARGS)

test: install browser
	$(PY) -m pytest -q

test-unit: install
	$(PY) -m pytest -q -m "not stack" $(PYTEST_ARGS)

# The unit tests on Python 3.12 as well, in their own venv. Without the model (the `inference`
# extra's torch is a 3.11 CPU build here): the dispatcher's `pool` extra stands in, and the
# adversary catalogue, a stack test that loads the model, is left to `make test`.
print-python312:
	@echo $(PYTHON312)

test-py312:
	@test -n "$(PYTHON312)" || { echo "python3.12 not found (PATH or ~/.pyenv)"; exit 1; }
	$(MAKE) test-unit PYTHON=$(PYTHON312) VENV=.venv-py312 EXTRAS=dev,pool \
		PYTEST_ARGS=--ignore=tests/verification/test_adversaries.py

bench: install
	$(PY) -m bench

lint-template: $(STAMP)
	$(VENV)/bin/cfn-lint template.yaml

clean:
	rm -rf $(VENV) .venv-py312 node_modules .proofline .pytest_cache bench/results.json
