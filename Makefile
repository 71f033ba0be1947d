# Makefile: the everyday commands. Run from the repository root with the venv active (. .venv/bin/activate);
# `make test PYTHON=/path/to/python` picks another interpreter. CONTRIBUTING.md explains the test tiers.
PYTHON ?= python
export WANDB_MODE ?= offline

.PHONY: test test-fast lint docs-check durations

test:       # the whole suite, as .ci/run runs it, in parallel workers (one per core, up to 4); the 15 slowest tests are listed at the end
	$(PYTHON) -m pytest -q -n auto --maxprocesses 4 --dist loadgroup --no-loadscope-reorder --durations=15

test-fast:  # the inner loop: every test that runs neither the CLI nor a real Trainer
	$(PYTHON) -m pytest -q -n auto --maxprocesses 4 --dist loadgroup --no-loadscope-reorder -m "not e2e"

lint:       # ruff, with the settings of pyproject.toml
	$(PYTHON) -m ruff check .

docs-check: # the lists docs/ repeats from the code (config options, probes, patterns, metric keys), references and links
	$(PYTHON) -m pytest -q tests/test_docs.py

durations:  # the whole suite, then each module's seconds into tests/durations.json: the order test groups start in (longest first)
	$(PYTHON) -m pytest -q -n auto --maxprocesses 4 --dist loadgroup --no-loadscope-reorder --write-durations
