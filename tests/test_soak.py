"""The soak of issue 25, short (benchmarks/soak.py; the 10-minute run records benchmarks/results/soak.md): `seqdistill
generate` through the openai backend against a local server that answers a share of its requests with 429, 500, no
answer, a dropped connection or a slow answer, SIGKILLed once and run again: the rows equal those of an uninterrupted
run against a fault-free server, the server answered no request twice but those lost in flight at the kill, and the
run leaves no file behind. About 30 s."""

import importlib.util
import json
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("soak", Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py")
soak = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(soak)

# more of each fault than the long soak, so that 192 requests meet every kind; shorter timeouts
FAULTS = {"429": 0.05, "500": 0.015, "timeout": 0.02, "drop": 0.015, "slow": 0.08}
SIZE = {"timeout": 2.0, "hang": 2.5, "slow": 0.5}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return soak.soak(tmp_path_factory.mktemp("soak"), kills=(0.5,), seed=1, problems=48, faults=FAULTS, size=SIZE,
                     say=lambda *a: None)


def test_the_killed_run_resumes_to_the_uninterrupted_runs_rows(result):
    first, last = result["soak"]["runs"]
    assert first["killed"] and first["rc"] == -9 and 0 < first["answered_at_kill"] < 192
    assert not last["killed"] and last["rc"] == 0
    assert result["reference"]["requests"] == 192 and result["soak"]["rows"] == 192
    assert result["differing"] == [] and "completion" in result["compared_columns"]
    assert "drop_reason" in result["compared_columns"] and result["soak"]["drop_reasons"]
    assert result["checks"]["rows_identical_to_reference"] and result["checks"]["last_run_finished"]


def test_every_fault_met_and_nothing_answered_twice_but_what_the_kill_lost(result):
    s = result["soak"]
    assert all(s["faults_injected"].get(kind, 0) > 0 for kind in FAULTS), s["faults_injected"]
    assert s["requests_received"] > 192 and {429, 500} <= set(s["responses_by_status"])
    assert s["distinct_answered"] == 192 and result["over_answered"] == {}
    assert len(s["lost_in_flight"]) == 1 and s["lost_in_flight"][0] <= SIZE.get("concurrency", soak.SIZE["concurrency"])
    assert s["resent_after_kill"] == sum(s["lost_in_flight"])  # each lost answer asked for again once, nothing else
    checks = result["checks"]
    assert checks["every_request_answered"] and checks["answered_once_but_lost_in_flight"]
    assert checks["lost_in_flight_within_concurrency"] and checks["resent_within_concurrency_per_kill"]


def test_no_file_left_behind(result):
    left = result["left_behind"]
    assert left["chunks"] == 3  # 48 problems in chunks of 16
    assert {k: v for k, v in left.items() if k != "chunks"} == {
        "temporary": [], "journals": [], "set_aside": [], "chunk_without_sidecar": [], "sidecar_without_chunk": [],
        "sidecar_with_failures": []}
    assert result["checks"]["no_file_left_behind"] and result["checks"]["every_chunk_written_without_failures"]
    assert result["passed"]


def test_the_checks_see_what_a_broken_run_leaves(tmp_path):
    """left_behind and journaled on a run directory doctored as a kill and a bug would leave it."""
    chunks = tmp_path / "samples" / "shard-0"
    chunks.mkdir(parents=True)
    (chunks / "chunk-00000.json").write_text(json.dumps({"rows": 0, "failed": {"3": {"requests": 1, "error": "500"}}}))
    (chunks / "chunk-00001.parquet").write_bytes(b"")
    (chunks / ".chunk-00002.parquet.tmp4242").write_bytes(b"")
    (chunks / "chunk-00003.parquet.bad").write_bytes(b"")
    (chunks / "chunk-00004.journal.jsonl").write_text(
        json.dumps({"key": "7/1", "ok": True}) + "\n" + json.dumps({"key": "8/0", "ok": False}) + '\n{"key": "9/0", "o')
    left = soak.left_behind(tmp_path)
    assert left["temporary"] == ["samples/shard-0/.chunk-00002.parquet.tmp4242"]
    assert left["set_aside"] == ["samples/shard-0/chunk-00003.parquet.bad"]
    assert left["journals"] == ["samples/shard-0/chunk-00004.journal.jsonl"]
    assert left["chunk_without_sidecar"] == ["samples/shard-0/chunk-00001"]
    assert left["sidecar_without_chunk"] == ["samples/shard-0/chunk-00000"]
    assert left["sidecar_with_failures"] == ["samples/shard-0/chunk-00000.json"]
    (chunks / "chunk-00001.parquet").unlink()
    assert soak.journaled(tmp_path) == {"7/1"}  # the failed answer and the torn line are not answers
