# mmr: two commands on a fresh machine: `make demo`, `make test`.
# `setup` installs the CPU stack that ../shared/PLATFORM.md recommends into .venv;
# on GPU machines install with `pip install -e .[sft,gpu,rl]` instead.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mmr-setup-done
# Every pip call below sees these pins, so nothing can pull a different torch.
export PIP_CONSTRAINT := $(CURDIR)/requirements/cpu-constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup test lint format demo bench clean

setup: $(STAMP)

$(STAMP): setup.py requirements/cpu-constraints.txt requirements/rl-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "setuptools>=70" wheel
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	# DeepSpeed's build must see the venv's torch, hence no build isolation.
	$(BIN)/pip install --quiet --no-build-isolation deepspeed==0.19.8
	# verl without its deps (its extras pin torch 2.11), then its pure-Python needs.
	$(BIN)/pip install --quiet --no-deps verl==0.9.1
	$(BIN)/pip install --quiet -r requirements/rl-cpu.txt
	$(BIN)/pip install --quiet -e '.[sft,data,dev]'
	$(BIN)/python -c "import torch, torchvision, transformers, deepspeed, verl, ray; print('mmr setup: torch', torch.__version__, 'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__, 'verl', verl.__version__)"
	touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# pytest exits 5 when it collected no tests; that is reported, not a failure.
test: lint
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline $(BIN)/pytest -q tests; \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; rc=0; fi; exit $$rc

demo: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline $(BIN)/mmr demo

# Prints ratios measured in one run; figures and the machine they came from: benchmarks/RESULTS.md.
bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/rewards.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/sft_throughput.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/sft_loss_memory.py
	$(BIN)/python benchmarks/select_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
