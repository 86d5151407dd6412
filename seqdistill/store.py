"""Where a stage keeps its files: a run's config beside its outputs, and atomic Parquet parts.

A stage writes its work in parts; each part appears whole (written to a temporary name, then
renamed) or not at all, so a crash or Ctrl-C never leaves a half-written part, and a rerun of the
same command skips the parts that exist. A killed write's temporary file is removed by the next run.
Sampled work is deleted only by `--overwrite`: a run that must start over sets the old one aside.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from seqdistill import config as configlib
from seqdistill.config import ConfigError, first_line

log = logging.getLogger(__name__)
CONFIG_FILE = "seqdistill_config.yaml"
# what a finished stage leaves beside its outputs, read by later stages, the report, the viewer and the hub push
STATS_FILE = "stats.json"  # generate's and score's statistics (generate's: the funnel, lengths, throughput)
RESULTS_FILE = "results.json"  # eval's figures per model and benchmark (one in each MODEL/BENCHMARK/ too)
RESULTS_TABLE = "results.md"  # eval's results as a Markdown table


def saved_config(out: str | Path) -> dict:
    """What a stage saved beside its outputs, {"config": ..., "run": ...}; {} when `out` holds no run."""
    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML; move it away or pick another output_dir") from e


@dataclass(frozen=True)
class Layout:
    """The one rule for a stage's output directory.

    A directory is `empty` (or absent), holds the `same` run (its saved config equals this one but
    for the settings in `ignore`, which don't change the outputs), a `different` run, or is
    `foreign` (files, but no seqdistill config). A stage is done when its `marker` (written last)
    exists for the same run. `--overwrite` deletes only the files in `owned`, and never touches a foreign directory;
    it is the only way to delete `parts` (sampled work): a run that must start over without it is `set_aside`.
    """

    owned: tuple[str, ...]  # files and folders this stage writes
    marker: str  # written last: its presence means the stage finished
    ignore: tuple[str, ...] = ()  # dotted settings that don't change the outputs (besides output_dir, overwrite)
    # dotted settings applied after sampling: a run that differs from the saved one only in these keeps the
    # owned folders in `parts` (what was sampled) and rebuilds the rest from them; --overwrite still clears them
    rebuild: tuple[str, ...] = ()
    parts: tuple[str, ...] = ()

    def ignored(self) -> tuple[str, ...]:
        return ("output_dir", "overwrite", *self.ignore)

    def changes(self, out: Path, cfg) -> list[str] | None:
        """Keys whose values differ from the run saved in `out`; None when `out` holds no run."""
        if not (Path(out) / CONFIG_FILE).is_file():
            return None
        old = configlib.with_defaults(saved_config(out).get("config", {}), cfg)
        return configlib.diff(drop(old, self.ignored()), drop(configlib.to_dict(cfg), self.ignored()))

    def rebuildable(self, out: Path, cfg) -> bool:
        """The saved run differs from this one, and only in `rebuild` settings: its `parts` are reused."""
        diff = self.changes(out, cfg) or []
        keys = [d.split(":", 1)[0] for d in diff]
        return bool(keys) and all(any(k == r or k.startswith(r + ".") for r in self.rebuild) for k in keys)

    def state(self, out: Path, cfg) -> str:
        out = Path(out)
        diff = self.changes(out, cfg)
        if diff is None:
            return "foreign" if out.is_dir() and any(out.iterdir()) else "empty"
        return "different" if diff else "same"

    def done(self, out: Path, cfg) -> bool:
        return (Path(out) / self.marker).is_file() and self.state(out, cfg) == "same"

    def check(self, out: Path, cfg, overwrite: bool) -> str:
        """The directory's state; refuses one that holds a different run or isn't ours (reads only)."""
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"output_dir {out} is a file; pick a directory")
        state = self.state(out, cfg)
        if state == "different" and not overwrite and not self.rebuildable(out, cfg):
            diff = self.changes(out, cfg)
            raise ConfigError(f"output directory {out} holds a different run ({shown(diff)}); use another "
                              f"output_dir, or pass --overwrite to replace it (deleting {self.present(out)})")
        if state == "foreign":  # --overwrite replaces seqdistill's own runs, never files it did not write
            raise ConfigError(f"output directory {out} is not empty and holds no seqdistill run (no {CONFIG_FILE}), "
                              "so even --overwrite leaves it alone: pick a new output_dir, or move its files away")
        return state

    def prepare(self, out: Path, cfg, overwrite: bool) -> None:
        """Refuse a directory that holds a different run or isn't ours; with overwrite, clear our files first."""
        out = Path(out)
        state = self.check(out, cfg, overwrite)
        if state == "different" and not overwrite:  # only `rebuild` settings changed (check refuses the rest)
            log.info("only %s changed since the run in %s: %s reused, the rest rebuilt",
                     "; ".join(self.changes(out, cfg)), out, ", ".join(f"{p}/" for p in self.parts))
            for name in self.owned:
                path = out / name
                if name not in self.parts:
                    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        if state in ("different", "same", "foreign") and overwrite:
            log.warning("--overwrite: deleting %s in %s", self.present(out), out)
            for name in self.owned + (CONFIG_FILE,):
                path = out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create output_dir {out}: {e.strerror}") from e
        remove_stale_temps(out)
        configlib.save(cfg, out / CONFIG_FILE)

    def present(self, out: Path) -> str:
        """The files of this stage in `out`, as --overwrite would delete them: 'samples/, data/, stats.json'."""
        names = [f"{n}/" if (Path(out) / n).is_dir() else n for n in self.owned + (CONFIG_FILE,) if (Path(out) / n).exists()]
        return ", ".join(names) or "nothing"

    def set_aside(self, out: Path, why: str) -> Path | None:
        """Move the run in `out`, whole, to OUT.old-TIME (TIME: when it last started, UTC) so that a fresh run can
        start in `out` with nothing deleted; says so in one line. None when `out` holds no seqdistill run."""
        out = Path(out)
        if not (out / CONFIG_FILE).is_file():
            return None
        started = datetime.fromtimestamp((out / CONFIG_FILE).stat().st_mtime, timezone.utc)
        aside = out.with_name(f"{out.name}.old-{started:%Y%m%d-%H%M%S}")
        n = 1
        while aside.exists():
            n += 1
            aside = out.with_name(f"{out.name}.old-{started:%Y%m%d-%H%M%S}-{n}")
        out.rename(aside)
        log.warning("%s: the earlier run in %s is kept, whole, in %s; this one starts afresh", why, out, aside)
        return aside


def shown(changes: list[str]) -> str:
    """The first three changed settings for a one-line message: 'sampling.n: 2 -> 1; ...'."""
    return "; ".join(changes[:3]) + (" ..." if len(changes) > 3 else "")


def drop(data: dict, keys: tuple[str, ...]) -> dict:
    """`data` without the dotted `keys`; `*` stands for every item of a list (`models.*.engine.base_url`)."""
    data = json.loads(json.dumps(data, default=str))

    def remove(node, parts: list[str]) -> None:
        if parts[0] == "*" and isinstance(node, list):
            for item in node:
                remove(item, parts[1:])
        elif isinstance(node, dict):
            if len(parts) == 1:
                node.pop(parts[0], None)
            else:
                remove(node.get(parts[0]), parts[1:])

    for key in keys:
        remove(data, key.split("."))
    return data


TEMP_NAME = re.compile(r"\..+\.tmp(\d*)(?:-([0-9a-f]{8}))?")  # .NAME.tmpPID-HOST: every atomic write's temporary file
QUIET_SECONDS = 10  # a temporary file of another machine's (or unnamed) writer, unchanged this long, is a killed write's
temp_path = configlib.temp_path


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove the temporary files that killed writes left anywhere under `folder` (a stage's output directory,
    a chunk folder, a run_dir): those written on this machine by a process that no longer runs, at once; those
    of another machine (a shard job writing into a shared directory) or without a machine in their name, once
    unchanged for QUIET_SECONDS and not written by a process running here. Returns them."""
    removed, now = [], time.time()
    for tmp in sorted(Path(folder).rglob(".*.tmp*")) if Path(folder).is_dir() else []:
        match = TEMP_NAME.fullmatch(tmp.name)
        here = match is not None and match[2] == configlib.HOST
        if not match or not tmp.is_file() or (match[2] in (None, configlib.HOST) and writing(int(match[1]) if match[1] else None)):
            continue
        try:
            if here or now - tmp.stat().st_mtime >= QUIET_SECONDS:
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:  # its writer renamed it in the meantime
            pass
    if removed:
        log.info("removed %d temporary file(s) of interrupted writes under %s", len(removed), folder)
    return removed


def writing(pid: int | None) -> bool:
    """Whether process `pid` may still be writing its temporary file (a shard job beside this one); this
    process writes none while it cleans up."""
    if pid is None or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def write_parquet(rows_or_dataset, path: Path, features=None) -> None:
    """Write a table atomically: a reader sees the whole file or none."""
    import datasets

    data = rows_or_dataset
    if not isinstance(data, datasets.Dataset):
        data = datasets.Dataset.from_list(rows_or_dataset, features=features)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    data.to_parquet(str(tmp))
    tmp.replace(path)


def read_parquet(paths: list[Path]):
    """One in-memory dataset from Parquet files (empty files included, which `datasets` can't load)."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    return datasets.Dataset(pa.concat_tables([pq.read_table(p) for p in paths], promote_options="permissive"))


def read_json(path: Path, fix: str = "rerun the stage that writes it, or remove it"):
    """A JSON file a stage wrote (or a user edited): one that does not parse is a one-line error naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (ValueError, OSError) as e:
        raise ConfigError(f"{path} is not valid JSON ({first_line(e)}); "
                          f"{fix}") from e


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
