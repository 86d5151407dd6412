"""Where a stage keeps its files: a run's config beside its outputs, and atomic Parquet parts.

A stage writes its work in parts; each part appears whole (written to a temporary name, then
renamed) or not at all, so a crash or Ctrl-C never leaves a half-written part, and a rerun of the
same command skips the parts that exist.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import yaml

from seqdistill import config as configlib
from seqdistill.config import ConfigError

log = logging.getLogger(__name__)
CONFIG_FILE = "seqdistill_config.yaml"


def changes(out: Path, cfg, ignore: tuple[str, ...]) -> list[str] | None:
    """Keys whose values differ from the run saved in `out`; None when `out` holds no run."""
    saved = out / CONFIG_FILE
    if not saved.is_file():
        return None
    old = yaml.safe_load(saved.read_text()).get("config", {})
    for key in ignore:
        old.pop(key, None)
    return configlib.diff(old, configlib.fingerprint(cfg, ignore))


def prepare(out: Path, cfg, ignore: tuple[str, ...], overwrite: bool, owned: list[str]) -> None:
    """Refuse an output directory that holds a different run; with overwrite, clear our files first.

    `ignore` names config keys that don't change results (shard index, overwrite flag);
    `owned` the files and folders this stage writes, the only ones overwrite removes.
    """
    diff = changes(out, cfg, ignore)
    if diff and not overwrite:
        raise ConfigError(
            f"output directory {out} holds a different run ({'; '.join(diff[:3])}{' ...' if len(diff) > 3 else ''}); "
            "use another output_dir, or pass --overwrite to replace it"
        )
    if diff or (overwrite and diff is not None):
        log.warning("overwriting the run in %s", out)
        for name in owned + [CONFIG_FILE]:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    elif diff is None and out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"output directory {out} is not empty and holds no seqdistill run; "
                          "pick an empty or new output_dir, or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    configlib.save(cfg, out / CONFIG_FILE)


def write_parquet(rows_or_dataset, path: Path, features=None) -> None:
    """Write a table atomically: a reader sees the whole file or none."""
    import datasets

    data = rows_or_dataset
    if not isinstance(data, datasets.Dataset):
        data = datasets.Dataset.from_list(rows_or_dataset, features=features)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    data.to_parquet(str(tmp))
    tmp.replace(path)


def read_parquet(paths: list[Path]):
    """One in-memory dataset from Parquet files (empty files included, which `datasets` can't load)."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    return datasets.Dataset(pa.concat_tables([pq.read_table(p) for p in paths], promote_options="permissive"))


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
