# The README's two commands, each doing all of its own set-up on a fresh clone:
#   make demo   the main job, end to end, in the lab (a simulated homelab; needs root)
#   make test   lint, types and the whole test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Debian packages the tests and the lab need; installed when running as root and missing.
# systemd: its offline tools (systemd-analyze calendar and verify) check schedules and units.
# dpkg-dev: dpkg-scanpackages indexes the lab's apt repository (dpkg-deb, in dpkg, builds it).
# chromium-headless-shell: the browser the status page's test drives (through Playwright).
DEBIAN_PACKAGES := openssh-server openssh-client sudo iproute2 util-linux curl ca-certificates \
  systemd dpkg-dev chromium-headless-shell

.PHONY: demo tour test lint typecheck pytest bench sysdeps clean

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null && \
	    rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); \
	  else echo "python3 -m venv failed: install python3-venv" >&2; exit 1; fi; }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,dev,lab]'
	@# Bytecode up front: the CLI starts ~30 ms faster where Python may not write its cache.
	@$(BIN)/python -m compileall -q src >/dev/null
	@touch $(STAMP)

sysdeps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "missing Debian packages:$$missing (run make as root to install them)" >&2; fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy src

pytest: $(STAMP) sysdeps
	$(BIN)/pytest -q

test: lint typecheck pytest

demo: $(STAMP) sysdeps
	@$(BIN)/opskit lab demo

# The same project without root or the lab: inventory, validation and a reviewed dry-run plan.
tour: $(STAMP)
	@echo "== the homelab inventory"; $(BIN)/opskit inventory list
	@echo; echo "== the shipped runbooks, validated"; $(BIN)/opskit validate
	@echo; $(BIN)/opskit list
	@echo; echo "== health on the AI VM, planned (a dry run: nothing is contacted or changed)"
	@$(BIN)/opskit run health --limit vm:110 --dry-run
	@echo; echo "== the same plan as Markdown, for review in a pull request"
	@$(BIN)/opskit plan health --limit vm:110 --format md
	@echo; echo "Next: opskit inventory show ai | opskit show health | opskit schema runbook | opskit --help"

bench: $(STAMP)
	$(BIN)/python bench/validate_speed.py
	$(BIN)/python bench/engine_scale.py
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python bench/proxmox_scale.py
	$(BIN)/python bench/host_state.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
