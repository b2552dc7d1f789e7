# steering: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Passive OpenMP waiting keeps 2-thread torch fast on a shared CPU.
export OMP_WAIT_POLICY ?= PASSIVE
export GRADIO_ANALYTICS_ENABLED ?= False

.PHONY: run install test lint bench demo-model screenshots clean

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

# Style and type checks.
lint: install
	$(BIN)/ruff check steering ui tests
	$(BIN)/ruff format --check steering ui tests
	$(BIN)/mypy steering

# Measure the engine's speed (steering overhead, A/B, 8 users, vs generate()) and sae-stats and
# decoder-neighbour figures; 5-10 min on a 2-core CPU.
bench: install
	$(BIN)/python -m steering.bench --out bench-results.json

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
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info
