# The two commands of the README. Both install what is missing first (scripts/setup.sh).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test clean-lab
setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	$(PY) -m pytest -p no:cacheprovider tests

clean-lab: setup
	$(VENV)/bin/datapath lab down
