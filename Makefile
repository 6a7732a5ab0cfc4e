# `make demo` and `make test` each do all their set-up on a fresh Debian 12
# machine: the dev cluster (slurm/devcluster, as root), then .venv with
# hpcbinder installed editable and its test tools.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
DEMO_USER ?= alice

.PHONY: demo test cluster cluster-down venv site lint base bench

$(BIN)/hpcbinder: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# JupyterHub's proxy, from the npm registry, kept inside the venv.
$(VENV)/chp/node_modules/.bin/configurable-http-proxy: | $(BIN)/hpcbinder
	command -v npm >/dev/null || $(SUDO) apt-get install -y -q nodejs npm
	npm install --silent --no-audit --no-fund --prefix $(VENV)/chp configurable-http-proxy@5

# Clients the Binder service is tested with: BinderHub's own JavaScript
# client and Playwright (npm, inside the venv) driving Debian's Chromium,
# and wrk for the load benchmark.
WEB := $(VENV)/web
$(WEB)/node_modules/@jupyterhub/binderhub-client/package.json: | $(BIN)/hpcbinder
	command -v chromium >/dev/null && command -v wrk >/dev/null || \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium wrk
	npm install --silent --no-audit --no-fund --prefix $(WEB) \
	  @jupyterhub/binderhub-client@0.5.0 playwright-core@1.65.1

# Thebe (executablebooks), pinned, as a documentation page loads it: its
# published bundle (lib/, with its dependencies built in), from npm pack.
THEBE_VERSION := 0.9.3
$(WEB)/thebe/package.json: | $(WEB)/node_modules/@jupyterhub/binderhub-client/package.json
	rm -rf $(WEB)/thebe $(WEB)/package $(WEB)/thebe-$(THEBE_VERSION).tgz
	cd $(WEB) && npm pack --silent thebe@$(THEBE_VERSION) >/dev/null && \
	  tar xzf thebe-$(THEBE_VERSION).tgz && mv package thebe && rm thebe-$(THEBE_VERSION).tgz

venv: $(BIN)/hpcbinder $(VENV)/chp/node_modules/.bin/configurable-http-proxy \
	$(WEB)/node_modules/@jupyterhub/binderhub-client/package.json $(WEB)/thebe/package.json

cluster:
	$(SUDO) slurm/devcluster up

# hpcbinder installed as a site installs it (system Python, /opt/hpcbinder),
# the shipped sudoers file, and the build server running as the build account.
site: cluster
	$(SUDO) slurm/devcluster install $(CURDIR)

cluster-down:
	$(SUDO) slurm/devcluster down

lint: venv
	$(BIN)/ruff check hpcbinder tests
	$(BIN)/ruff format --check hpcbinder tests
	$(BIN)/mypy

# The site base image every repository image builds on (a few minutes, once),
# built by the build account.
base: site
	$(SUDO) runuser -u hpcbuild -- /opt/hpcbinder/venv/bin/hpcbinder base build --missing

test: cluster venv site lint base
	$(SUDO) $(BIN)/pytest

# Benchmarks: each prints one JSON line with its figure and the floor it is
# compared against, measured in the same run. `make test` runs each once in
# its quick mode, timing nothing (tests/integration/test_benchmarks.py); so
# does `make bench BENCH_FLAGS=--quick`.
bench: venv base
	$(SUDO) $(BIN)/python -m tests.bench.rebuild_code_only $(BENCH_FLAGS)
	$(SUDO) $(BIN)/python -m tests.bench.dedup $(BENCH_FLAGS)
	$(SUDO) $(BIN)/python -m tests.bench.env_build $(BENCH_FLAGS)
	$(SUDO) $(BIN)/python -m tests.bench.launch $(BENCH_FLAGS)
	$(SUDO) $(BIN)/python -m tests.bench.binder_load $(BENCH_FLAGS)
	$(SUDO) $(BIN)/python -m tests.bench.scale $(BENCH_FLAGS)

# The doctor's report with a real job, then JupyterHub and the Binder service
# in the foreground, an example repository built and its link printed.
demo: cluster venv site base
	$(SUDO) $(BIN)/hpcbinder doctor --user $(DEMO_USER)
	$(SUDO) configs/demo
