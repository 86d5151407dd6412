"""Settings documented once: the help of every setting is read off its dataclass field's comment,
and `--help`, `seqdistill config STAGE` and docs/settings.md all list exactly the dataclass fields."""

import dataclasses
import re
import subprocess
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from seqdistill import config as configlib
from seqdistill import settings_doc

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Inner:
    # a block above
    # on two lines
    a: int = 1  # and the trailing one
    # ---- a banner is not help ----
    b: list[str] = field(
        default_factory=lambda: ["x"],
    )  # a comment at the end of a multi-line field
    c: str | None = None


@dataclass
class Outer:
    name: str  # required
    inner: Inner = field(default_factory=lambda: Inner(a=2))  # an inner section
    items: list[Inner] = field(default_factory=list)


@dataclass
class Child(Inner):
    d: bool = False  # the child's own


def test_help_from_comments():
    assert settings_doc.field_help(Inner, "a") == "a block above on two lines and the trailing one"
    assert settings_doc.field_help(Inner, "b") == "a comment at the end of a multi-line field"
    assert settings_doc.field_help(Inner, "c") == ""
    assert settings_doc.field_help(Child, "a") == settings_doc.field_help(Inner, "a")  # inherited field
    assert settings_doc.field_help(Child, "d") == "the child's own"


def test_settings_walk_nested_and_lists():
    got = {s.key: (s.type, settings_doc.value_text(s.default), s.help) for s in settings_doc.settings(Outer)}
    assert got["name"] == ("str", "required", "required")
    assert got["inner"] == ("section", "{a: 2, b: [x], c: null}", "an inner section")
    assert got["inner.a"][1] == "2"  # the section's own default instance, not the class default
    assert got["items[].b"] == ("list[str]", "[x]", "a comment at the end of a multi-line field")
    assert got["inner.c"][0] == "str | null"


def dataclass_keys(cls, prefix=""):
    """Every setting, walked independently of settings_doc: dotted keys, list items as KEY[]."""
    keys = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) is list and inner and dataclasses.is_dataclass(inner[0]):
            keys += [prefix + f.name] + dataclass_keys(inner[0], f"{prefix}{f.name}[].")
            continue
        if not dataclasses.is_dataclass(tp) and len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            tp = inner[0]
        keys.append(prefix + f.name)
        if dataclasses.is_dataclass(tp):
            keys += dataclass_keys(tp, f"{prefix}{f.name}.")
    return keys


def cli(*args):
    return subprocess.run([sys.executable, "-m", "seqdistill", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("stage", list(settings_doc.STAGES))
def test_help_lists_every_setting(stage):
    out = cli(stage, "--help")
    assert out.returncode == 0, out.stderr
    listing = out.stdout.split("\nsettings (", 1)[1]
    listed = re.findall(r"^  (\S+?):(?: |$)", listing, flags=re.M)
    assert listed == dataclass_keys(settings_doc.stage_class(stage))
    assert "sampling.temperature: float = 0.6" in listing or stage in ("sft", "score", "student")


@pytest.mark.parametrize("stage", list(settings_doc.STAGES))
def test_config_prints_defaults_as_yaml(stage):
    out = cli("config", stage)
    assert out.returncode == 0, out.stderr
    data = yaml.safe_load(out.stdout)
    cls = settings_doc.stage_class(stage)
    default = configlib.to_dict(cls())
    if stage == "run":  # every stage shown, less what the pipeline wires itself
        default = {**default, **{s: configlib.to_dict(settings_doc.stage_class(s)()) for s in ("generate", "sft", "eval")}}
        for s in ("generate", "sft", "eval"):
            assert f"  # output_dir: RUN_DIR/{s}\n" in out.stdout
            del default[s]["output_dir"]
        del default["sft"]["dataset"], default["eval"]["models"]
    assert data == default
    errors = []
    built = configlib._build(cls, data, "", errors)
    assert not errors and (stage == "run" or configlib.to_dict(built) == default)


def test_docs_settings_current():
    """docs/settings.md is generated; after changing a config dataclass run
    `python -m seqdistill.settings_doc > docs/settings.md`."""
    assert (ROOT / "docs" / "settings.md").read_text() == settings_doc.document(), "run make docs"
