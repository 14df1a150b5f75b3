"""The reward's config schema: one dataclass per section, loaded with `mmr.config.load_config`.

    cfg = load_config(RewardConfig, "recipes/omr_7b_gspo_reward.yaml", ["judge.enabled=true"])

Sections: `weights` (the composite), `accuracy` (rules + math-verify workers), `judge`
(the optional LLM judge), `length` (the overthinking penalty), `plugin` (how a user
function named by `function` joins the score). Secrets never live here: the judge's API
key is read from the environment variable named by `judge.api_key_env`, so a saved
`config.yaml` cannot leak it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from mmr.config import ConfigError, check_choice, positive

__all__ = [
    "AccuracyConfig",
    "JudgeConfig",
    "LengthConfig",
    "PluginConfig",
    "RewardConfig",
    "WeightsConfig",
]

LENGTH_MODES = ("none", "budget", "group", "both")
PLUGIN_MODES = ("replace", "add")
_TRUE = {"1", "true", "yes", "on"}


@dataclass
class WeightsConfig:
    accuracy: float = 0.9  # OpenMMReasoner's weight of the accuracy part
    format: float = 0.1  # OpenMMReasoner's weight of the format part

    def __post_init__(self) -> None:
        # A negative weight would reward wrong answers or missing tags: a sign error.
        positive("weights.accuracy", self.accuracy, zero_ok=True)
        positive("weights.format", self.format, zero_ok=True)
        if self.accuracy + self.format == 0:
            raise ConfigError("config keys 'weights.accuracy' and 'weights.format' are both 0")


@dataclass
class AccuracyConfig:
    math_verify: bool = True  # run math-verify on what the relaxed rules cannot decide
    # Worker processes for math-verify, and for the rules of batches >= chunk_size rows
    # (0: everything in this process, main thread only).
    workers: int = 2
    parse_timeout_s: int = 2  # math-verify's own timeout per parse (whole seconds, signal-based)
    verify_timeout_s: int = 2  # math-verify's own timeout per comparison (whole seconds)
    hard_timeout_s: float = 6.0  # backstop: a worker stuck this long on one item is killed
    chunk_size: int = 64  # most items sent to a worker in one message
    max_answer_chars: int = 1000  # longer answers skip math-verify (accuracy 0, error set)

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ConfigError("config key 'accuracy.workers' must be >= 0")
        if self.parse_timeout_s < 1 or self.verify_timeout_s < 1:
            raise ConfigError(
                "config keys 'accuracy.parse_timeout_s' and 'accuracy.verify_timeout_s' must be "
                ">= 1 (math-verify's timeouts are whole seconds; 0 would disable them)"
            )
        if self.hard_timeout_s <= 0:
            raise ConfigError("config key 'accuracy.hard_timeout_s' must be > 0")
        if self.chunk_size < 1:
            raise ConfigError("config key 'accuracy.chunk_size' must be >= 1")


@dataclass
class JudgeConfig:
    enabled: bool | None = None  # None: follow the USE_LLM_JUDGE environment variable
    base_url: str | None = None  # None: OPENAI_BASE_URL (e.g. http://host:8000/v1)
    model: str | None = None  # None: OPENAI_MODEL_NAME, else "judge"
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key (never stored)
    concurrency: int = 64  # requests in flight at once
    timeout_s: float = 30.0  # wall-clock limit of one request
    retries: int = 2  # extra attempts after a failed request (500, timeout, garbage)
    backoff_s: float = 0.5  # first retry delay; doubles each retry
    max_tokens: int = 64  # reply budget; the verdict is one word
    prompt_file: str | None = None  # None: the packaged mmr/rewards/prompts/judge.txt
    failure_threshold: int = 16  # consecutive failed requests that mark the judge down
    cooldown_s: float = 30.0  # while down, items fall back to the rule result at once
    cache_size: int = 100_000  # verdicts kept, keyed by (question, gold, extracted answer)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError("config key 'judge.concurrency' must be >= 1")
        if self.timeout_s <= 0:
            raise ConfigError("config key 'judge.timeout_s' must be > 0")
        if self.retries < 0:
            raise ConfigError("config key 'judge.retries' must be >= 0")

    def is_enabled(self) -> bool:
        if self.enabled is not None:
            return self.enabled
        return os.environ.get("USE_LLM_JUDGE", "").strip().lower() in _TRUE

    def resolved_base_url(self) -> str | None:
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or None

    def resolved_model(self) -> str:
        return self.model or os.environ.get("OPENAI_MODEL_NAME") or "judge"


@dataclass
class LengthConfig:
    mode: str = "none"  # none | budget | group | both (see mmr/rewards/length.py)
    weight: float = 0.1  # weight of the length part in the total (mmr's choice; set per recipe)
    budget_tokens: int = 24_600  # budget: no penalty up to here (recipe max 28,696 - DAPO's 4,096)
    max_tokens: int = 28_696  # budget: the penalty reaches -1 here (OpenMMReasoner's max response)
    tokenizer: str | None = None  # tokenizer path for counting when rows have no response_tokens
    chars_per_token: float = 4.0  # without counts or a tokenizer: tokens ~ characters / this

    def __post_init__(self) -> None:
        check_choice("length.mode", self.mode, LENGTH_MODES)
        if self.mode in ("budget", "both") and not 0 <= self.budget_tokens < self.max_tokens:
            raise ConfigError(
                "config keys 'length.budget_tokens' and 'length.max_tokens' need "
                f"0 <= budget_tokens < max_tokens (got {self.budget_tokens}, {self.max_tokens})"
            )
        if self.chars_per_token <= 0:
            raise ConfigError("config key 'length.chars_per_token' must be > 0")


@dataclass
class PluginConfig:
    mode: str = "replace"  # replace: its score is the total; add: total += weight * its score
    weight: float = 1.0  # weight of the plug-in's score in `add` mode
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for the call
    timeout_s: float = 5.0  # a call running longer scores 0; its worker is killed and replaced
    workers: int = 1  # supervised plug-in processes; 0: in this process (debugging: no timeout)

    def __post_init__(self) -> None:
        check_choice("plugin.mode", self.mode, PLUGIN_MODES)
        if self.timeout_s <= 0:
            raise ConfigError("config key 'plugin.timeout_s' must be > 0")
        if self.workers < 0:
            raise ConfigError("config key 'plugin.workers' must be >= 0")


@dataclass
class RewardConfig:
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    accuracy: AccuracyConfig = field(default_factory=AccuracyConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    length: LengthConfig = field(default_factory=LengthConfig)
    function: str | None = None  # plug-in with verl's signature: path/to/file.py:fn or pkg.mod:fn
    plugin: PluginConfig = field(default_factory=PluginConfig)
