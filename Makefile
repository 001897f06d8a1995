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

# Until the daemon lands: a one-shot stylization of a bundled photo with a bundled painting.
run: $(STAMP)
	mkdir -p out
	$(BIN)/stylewatch stylize samples/chelsea.png -s samples/starry_night.jpg -o out/chelsea-starry.jpg --size 256 --steps 60

test: $(STAMP)
	$(BIN)/ruff check engine daemon tests bench
	$(BIN)/mypy
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/bench_engine.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
