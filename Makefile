# The two commands of the README. Both install what is missing first (scripts/setup.sh).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench clean-lab
setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	$(PY) -m pytest -p no:cacheprovider tests

# Not a test: timings (README "Bench"). BENCH_SERVICES=N to change the 10k services.
BENCH_SERVICES ?= 10000
bench: setup
	$(PY) bench/lb_program.py --services $(BENCH_SERVICES)
	$(PY) bench/policy_program.py
	$(PY) bench/policy_packet.py
	$(PY) bench/lab_rate.py

clean-lab: setup
	$(VENV)/bin/datapath lab down
