"""Every setting of a stage, with its type, default and help, read off the config dataclasses.

The help of a field is the comment on its line in the dataclass source (and a comment block right
above it), so a setting is documented once, where it is declared; `seqdistill STAGE --help`, the
printed default config and docs/settings.md all come from `settings()` here. Regenerate the docs with

    make docs      # python -m seqdistill.settings_doc > docs/settings.md
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import re
import sys
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass
from typing import Any

import yaml

from seqdistill import commands

STAGES = commands.CONFIG_STAGES  # the commands with settings (their config classes are imported only when asked for)
REQUIRED = object()  # the default of a field that has none
BANNER = re.compile(r"^-{2,}[^-]*-{2,}\s*$|^-{2,}[^-]*-{2,}\s+")  # "# ---- backend vllm ----": a group, not help


@dataclass
class Setting:
    key: str  # dotted: sampling.temperature; items of a list of sections: models[].adapter
    type: str
    default: Any  # REQUIRED when the field has no default
    help: str
    section: bool = False  # a nested config (its settings follow it)


def stage_class(stage: str) -> type:
    return commands.config_class(stage)


def settings(cls: type, prefix: str = "", obj: Any = None) -> list[Setting]:
    """Every field of `cls`, recursively, in declaration order; defaults from `obj` (an instance) if given."""
    if obj is None:
        obj = _default_instance(cls)
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key, tp = prefix + f.name, hints[f.name]
        default = getattr(obj, f.name) if obj is not None else _field_default(f)
        section, in_list = _section_class(tp)
        if section is None:
            out.append(Setting(key, type_name(tp), default, field_help(cls, f.name)))
            continue
        out.append(Setting(key, type_name(tp), default, field_help(cls, f.name) or _doc_line(section), section=True))
        if in_list:  # the settings of one item, with an item's own defaults
            out += settings(section, key + "[].")
        else:
            out += settings(section, key + ".", default if dataclasses.is_dataclass(default) else None)
    return out


def _default_instance(cls: type):
    try:
        return cls()
    except TypeError:  # a required field (e.g. an eval model entry's `model`)
        return None


def _field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return REQUIRED


def _section_class(tp: Any) -> tuple[type | None, bool]:
    """(the dataclass a field holds, whether it is a list of them); (None, False) for a plain value."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return tp, False
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _section_class(inner[0]) if len(inner) == 1 else (None, False)
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        return args[0], True
    return None, False


def type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(map(repr, args))
    if origin in (list, dict, tuple):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]" if args else origin.__name__
    if tp is Any:
        return "any"
    if dataclasses.is_dataclass(tp):
        return "section"
    return getattr(tp, "__name__", str(tp))


def value_text(value: Any, full: bool = False) -> str:
    """A default as it would be written in YAML, on one line; a list of sections shows only what its
    items set differently from an item's defaults, unless `full`."""
    if value is REQUIRED:
        return "required"
    if isinstance(value, list):
        value = [(dataclasses.asdict(v) if full else _changed(v)) if dataclasses.is_dataclass(v) else v for v in value]
    elif dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=sys.maxsize, allow_unicode=True, sort_keys=False)
    return text.strip().removesuffix("...").strip()


def _changed(item) -> dict:
    return {f.name: dataclasses.asdict(v) if dataclasses.is_dataclass(v := getattr(item, f.name)) else v
            for f in dataclasses.fields(item) if getattr(item, f.name) != _field_default(f)}


def field_help(cls: type, name: str) -> str:
    """The comment on a field's line (and any comment block right above it) in the class that declares it."""
    for klass in cls.__mro__:
        if name in klass.__dict__.get("__annotations__", {}):
            return _comments(klass).get(name, "")
    return ""


@functools.lru_cache(maxsize=None)
def _comments(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (e.g. a compiled install): settings without help
        return {}
    lines = source.splitlines()
    comments: dict[int, str] = {}  # line number -> comment text
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            comments[tok.start[0]] = "" if BANNER.match(text) else BANNER.sub("", text).strip()
    node = ast.parse(source).body[0]
    out = {}
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            above, line = [], stmt.lineno - 1
            while line >= 1 and lines[line - 1].strip().startswith("#"):  # the block right above the field
                above.insert(0, comments.get(line, ""))
                line -= 1
            trailing = [comments[n] for n in range(stmt.lineno, stmt.end_lineno + 1) if n in comments]
            out[stmt.target.id] = " ".join(t for t in above + trailing if t)
    return out


def _doc_line(cls: type) -> str:
    doc = cls.__dict__.get("__doc__") or ""
    if doc.startswith(cls.__name__ + "("):  # dataclass's generated signature, not a description
        return ""
    return doc.strip().split("\n\n")[0].replace("\n", " ")


def help_text(cls: type, width: int = 100) -> str:
    """The settings block of `seqdistill STAGE --help`: a line per setting, its help indented below."""
    out = []
    for s in settings(cls):
        plain_section = s.section and s.type == "section"
        out.append(f"  {s.key}:" if plain_section else f"  {s.key}: {s.type} = {value_text(s.default)}")
        if s.help:
            out += textwrap.wrap(s.help, width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(out)


def default_yaml(cls: type, obj: Any = None, skip: dict[str, str] | None = None, prefix: str = "") -> str:
    """A config as YAML with every setting's help as a comment above it (`seqdistill config STAGE`);
    `skip` maps dotted keys to leave out to the reason, written as a comment in their place."""
    obj = _default_instance(cls) if obj is None else obj
    hints, out, indent, skip = typing.get_type_hints(cls), [], "  " * prefix.count("."), skip or {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if prefix + f.name in skip:
            out.append(f"{indent}# {f.name}: {skip[prefix + f.name]}")
            continue
        value, (section, in_list) = getattr(obj, f.name), _section_class(hints[f.name])
        help_ = field_help(cls, f.name) or (_doc_line(section) if section else "")
        out += [f"{indent}# {line}" for line in textwrap.wrap(help_, 96 - len(indent))]
        if section is not None and not in_list and value is not None:
            out.append(f"{indent}{f.name}:")
            out.append(default_yaml(section, value, skip, f"{prefix}{f.name}."))
        else:
            out.append(f"{indent}{f.name}: {value_text(value, full=True)}")
    return "\n".join(out)


def markdown(stage: str) -> str:
    """A Markdown table of one stage's settings (docs/settings.md)."""
    rows = ["| setting | type | default | what it does |", "| --- | --- | --- | --- |"]
    for s in settings(stage_class(stage)):
        default = "" if s.section and s.type == "section" else f"`{value_text(s.default)}`"
        cell = lambda t: t.replace("|", "\\|").replace("<", "&lt;")
        rows.append(f"| `{s.key}` | {cell(s.type)} | {cell(default)} | {cell(s.help)} |")
    return "\n".join(rows)


def document() -> str:
    """docs/settings.md: every stage's settings."""
    parts = ["# Settings\n",
             "Every setting of every stage, generated from the config dataclasses by "
             "`make docs` (`python -m seqdistill.settings_doc > docs/settings.md`; a test checks it is current). "
             "The same list is in `seqdistill STAGE --help`; `seqdistill config STAGE` prints the defaults "
             "as YAML. Set them in a `--config` YAML file, with `--set key.sub=value`, or with `--key.sub value`.\n"]
    for stage in STAGES:
        command = "seqdistill run PIPELINE.yaml" if stage == "run" else f"seqdistill {stage}"
        parts += [f"## `{command}`\n", markdown(stage) + "\n"]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(document())
