"""Where each setting comes from: defaults < embedded stack < ``r2migrate.toml`` < env < --set <
flags, each value parsed as its field's type, all merged by ``load_settings()``.

Never opens connections or touches the network; it only reads ``r2migrate.toml`` and the embedded
stack's ``stack.json``. Every problem is collected and raised at once as one ``ConfigError``, and a
secret never appears in an error message.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r2migrate.errors import ConfigError
from r2migrate.settings.checks import closest
from r2migrate.settings.model import (
    _AWS_CA_BUNDLE,
    _FIELD_NAMES,
    _FIELDS,
    _GIB,
    _KINDS,
    _MIB,
    CONFIG_ENV,
    CONFIG_FILE_NAME,
    ENV_PREFIX,
    SECRET_FIELDS,
    STACK_FILE_NAME,
    STANDARD_ENV,
    Settings,
    _FrozenMap,
)

__all__ = ["load_settings"]


def load_settings(
    *,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    set_values: Mapping[str, object] | None = None,
    overrides: Mapping[str, object] | None = None,
    override_labels: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Merge defaults < embedded stack < toml < env < set_values < overrides; validate; return.

    ``env=None`` reads ``os.environ``. ``set_values`` are the CLI's ``--set KEY=VALUE`` (text,
    parsed like the environment's); ``overrides`` are explicit values that beat everything, such
    as a command's flags, each shown as coming from ``override_labels[name]`` (default
    ``override``). An override or --set value of None counts as not given. Raises one
    ``ConfigError`` listing every problem found.
    """
    cwd = (cwd or Path.cwd()).absolute()
    env = os.environ if env is None else env
    problems: list[str] = []

    # Each layer: source label per field, raw value per field, folder relative paths start from.
    toml_layer = _read_toml_layer(config_file, env, cwd, problems)
    env_layer = _read_env_layer(env, cwd, problems)
    set_layer = _read_override_layer(set_values or {}, cwd, problems, {}, default_label="--set")
    override_layer = _read_override_layer(overrides or {}, cwd, problems, override_labels or {})
    upper_layers = [override_layer, set_layer, env_layer, toml_layer]  # highest first
    state_dir = _state_dir_of(upper_layers, cwd)
    stack_layer = _read_stack_layer(Path(state_dir) / STACK_FILE_NAME, problems)

    layers = (stack_layer, toml_layer, env_layer, set_layer, override_layer)  # lowest first
    values, sources = _merge(layers, problems)
    _settle_ca_bundle(values, sources, stack_layer)
    if "state_dir" not in values:
        values["state_dir"] = state_dir
    sources = {name: sources.get(name, "default") for name in _FIELD_NAMES}

    try:
        settings = Settings(**values, sources=sources)  # type: ignore[arg-type]
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return settings


def _state_dir_of(upper_layers: list[_Layer], cwd: Path) -> Path:
    """The folder the stack file lives in: ``state_dir`` from the highest layer that sets it."""
    state_dir = cwd / Settings.state_dir
    for layer in upper_layers:
        if "state_dir" in layer.values:
            with contextlib.suppress(_ParseError):  # reported below with the other parse errors
                state_dir = _parse("state_dir", layer.values["state_dir"], layer.base_dir)
            break
    return Path(state_dir)


def _merge(
    layers: tuple[_Layer, ...], problems: list[str]
) -> tuple[dict[str, object], dict[str, str]]:
    """Parsed values and their source labels, a higher layer replacing a lower one."""
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    failed: set[str] = set()
    for layer in layers:
        for name, raw in layer.values.items():
            try:
                values[name] = _parse(name, raw, layer.base_dir)
                sources[name] = layer.sources[name]
                failed.discard(name)
            except _ParseError as exc:
                problems.append(f"{name} ({layer.sources[name]}): {exc}")
                failed.add(name)
    for name in failed:  # keep the error list about the real problem, not a knock-on one
        values.pop(name, None)
        sources.pop(name, None)
    return values, sources


def _settle_ca_bundle(
    values: dict[str, object], sources: dict[str, str], stack_layer: _Layer
) -> None:
    """Which CA bundle applies when the embedded stack brings one (in place)."""
    # The embedded stack's self-signed CA vouches for the stack alone: not for another endpoint.
    stack_label = stack_layer.sources.get("ca_bundle")
    if stack_label and sources.get("ca_bundle") == stack_label != sources.get("endpoint_url"):
        values.pop("ca_bundle", None)
        sources.pop("ca_bundle", None)
    # ...and for the stack's own endpoint it wins over a bundle the machine's environment
    # carries for everything else (AWS_CA_BUNDLE): that one cannot know the stack's CA.
    inherited = sources.get("ca_bundle") == f"env {_AWS_CA_BUNDLE}"
    if stack_label and inherited and sources.get("endpoint_url") == stack_label:
        with contextlib.suppress(_ParseError):  # a broken stack.json was reported above
            values["ca_bundle"] = _parse(
                "ca_bundle", stack_layer.values["ca_bundle"], stack_layer.base_dir
            )
            sources["ca_bundle"] = stack_label
    # `verify = false` alone turns checks off: a bundle from the environment or the stack is
    # then dropped instead of refused (one set on purpose in toml, --set or R2MIGRATE_* stays
    # a contradiction, reported below).
    if values.get("verify") is False and sources.get("ca_bundle") in (
        f"env {_AWS_CA_BUNDLE}",
        stack_label,
    ):
        values.pop("ca_bundle", None)
        sources.pop("ca_bundle", None)


@dataclass
class _Layer:
    values: dict[str, object] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    base_dir: Path = Path()


def _read_toml_layer(
    config_file: Path | None, env: Mapping[str, str], cwd: Path, problems: list[str]
) -> _Layer:
    if config_file is not None:
        named, required = Path(config_file), True
    elif env.get(CONFIG_ENV):
        named, required = Path(env[CONFIG_ENV]), True
    else:
        named, required = Path(CONFIG_FILE_NAME), False
    path = cwd / named.expanduser()  # an absolute path on the right replaces cwd
    layer = _Layer(base_dir=path.parent)
    if not required and not path.is_file():
        return layer
    label = f"{CONFIG_FILE_NAME} ({path})"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        via = "config_file" if config_file is not None else f"env {CONFIG_ENV}"
        problems.append(f"{label}: file not found (named by {via})")
        return layer
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{label}: cannot read: {getattr(exc, 'strerror', None) or exc}")
        return layer
    except tomllib.TOMLDecodeError as exc:  # message carries "(at line N, column M)", no value
        problems.append(f"{label}: not valid TOML: {exc}")
        return layer
    for key, value in data.items():
        if key in _FIELDS:
            layer.values[key] = value
            layer.sources[key] = label
        else:
            flat = " (settings are flat top-level keys, not tables)" if _is_table(value) else ""
            problems.append(f"{label}: unknown key {key!r}{_did_you_mean(key)}{flat}")
    return layer


def _read_env_layer(env: Mapping[str, str], cwd: Path, problems: list[str]) -> _Layer:
    layer = _Layer(base_dir=cwd)
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or var == CONFIG_ENV:
            continue
        name = var[len(ENV_PREFIX) :].lower()
        if name in _FIELDS:
            layer.values[name] = env[var]
            layer.sources[name] = f"env {var}"
        else:
            guess = _closest(name)
            hint = f"; did you mean {ENV_PREFIX}{guess.upper()}?" if guess else ""
            problems.append(f"env {var}: unknown setting{hint}")
    for name, names in STANDARD_ENV.items():
        if name in layer.values:
            continue  # R2MIGRATE_<FIELD> wins over the standard name
        for var in names:
            if env.get(var):  # an empty standard variable is someone else's "unset"
                layer.values[name] = env[var]
                layer.sources[name] = f"env {var}"
                break
    return layer


def _read_override_layer(
    overrides: Mapping[str, object],
    cwd: Path,
    problems: list[str],
    labels: Mapping[str, str],
    *,
    default_label: str = "override",
) -> _Layer:
    layer = _Layer(base_dir=cwd)
    for key, value in overrides.items():
        if key not in _FIELDS:
            problems.append(f"{default_label} {key!r}: unknown setting{_did_you_mean(key)}")
        elif value is not None:
            layer.values[key] = value
            layer.sources[key] = labels.get(key, default_label)
    return layer


def _read_stack_layer(path: Path, problems: list[str]) -> _Layer:
    layer = _Layer(base_dir=path.parent)
    if not path.is_file():
        return layer
    label = f"embedded stack ({path})"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        problems.append(f"{label}: cannot read: {exc.strerror or exc}")
        return layer
    except json.JSONDecodeError as exc:
        problems.append(f"{label}: not valid JSON at line {exc.lineno}, column {exc.colno}")
        return layer
    except UnicodeDecodeError:
        problems.append(f"{label}: not UTF-8 text")
        return layer
    if not isinstance(data, dict):
        problems.append(f"{label}: expected a JSON object")
        return layer
    # Machine-written by devstack, which may keep its own bookkeeping (pids, ports) beside the
    # settings: keys that are not settings are its business, not a typo to report.
    for key, value in data.items():
        if key in _FIELDS and value is not None:
            layer.values[key] = value
            layer.sources[key] = label
    return layer


def _did_you_mean(key: str) -> str:
    guess = _closest(key)
    return f"; did you mean {guess!r}?" if guess else ""


def _closest(key: str) -> str | None:
    lowered = key.lower()
    # django-storages names (AWS_STORAGE_BUCKET_NAME, AWS_S3_ENDPOINT_URL, AWS_LOCATION, ...).
    for prefix in ("aws_s3_", "aws_storage_", "aws_"):
        if lowered.startswith(prefix) and lowered[len(prefix) :] in _FIELDS:
            return lowered[len(prefix) :]
    return closest(lowered, _FIELD_NAMES)


def _is_table(value: object) -> bool:
    return isinstance(value, dict)


# -- parsing ------------------------------------------------------------------------------------


class _ParseError(ValueError):
    pass


# Choices compared case-insensitively; stored in the spelling the rest of the code expects.
_NORMALISE = {
    "log_level": str.upper,
    "log_format": str.lower,
    "addressing_style": str.lower,
    "source": str.lower,
}
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_SIZE_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": _MIB, "gib": _GIB}
_SIZE_UNITS |= {"kb": 1000, "mb": 1000**2, "gb": 1000**3}


def _parse(name: str, raw: object, base_dir: Path) -> Any:
    """``raw`` (text from env, a TOML/JSON value, or a Python value) as the field's type."""
    kind = _KINDS[name]
    shown = "" if name in SECRET_FIELDS else f", got {raw!r}"
    if kind in ("str", "opt_str"):
        if not isinstance(raw, str):
            raise _ParseError(f"expected a string, got {_type_name(raw)}")
        if kind == "opt_str" and raw == "":
            return None
        return _NORMALISE[name](raw) if name in _NORMALISE else raw
    if kind in ("int", "bytes"):
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, str):
            text = raw.strip().replace("_", "")
            match = re.fullmatch(r"(\d+)\s*([A-Za-z]*)", text) if kind == "bytes" else None
            if match and match.group(2).lower() in _SIZE_UNITS:
                return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
            if re.fullmatch(r"[+-]?\d+", text):
                return int(text)
        unit = " (bytes; KiB/MiB/GiB suffixes allowed)" if kind == "bytes" else ""
        raise _ParseError(f"expected an integer{unit}{shown}")
    if kind == "float":
        number: float | None = None
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            number = float(raw)
        elif isinstance(raw, str):
            try:
                number = float(raw.strip())
            except ValueError:
                number = None
        if number is None or not math.isfinite(number):
            raise _ParseError(f"expected a number of seconds{shown}")
        return number
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        word = str(raw).strip().lower() if isinstance(raw, str | int) else None
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise _ParseError(f"expected true/false, 1/0 or yes/no{shown}")
    if kind in ("path", "opt_path"):
        if isinstance(raw, str) and raw == "" and kind == "opt_path":
            return None
        if not isinstance(raw, str | os.PathLike) or str(raw) == "":
            raise _ParseError(f"expected a path{shown}")
        path = Path(raw).expanduser()
        return path if path.is_absolute() else base_dir / path
    if kind == "tuple":
        if isinstance(raw, str):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if isinstance(raw, list | tuple) and all(isinstance(item, str) for item in raw):
            return tuple(raw)
        raise _ParseError(f"expected a list of strings or a comma-separated string{shown}")
    if kind == "mapping":
        data = raw
        if isinstance(raw, str):
            try:
                data = json.loads(raw) if raw.strip() else {}
            except json.JSONDecodeError as exc:
                raise _ParseError(
                    f"expected a JSON object: {exc.msg} at column {exc.colno}"
                ) from exc
        if isinstance(data, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            return _FrozenMap(data)
        raise _ParseError(f"expected a table of string values{shown}")
    raise AssertionError(f"no parser for {kind}")  # pragma: no cover


def _type_name(value: object) -> str:
    return {bool: "boolean", int: "integer", float: "number", list: "array", dict: "table"}.get(
        type(value), type(value).__name__
    )
