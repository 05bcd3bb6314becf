# JARVIS Voice Engine: `make demo` runs the whole stack with a simulated kiosk; `make test` runs the tests.
.PHONY: setup demo up test lint bench migrate

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

migrate: setup
	$(PY) -m jarvis.migrate
