# The README's two commands: `make run` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The service on the example config. A sample photo is dropped into the inbox so that the first
# artwork appears in run/outbox; copy more photos into run/inbox while it runs. Ctrl-C stops it.
run: $(STAMP)
	mkdir -p run/inbox
	[ -n "$$(ls -A run/inbox)" ] || cp samples/chelsea.png run/inbox/
	$(BIN)/stylewatch check -c config.example.yaml
	$(BIN)/stylewatch run -c config.example.yaml

test: $(STAMP)
	$(BIN)/ruff check engine daemon tests bench
	$(BIN)/mypy
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/bench_engine.py

clean:
	rm -rf $(VENV) run .pytest_cache .mypy_cache .ruff_cache
