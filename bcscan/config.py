"""Run configuration: `configs/*.yaml`, overridable from the command line.

Each stage owns a frozen dataclass of its parameters; the YAML file holds one
section per stage.  Unknown keys are an error, so a typo in a config never
silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import operator
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from bcscan.errors import ConfigError

DEFAULT_CONFIG_NAME = "default.yaml"


def packaged(name: str) -> Path:
    """A file shipped inside the package (`bcscan/resources/`), found from any install:
    a checkout, an editable install or a wheel."""
    return Path(str(resources.files("bcscan") / "resources" / name))


def default_config() -> dict[str, Any]:
    """The documented defaults (configs/default.yaml, shipped as package data)."""
    path = packaged(DEFAULT_CONFIG_NAME)
    if not path.is_file():
        raise ConfigError(f"{path}: the default configuration is missing from this bcscan install (reinstall bcscan)")
    return load_yaml(path)


def section(cls, values: dict[str, Any] | None, name: str):
    """Build the dataclass `cls` from a YAML mapping, refusing unknown keys."""
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) in section '{name}': {', '.join(unknown)}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"section '{name}': {exc}") from exc


def check_flags(params, *names: str) -> None:
    """Each named field of `params` must be true or false (YAML's `1` or `"yes"` is not taken for one)."""
    for name in names:
        value = getattr(params, name)
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")


def check_numbers(params, *names: str, above: float | None = None, at_least: float | None = None,
                  below: float | None = None, at_most: float | None = None) -> None:
    """Each named field of `params` must be a finite number (not a bool) within the bounds given; a
    `weights[2]`-style name checks one item of a sequence field."""
    for name in names:
        field, _, index = name.partition("[")
        value = getattr(params, field)
        if index:
            value = value[int(index.rstrip("]"))]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        for bound, holds, sign in ((above, operator.gt, ">"), (at_least, operator.ge, ">="),
                                   (below, operator.lt, "<"), (at_most, operator.le, "<=")):
            if bound is not None and not holds(value, bound):
                raise ValueError(f"{name} must be {sign} {bound}, got {value!r}")


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `override` into a copy of `base`; None values in override are ignored."""
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_digest(config: dict[str, Any]) -> str:
    """Stable short hash of an effective configuration (part of each scan's result key)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
