.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install browser index run lint check test eval bench clean

help:
	@echo "make install  create .venv and install everything (first time ~4.5 min, ~2 min once llama-cpp is built; then a no-op)"
	@echo "make index    install, then index the bundled article into index/"
	@echo "make run      install, index, then open the chat on http://127.0.0.1:7860"
	@echo "make lint     install, then ruff (assistant, tests) and mypy (assistant)"
	@echo "make check    install, lint, then the fast tests: not marked slow, server or browser (under 2 min)"
	@echo "make test     install (and chromium for the browser tests), lint, then run all the tests"
	@echo "make eval     install, then run the evaluation"
	@echo "make bench    install, then measure speed, memory and scale (~15 min; bench/results/)"
	@echo "make clean    remove .venv and the index (keeps index/.gitkeep)"

install: $(STAMP)

# scripts/install.sh also checks a hash of these files, so a touched but unchanged file costs a second.
$(STAMP): pyproject.toml requirements.lock scripts/install.sh
	@bash scripts/install.sh

index: install
	$(BIN)/assistant index

run: index
	$(BIN)/assistant ui

# The browser tests drive Debian's chromium; installed by apt-get the first time.
browser:
	@bash scripts/install-browser.sh

lint: install
	$(BIN)/ruff check assistant tests
	$(BIN)/mypy assistant

# The markers are registered in pyproject.toml; each test has a time limit there too (pytest-timeout).
check: lint
	$(BIN)/python -m pytest -q -m "not slow and not server and not browser"

test: install browser lint
	$(BIN)/python -m pytest -q

eval: install
	$(BIN)/assistant eval

bench: install
	$(BIN)/assistant bench

clean:
	rm -rf $(VENV)
	find index -mindepth 1 -maxdepth 1 ! -name .gitkeep -exec rm -rf {} +
