# Two commands do all set-up on a fresh machine (Python 3.11, no GPU needed):
#   make demo   – create .venv, install histlib, run the demo study on the embedded sample (HTML under results/demo/)
#   make test   – create .venv, install histlib with test extras, run the default (fast, CPU) test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
PYTEST_ARGS ?=

.PHONY: demo test test-slow test-online test-gpu test-notebooks gpu-check lab lint clean-venv

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test]'
	$(PY) -m ipykernel install --sys-prefix --name histlib --display-name "Python (histlib)" > /dev/null
	touch $@

venv: $(VENV)/.installed

# independent steps side by side (the two fine-tunes, generations, classifiers): 3 min 48 s on 2 idle cores
# (7 min 17 s one step after another with the earlier budgets; docs/benchmarks.md)
DEMO_JOBS ?= 2
demo: $(VENV)/.installed
	$(PY) -m histlib study run studies/demo.yaml --executor local --jobs $(DEMO_JOBS)

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: $(VENV)/.installed
	$(PY) -m pytest -m "slow and not online and not gpu" $(PYTEST_ARGS)

test-online: $(VENV)/.installed
	$(PY) -m pytest -m online $(PYTEST_ARGS)

test-gpu: $(VENV)/.installed
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)

test-notebooks: $(VENV)/.installed
	$(PY) -m pytest -m notebooks $(PYTEST_ARGS)

# On a machine with a CUDA GPU: build the kernels, run the gpu tests and the ops benchmark (JSON under $$OUT if set).
gpu-check:
	bash tools/gpu_check.sh

# JupyterLab refuses to start as root (containers) unless told it may
lab: $(VENV)/.installed
	$(VENV)/bin/jupyter lab notebooks/ $$(test "$$(id -u)" = 0 && echo --allow-root)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check histlib tests benchmarks

clean-venv:
	rm -rf $(VENV)
