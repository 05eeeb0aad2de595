"""Named presets (the original OBoW configs plus small ones) and YAML loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from obow.config.pretrain import PretrainSpec
from obow.errors import ConfigError

_PRESET_ROOT = Path(__file__).resolve().parent.parent / "presets"


def list_presets() -> list[str]:
    """Preset names such as `ImageNetFull/ResNet50_OBoW_full`, sorted."""
    names: list[str] = []
    for group in _PRESET_ROOT.iterdir():
        if group.is_dir():
            names += [f"{group.name}/{f.name[:-5]}" for f in group.iterdir() if f.name.endswith(".yaml")]
    return sorted(names)


def preset_dict(name: str) -> dict[str, Any]:
    if name not in list_presets():
        raise ConfigError(f"unknown preset '{name}'; known presets: {', '.join(list_presets())}")
    group, stem = name.split("/", 1)
    return yaml.safe_load((_PRESET_ROOT / group / f"{stem}.yaml").read_text()) or {}


def format_validation_error(err: ValidationError) -> str:
    """One line per bad field, as `section.key: message`."""
    parts = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "config"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


Spec = TypeVar("Spec", bound=BaseModel)


def validated_spec(cls: type[Spec], data: dict[str, Any]) -> Spec:
    """`cls.model_validate(data)` with a bad field as a one-line ConfigError, which the CLI prints and
    exits 2 on: every `obow` command validates its spec through here."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def deep_update(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """`optim.lr=0.1` -> {'optim': {'lr': 0.1}}; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value, e.g. optim.lr=0.1")
    path, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as err:  # control characters, lone surrogates, unbalanced brackets
        key, problem = path.strip(), str(err).splitlines()[0]
        raise ConfigError(
            f"override '{key}': its value is not valid YAML ({problem}); quote text, e.g. {key}='text'"
        ) from None
    node: dict[str, Any] = {}
    cursor = node
    keys = path.strip().split(".")
    for key in keys[:-1]:
        cursor[key] = {}
        cursor = cursor[key]
    cursor[keys[-1]] = value
    return node


def build_pretrain_spec(data: dict[str, Any], name: str | None = None) -> PretrainSpec:
    if name is not None and "name" not in data:
        data = {**data, "name": name}
    try:
        return PretrainSpec.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"invalid config: {format_validation_error(err)}") from None


def load_pretrain_config(
    preset_or_path: str, overrides: list[str] | tuple[str, ...] = ()
) -> PretrainSpec:
    """Load a preset name or a YAML file (original OBoW keys accepted), then apply `key=value` overrides.

    The run name is the preset name or, for a file, the path relative to a `config/` folder if there is
    one (as the original's `--config ImageNetFull/ResNet50_OBoW_full`), else the file's stem.
    """
    path = Path(preset_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file '{path}' is not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file '{path}' must hold a mapping of sections")
        parts = path.with_suffix("").parts
        name = "/".join(parts[parts.index("config") + 1 :]) if "config" in parts else path.stem
    else:
        data = preset_dict(preset_or_path)
        name = preset_or_path
    for text in overrides:
        data = deep_update(data, parse_override(text))
    return build_pretrain_spec(data, name=name)
