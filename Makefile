# JARVIS Voice Engine: `make demo` runs the whole stack with a simulated kiosk; `make test` runs the tests.
.PHONY: setup demo up test lint bench migrate

PY := .venv/bin/python

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m jarvis.demo

up: setup
	$(PY) -m jarvis.demo --up

test: setup
	$(PY) -m pytest -q

lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy agent token_service jarvis plugins bench

bench: setup
	$(PY) -m bench.token_service --quick

migrate: setup
	$(PY) -m jarvis.migrate
