"""Load, validate, override and save run configurations.

Precedence: schema defaults < YAML files (a file's `base:` is merged before the file itself)
< `section.key=value` overrides from the command line. OmegaConf's structured configs do the
merging and the type checks; this module turns their errors into messages that name the file,
the key and what was wrong, and resolves `base:` chains.

    cfg = load_config("configs/cifar10/resnet20.yaml", ["optim.lr=0.05"])
    cfg.optim.lr            # 0.05
    save_config(cfg, "runs/x/config.yaml"); load_config("runs/x/config.yaml") == cfg
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from pipeline.config.schema import ExperimentConfig
from pipeline.dist import exit_codes

BASE_KEY = "base"
COMMAND_LINE = "the command line"

# Keys whose values never go to a log or W&B, wherever they appear.
_SECRET_KEY = re.compile(r"(api_?key|token|secret|password|passwd|credential)", re.IGNORECASE)


# Keys that were renamed: (section, old key) -> (new key, why). A file or override with the old key still loads
# (run directories keep their config.yaml), with one warning.
_RENAMED = {("data", "eval_batch_size"): ("eval_batch_per_gpu", "the evaluation batch is now per GPU, so that it does "
                                          "not shrink as GPUs are added")}

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and the key."""

    exit_code = exit_codes.USAGE


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Build the resolved config from a YAML file (with its bases) and command-line overrides."""
    merged = OmegaConf.structured(ExperimentConfig)
    if path is not None:
        for source in _base_chain(Path(path)):
            merged = _merge(merged, _read_yaml(source), origin=str(source))
    if overrides:
        merged = _merge(merged, _parse_overrides(overrides), origin=COMMAND_LINE)
    return _to_object(merged, origin=COMMAND_LINE if overrides else str(path))


def save_config(cfg: ExperimentConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML; `load_config` reads it back identically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(config_to_yaml(cfg))
    tmp.replace(path)  # atomic: a reader never sees half a config
    return path


def config_to_yaml(cfg: ExperimentConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_to_dict(cfg: ExperimentConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def loggable_config(cfg: ExperimentConfig) -> dict:
    """The config as a plain dict for logs and W&B, with anything that looks like a secret left out."""
    return _drop_secrets(config_to_dict(cfg))


# ----------------------------------------------------------------------------------------------
# base: chains


def _base_chain(path: Path, _seen: tuple[Path, ...] = ()) -> list[Path]:
    """The files to merge, deepest base first. `base:` is a path relative to the file, or a list."""
    path = path.resolve() if path.exists() else path
    if not path.is_file():
        referrer = f" (the base of {_seen[-1]})" if _seen else ""
        raise ConfigError(f"config file not found: {path}{referrer}")
    if path in _seen:
        cycle = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"config bases form a cycle: {cycle}")
    bases = _read_yaml(path).get(BASE_KEY) or []
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: '{BASE_KEY}' must be a file path or a list of file paths")
    chain: list[Path] = []
    for base in bases:
        for p in _base_chain(path.parent / base, (*_seen, path)):
            if p not in chain:
                chain.append(p)
    return chain + [path]


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (UnicodeDecodeError, yaml.reader.ReaderError) as e:  # a checkpoint or an image given as the config
        raise ConfigError(f"{path}: not a YAML text file ({_one_line(e)})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {_one_line(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


# ----------------------------------------------------------------------------------------------
# merging and validation


def _merge(merged: DictConfig, data: dict, origin: str) -> DictConfig:
    data = _renamed({k: v for k, v in data.items() if k != BASE_KEY}, origin)
    try:
        result = OmegaConf.merge(merged, data)
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e, origin)) from None
    # Validate choices now so a bad value is blamed on the file that set it.
    _to_object(result, origin)
    return result  # type: ignore[return-value]


def _renamed(data: dict, origin: str) -> dict:
    """`data` with renamed keys under their new names, each said once."""
    for (section, old), (new, why) in _RENAMED.items():
        values = data.get(section)
        if isinstance(values, dict) and old in values:
            renamed = {k: v for k, v in values.items() if k != old}
            renamed.setdefault(new, values[old])
            data = {**data, section: renamed}
            log.warning("%s: %s.%s is now %s.%s (%s)", origin, section, old, section, new, why)
    return data


def _to_object(merged: DictConfig, origin: str) -> ExperimentConfig:
    try:
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e, origin)) from None
    except ValueError as e:  # raised by a section's __post_init__
        raise ConfigError(f"{origin}: {e}") from None


def _describe(error: OmegaConfBaseException, origin: str) -> str:
    key = getattr(error, "full_key", None) or "?"
    text = str(error).split("\n")[0]
    if isinstance(error, ConfigKeyError):
        section = key.rsplit(".", 1)[0] if "." in key else None
        known = _known_keys(section)
        hint = f" (known keys{' in ' + section if section else ''}: {', '.join(known)})" if known else ""
        return f"{origin}: unknown key '{key}'{hint}"
    return f"{origin}: bad value for '{key}': {text}"


def _known_keys(section: str | None) -> list[str]:
    node: Any = OmegaConf.structured(ExperimentConfig)
    for part in (section.split(".") if section else []):
        if not isinstance(node, DictConfig) or part not in node:
            return []
        node = node[part]
    return list(node.keys()) if isinstance(node, DictConfig) else []


def _parse_overrides(overrides: Iterable[str]) -> dict:
    for item in overrides:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"{COMMAND_LINE}: override {item!r} is not of the form section.key=value")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise ConfigError(f"{COMMAND_LINE}: cannot parse overrides: {e}") from None


def _one_line(error: Exception) -> str:
    """An error's text on one line: YAML's errors span several, and a refusal is one `error:` line."""
    return " ".join(str(error).split())


def _drop_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_secrets(v) for k, v in value.items() if not _SECRET_KEY.search(str(k))}
    if isinstance(value, list):
        return [_drop_secrets(v) for v in value]
    return value
