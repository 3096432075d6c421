# The two commands of the README. Both install what is missing first (scripts/setup.sh).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test fuzz bench clean-lab
setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	$(PY) -m pytest -p no:cacheprovider --durations=40 tests

# Not in make test (which runs 50,000): FUZZ_PACKETS packets through every entry program by
# BPF_PROG_TEST_RUN, a table of verdicts and drop reasons per program (tests/bpf/fuzz.py,
# README "Fuzzing"). FUZZ_SEED=N replays a run; without it the seed is random and printed.
# FUZZ_JOBS programs run at once, each in a process of its own.
FUZZ_PACKETS ?= 1000000
FUZZ_JOBS ?= 2
fuzz: setup
	$(PY) -m tests.bpf.fuzz --packets $(FUZZ_PACKETS) --jobs $(FUZZ_JOBS) \
		$(if $(FUZZ_SEED),--seed $(FUZZ_SEED))

# Not a test: timings (README "Bench"). Every bench writes its JSON (and its PNG charts) into
# bench/results/, which is committed: the README shows them. BENCH_SERVICES=N changes the
# 10,000 services of lb_program. The side-by-side benches run the references in
# ../shared/bench/ (kproxy_baseline.py, pktbench) in the same run.
BENCH_SERVICES ?= 10000
R := bench/results
bench: setup
	@mkdir -p $(R)
	$(PY) bench/lb_program.py --services $(BENCH_SERVICES) --json > $(R)/lb_program.json.tmp
	@mv $(R)/lb_program.json.tmp $(R)/lb_program.json
	$(PY) bench/policy_program.py --json > $(R)/policy_program.json.tmp
	@mv $(R)/policy_program.json.tmp $(R)/policy_program.json
	$(PY) bench/policy_packet.py --json > $(R)/policy_packet.json.tmp
	@mv $(R)/policy_packet.json.tmp $(R)/policy_packet.json
	$(PY) bench/lab_rate.py --json > $(R)/lab_rate.json.tmp
	@mv $(R)/lab_rate.json.tmp $(R)/lab_rate.json
	$(PY) bench/packet.py --out $(R)/packet.json
	$(PY) bench/events_packet.py --out $(R)/events_packet.json
	$(PY) bench/control_plane.py --out $(R)/control_plane.json
	$(PY) bench/first_packet.py --out-dir $(R)
	$(PY) bench/throughput.py --out-dir $(R)

clean-lab: setup
	$(VENV)/bin/datapath lab down
