"""`report_to` sends every stage to the same trackers: generate's and eval's figures (trackers.log_figures) to
TensorBoard and wandb alike, and sft's (inside transformers) to the same wandb project, job type and group.

wandb runs in offline mode (WANDB_MODE=offline: no account, no network); its run directory is read back
with wandb's own reader of the .wandb log. The figures are the ones generate.run and eval.run pass.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from seqdistill import evaluate, trackers

GENERATE = {"funnel/generated": 18, "funnel/kept": 5, "teacher_pass@1": 0.5, "teacher_pass@3": 0.75,
            "generated_tokens_per_second": 120.5}
EVAL = {"student-after": {"gsm8k": {"problems": 3, "samples_per_problem": 4, "pass@1": 0.5, "pass@1_stderr": 0.29,
                                    "pass@4": 0.667, "maj@4": 0.667, "truncated_share": 0.0, "mean_response_tokens": 20.0,
                                    "generated_tokens_per_second": 80.0, "settings": {"sampling": {"n": 4}}}}}
BLOCK = 32 * 1024  # the .wandb log's block size


def wandb_records(path: Path):
    """The records of a .wandb log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of chunks, each
    with a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last), as LevelDB's log format."""
    from wandb.proto import wandb_internal_pb2

    data, pos, pending = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_runs(out: Path) -> list[dict]:
    """Each offline run under OUT/wandb: its run record (id, project, group, job type), every logged value and its summary."""
    runs = []
    for log_file in sorted(out.glob("wandb/offline-run-*/run-*.wandb")):
        run, logged, summary = {}, {}, {}
        for record in wandb_records(log_file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                r = record.run
                run = {"id": r.run_id, "project": r.project, "group": r.run_group, "job_type": r.job_type,
                       "name": r.display_name}
            elif kind == "history":
                logged.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                               for item in record.history.item})
            elif kind == "summary":
                summary.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                for item in record.summary.update})
        runs.append({**run, "logged": logged, "summary": summary})
    return runs


def scalars(logdir: Path) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: acc.Scalars(tag)[-1].value for tag in acc.Tags()["scalars"]}


def test_generate_and_eval_figures_in_offline_wandb(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not a dependency: pip install wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    gen, ev = tmp_path / "generate", tmp_path / "eval"
    trackers.log_figures(["tensorboard", "wandb"], gen, "generate", "exp-1", GENERATE, {"model": "teacher"})
    trackers.log_figures(["tensorboard", "wandb"], ev, "eval", "exp-1", evaluate.figures(EVAL), {"pass_k": [1, 4]})

    [g], [e] = wandb_runs(gen), wandb_runs(ev)
    assert {k: g[k] for k in ("project", "group", "job_type", "name")} == {
        "project": trackers.PROJECT, "group": "exp-1", "job_type": "generate", "name": "exp-1-generate"}
    assert (e["group"], e["job_type"], e["name"]) == ("exp-1", "eval", "exp-1-eval") and e["id"] != g["id"]
    for run, out in ((g, gen), (e, ev)):  # wandb gets what TensorBoard gets, under the same names
        tensorboard = scalars(out / "runs")
        assert {k: v for k, v in run["logged"].items() if not k.startswith("_")} == pytest.approx(tensorboard)
        assert {k: run["summary"][k] for k in tensorboard} == pytest.approx(tensorboard)
    assert g["logged"]["generate/funnel/generated"] == 18 and g["logged"]["generate/teacher_pass@3"] == 0.75
    assert e["logged"]["eval/student-after/gsm8k/pass@1"] == 0.5 and e["logged"]["eval/student-after/gsm8k/maj@4"] == 0.667
    assert "eval/student-after/gsm8k/problems" not in e["logged"]  # counts and settings are not figures

    # a rerun of the same stage in the same directory is the same wandb run (updated, not another one)
    trackers.log_figures(["wandb"], gen, "generate", "exp-1", {**GENERATE, "funnel/kept": 6}, None)
    assert {r["id"] for r in wandb_runs(gen)} == {g["id"]}


def test_sft_joins_the_same_wandb_project_and_group(monkeypatch):
    keys = ("WANDB_PROJECT", "WANDB_JOB_TYPE", "WANDB_RUN_GROUP")
    for key in keys:  # recorded, then removed: the test leaves the environment as it found it
        monkeypatch.setenv(key, "x")
        monkeypatch.delenv(key)
    trackers.join_group(["tensorboard"], "exp-1", "sft")
    assert not any(key in os.environ for key in keys)
    trackers.join_group(["wandb"], None, "sft")  # no group, but generate's and eval's project
    assert (os.environ["WANDB_PROJECT"], os.environ["WANDB_JOB_TYPE"]) == (trackers.PROJECT, "sft")
    assert "WANDB_RUN_GROUP" not in os.environ
    monkeypatch.setenv("WANDB_PROJECT", "mine")  # the user's own setting wins
    trackers.join_group(["wandb"], "exp-1", "sft")
    assert (os.environ["WANDB_PROJECT"], os.environ["WANDB_RUN_GROUP"]) == ("mine", "exp-1")
    assert trackers.hf_run_name("exp-1", "sft") == "exp-1-sft"  # as generate's and eval's wandb runs are named


def test_generate_and_eval_figures_in_trackio(tmp_path):
    """trackio, Hugging Face's local tracker: the same figures TensorBoard gets, one run per stage named after the
    group, in project seqdistill, stored under TRACKIO_DIR (read back from its SQLite file); sft gets the project
    through TrainingArguments.project. In a subprocess: trackio reads TRACKIO_DIR when it is imported."""
    import sqlite3
    import subprocess
    import sys
    import textwrap

    pytest.importorskip("trackio", reason="trackio is not installed: pip install trackio")
    script = textwrap.dedent(f"""
        from pathlib import Path
        from seqdistill import evaluate, trackers
        import test_wandb as t
        trackers.log_figures(["trackio"], Path({str(tmp_path / 'gen')!r}), "generate", "exp-1", t.GENERATE, {{"model": "teacher"}})
        trackers.log_figures(["trackio"], Path({str(tmp_path / 'ev')!r}), "eval", "exp-1", evaluate.figures(t.EVAL), None)
    """)
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "PYTHONPATH": str(Path(__file__).parent)}
    env.pop("TRACKIO_PROJECT", None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with sqlite3.connect(tmp_path / "trackio" / f"{trackers.PROJECT}.db") as db:
        logged = {name: json.loads(metrics) for name, metrics in db.execute("SELECT run_name, metrics FROM metrics")}
    assert set(logged) == {"exp-1-generate", "exp-1-eval"}
    assert logged["exp-1-generate"]["generate/funnel/generated"] == 18
    assert logged["exp-1-generate"]["generate/teacher_pass@3"] == 0.75
    assert logged["exp-1-eval"]["eval/student-after/gsm8k/maj@4"] == 0.667
    assert "eval/student-after/gsm8k/problems" not in logged["exp-1-eval"]
    assert trackers.check(["trackio"]) == [] and trackers.trackio_project() == trackers.PROJECT
