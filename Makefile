# JARVIS Voice Engine: `make demo` runs the whole stack with a simulated kiosk; `make test` runs the tests.
.PHONY: setup demo up test lint bench migrate models

PY := .venv/bin/python

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m jarvis_local.demo

up: setup
	$(PY) -m jarvis_local.demo --up

test: setup
	$(PY) -m pytest -q

lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy agent token_service jarvis jarvis_local plugins bench

bench: setup
	$(PY) -m bench.token_service --quick

# The STT and TTS checkpoints and configured voices into the Hugging Face cache (HF_HOME), verified;
# the engines then start with HF_HUB_OFFLINE=1.
models: setup
	$(PY) -m jarvis_local.fetch_models

migrate: setup
	$(PY) -m jarvis.migrate
