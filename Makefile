# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

NODE_STAMP := node_modules/.installed-stamp

.PHONY: install demo test test-unit bench contracts lint-template clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev,inference]"
	touch $(STAMP)

# solcjs, OpenZeppelin and anvil come from npm, pinned by package-lock.json.
$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $(NODE_STAMP)

install: $(STAMP) $(NODE_STAMP)

# Recompile the escrow into chalicelib/settlement/artifacts/ (committed, and packaged with the
# control plane: the runtime needs no compiler).
contracts: $(NODE_STAMP)
	node contracts/build.js

demo: install
	$(PY) scripts/demo.py $(ARGS)

test: install
	$(PY) -m pytest -q

test-unit: install
	$(PY) -m pytest -q -m "not stack"

bench: install
	$(PY) -m bench

lint-template: $(STAMP)
	$(VENV)/bin/cfn-lint template.yaml

clean:
	rm -rf $(VENV) node_modules .proofline .pytest_cache bench/results.json
