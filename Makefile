# Two commands on a fresh machine: `make run` (the main job) and `make test` (the whole suite).
# Both create the virtual environment, install the pinned dependencies and prepare the corpora first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= conf/quick.yaml

.PHONY: setup data run test test-tools test-fast lint bench clean

setup: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Idempotent: checks the cache manifest and only prepares what is missing or damaged.
data: $(VENV)/.installed
	$(PY) -m pipeline setup

run: setup
	$(PY) -m pipeline sweep $(CONFIG)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check pipeline tests benchmarks jobs

# Tests run in a network namespace that has only loopback: Ray and MLflow then bind 127.0.0.1,
# and the run proves that nothing needs the network.
test: setup lint test-tools
	bash scripts/offline.sh $(PY) -m pytest $(PYTEST_ARGS)

# tests/cluster/test_launcher.py (`ray up` over SSH) needs an SSH server and rsync, and the screenshot
# tests (tests/test_mlflow_ui.py, tests/test_report_html.py) need Debian's `chromium`: installed here, before the tests go offline,
# if missing, as root, with apt-get, and where no init system would start the server (a container);
# else those tests are skipped and say why.
test-tools:
	@pkgs=""; \
	[ -x /usr/sbin/sshd ] && command -v rsync >/dev/null || pkgs="openssh-server openssh-client rsync"; \
	command -v chromium >/dev/null || pkgs="$$pkgs chromium"; \
	if [ -z "$$pkgs" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ ! -d /run/systemd/system ]; then \
	  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
	    --no-install-recommends $$pkgs >/dev/null \
	  || echo "make: could not install $$pkgs; the tests that need them will be skipped" >&2; \
	else echo "make: missing $$pkgs: the tests that need them will be skipped" >&2; fi

# The quick loop: everything but the tests marked slow (`make test` still runs them all).
test-fast: setup lint
	bash scripts/offline.sh $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) results mlflow.db mlruns
