# The README's two commands: `make run` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test soak bench install check-unit clean link

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The service on the example config. A sample photo is dropped into the inbox so that the first
# artwork appears in run/outbox; copy more photos into run/inbox while it runs. Ctrl-C stops it.
# `estimate` times a few steps on this machine first and says how long a photo will take.
run: $(STAMP)
	mkdir -p run/inbox
	[ -n "$$(ls -A run/inbox)" ] || cp samples/chelsea.png run/inbox/
	$(BIN)/stylewatch check -c config.example.yaml
	$(BIN)/stylewatch estimate -c config.example.yaml
	$(BIN)/stylewatch run -c config.example.yaml

# `stylewatch` on your PATH: a link in ~/.local/bin to the one in .venv/bin.
link: $(STAMP)
	mkdir -p $(HOME)/.local/bin
	ln -sf $(abspath $(BIN))/stylewatch $(HOME)/.local/bin/stylewatch
	@case ":$$PATH:" in *":$(HOME)/.local/bin:"*) ;; \
	  *) echo "note: $(HOME)/.local/bin is not on your PATH; add it in your shell's profile" ;; esac

test: $(STAMP)
	$(BIN)/ruff check engine daemon tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest -m "not slow"

# The long fault and load runs (kill -9 loops, bursts, big fuzz runs, a 4096 px output on CPU).
soak: $(STAMP)
	$(BIN)/pytest -m slow

bench: $(STAMP)
	$(BIN)/python bench/bench_engine.py
	$(BIN)/python bench/bench_daemon.py

# The systemd service (as root: sudo make install). See systemd/README.md.
install:
	systemd/install.sh

# The units' sandboxes must stay below an exposure of 3.0; the installer must stay shellcheck-clean.
check-unit:
	shellcheck systemd/install.sh
	systemd-analyze security --offline=true --threshold=30 systemd/stylewatch.service
	systemd-analyze security --offline=true --threshold=30 systemd/stylewatch-web.service
	systemd-analyze security --offline=true --threshold=30 systemd/stylewatch-worker@.service

clean:
	rm -rf $(VENV) run .pytest_cache .mypy_cache .ruff_cache
