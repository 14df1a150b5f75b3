"""Recipe configs: YAML + dotted command-line overrides -> typed dataclasses.

Each stage defines its schema as nested dataclasses (one per section, each field with a
default and a one-line docstring comment). `load_config` merges, in order:

    schema defaults  <-  recipe YAML  <-  `key.sub=value` overrides

and returns an instance of the schema. OmegaConf does the merging, the value parsing
(`a.b=[x,y]`, `a.b=null`, `${other.key}` interpolation) and the type conversion; this
module adds what users need when they get it wrong: an unknown key fails at once with
its full dotted name and the closest valid names, and a wrong type names the key and
the type it expects. Fields typed `dict[str, Any]` are free-form (for example verl's own
keys) and are not checked here.

    cfg = load_config(SFTConfig, "recipes/omr_7b_sft.yaml", ["optim.lr=5e-6"])
    save_config(cfg, run_dir / "config.yaml")
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")

__all__ = [
    "ConfigError",
    "ModelSection",
    "OptimSection",
    "TrainerSection",
    "check_choice",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "parse_overrides",
    "positive",
    "require_paths",
    "save_config",
]


class ConfigError(ValueError):
    """A recipe or override that does not fit the schema; the message names the key."""


def load_config(
    schema: type[T],
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
) -> T:
    """Build a `schema` instance from defaults, an optional YAML file and dotted overrides."""
    layers: list[tuple[str, dict[str, Any]]] = []
    if path is not None:
        layers.append((str(path), _read_yaml(Path(path))))
    overrides = list(overrides)
    if overrides:
        layers.append(("command line", parse_overrides(overrides)))
    for origin, layer in layers:
        _check_keys(schema, layer, prefix="", origin=origin)

    merged = OmegaConf.structured(schema)
    try:
        for _, layer in layers:
            merged = OmegaConf.merge(merged, layer)
        return OmegaConf.to_object(merged)  # resolves ${...} and validates types
    except OmegaConfBaseException as err:
        raise _as_config_error(err, schema) from None


def config_from_dict(schema: type[T], data: Mapping[str, Any], origin: str = "a dict") -> T:
    """Build a `schema` instance from a nested mapping (the inverse of `config_to_dict`),
    with the same checks as `load_config`; `origin` names the mapping in errors."""
    _check_keys(schema, data, prefix="", origin=origin)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), data))
    except OmegaConfBaseException as err:
        raise _as_config_error(err, schema) from None


def check_choice(key: str, value: Any, allowed: Iterable[Any]) -> None:
    """For `__post_init__` checks: OmegaConf has no Literal types, so choices are checked here."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(
            f"config key '{key}' is {value!r}; choose one of {', '.join(map(str, allowed))}"
        )


def positive(key: str, value: float, *, zero_ok: bool = False) -> None:
    """For `__post_init__` checks: `value` must be > 0 (>= 0 with `zero_ok`)."""
    if value < 0 or (value == 0 and not zero_ok):
        raise ConfigError(
            f"config key '{key}' must be {'>= 0' if zero_ok else '> 0'}, got {value!r}"
        )


def require_paths(key: str, paths: Iterable[str]) -> None:
    """Fail early, naming the key, when a file or folder a recipe names does not exist."""
    paths = list(paths)
    if not paths:
        raise ConfigError(f"config key '{key}' is empty: name the files or folders to read")
    for path in paths:
        if not Path(path).exists():
            raise ConfigError(f"config key '{key}': {path} does not exist")


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """`["optim.lr=1e-5", "model.freeze=[vision_tower]"]` -> nested dict (YAML-typed values)."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: cannot parse the value: {err}") from None
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override")
        node[leaf] = value
    return out


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config dataclass (paths and enums as strings)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (the `config.yaml` beside every run's outputs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")
    return path


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def _check_keys(schema: type, layer: Mapping[str, Any], prefix: str, origin: str) -> None:
    """Reject keys the schema does not have, naming the closest valid ones."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for key, value in layer.items():
        full = f"{prefix}{key}"
        if key not in fields:
            valid = sorted(fields)
            close = difflib.get_close_matches(str(key), valid, n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(prefix + c for c in close)}? " if close else ""
            raise ConfigError(
                f"unknown config key '{full}' (from {origin}); {hint}"
                f"valid keys{' under ' + prefix.rstrip('.') if prefix else ''}: {', '.join(valid)}"
            )
        sub = _dataclass_of(hints[key])
        if sub is not None:
            if isinstance(value, Mapping):
                _check_keys(sub, value, prefix=f"{full}.", origin=origin)
            elif value is not None:
                raise ConfigError(
                    f"config key '{full}' (from {origin}) is a section with keys "
                    f"{', '.join(f.name for f in dataclasses.fields(sub))}; "
                    f"got the value {value!r}"
                )


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass inside a field type (`X` or `X | None`), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _as_config_error(err: OmegaConfBaseException, schema: type) -> ConfigError:
    key = getattr(err, "full_key", None) or "?"
    expected = _field_type(schema, str(key))
    first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
    if expected is not None:
        return ConfigError(f"config key '{key}' expects {expected}: {first_line}")
    return ConfigError(f"config key '{key}': {first_line}")


def _field_type(schema: type, dotted: str) -> str | None:
    tp: Any = schema
    for part in dotted.split("."):
        dc = _dataclass_of(tp)
        if dc is None:
            return None
        hints = typing.get_type_hints(dc)
        if part not in hints:
            return None
        tp = hints[part]
    return _type_name(tp)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


# ---- sections both trainers compose (SFT and `rl local`; each subclass sets its defaults)


@dataclass
class ModelSection:
    path: str | None = None  # checkpoint folder or HF hub id (required)
    freeze: list[str] = field(default_factory=lambda: ["vision_tower", "projector"])
    attn_implementation: str | None = None  # null: the trainer's choice (see its section)
    dtype: str = "auto"  # auto: bf16 on GPU, fp32 on CPU; or float32 / bfloat16
    max_pixels: int | None = None  # image processor budget per image (null: the checkpoint's)
    min_pixels: int | None = None  # lower image budget (null: the checkpoint's)

    def __post_init__(self) -> None:
        check_choice("model.dtype", self.dtype, ("auto", "float32", "bfloat16"))
        for key in ("max_pixels", "min_pixels"):
            if getattr(self, key) is not None:
                positive(f"model.{key}", getattr(self, key))


@dataclass
class OptimSection:
    lr: float = 1e-5  # peak learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    eps: float = 1e-8  # AdamW epsilon
    scheduler: str = "cosine"  # the trainer's schedules (see its section)
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    grad_clip: float = 1.0  # max global grad norm (0: off)

    def __post_init__(self) -> None:
        positive("optim.lr", self.lr)
        positive("optim.eps", self.eps)
        positive("optim.weight_decay", self.weight_decay, zero_ok=True)
        positive("optim.grad_clip", self.grad_clip, zero_ok=True)
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(
                f"config key 'optim.min_lr_ratio' must be in [0, 1], got {self.min_lr_ratio}"
            )
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(
                f"config key 'optim.betas' must be two numbers in [0, 1), got {self.betas}"
            )


@dataclass
class TrainerSection:
    output_dir: str = "runs/train"  # run folder: config.yaml, metrics.jsonl, checkpoints, final/
    seed: int = 42  # seeds data order and every random draw of the run
    epochs: int = 1  # passes over the data (max_steps wins when > 0)
    max_steps: int = 0  # steps in all; 0: epochs x steps per epoch
    save_steps: int = 500  # checkpoint every N steps (0: only at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk (0: all)
    resume: str | None = None  # null | "auto" (latest complete in output_dir) | a checkpoint folder
    log_steps: int = 1  # metrics every N steps
    export: bool = True  # write an HF folder to output_dir/final at the end
    device: str = "auto"  # auto | cpu | cuda

    def __post_init__(self) -> None:
        check_choice("trainer.device", self.device, ("auto", "cpu", "cuda"))
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ConfigError("set trainer.max_steps or trainer.epochs to a positive number")
        positive("trainer.save_steps", self.save_steps, zero_ok=True)
        positive("trainer.keep_checkpoints", self.keep_checkpoints, zero_ok=True)
        positive("trainer.log_steps", self.log_steps)
