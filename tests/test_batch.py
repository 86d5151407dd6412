"""The batch backend (engine.batch) against a stand-in batch API on 127.0.0.1 (no engine, no model): the rows the
openai backend gives, one batch per chunk even across kills, only unanswered requests resubmitted, the batch price."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from batch_server import BatchServer
from fault_server import FaultServer
from test_api import KEY, KEY_ENV, make_cfg, samples

from seqdistill import config as configlib
from seqdistill import generate
from seqdistill.config import ConfigError
from seqdistill.engines.batch import BatchEngine
from seqdistill.generate import GenerateConfig

BATCH = ["engine.batch=true", "engine.batch_poll=0.01"]
CHUNKS = [["0/0", "0/1", "1/0", "1/1"], ["2/0", "2/1", "3/0", "3/1"], ["4/0", "4/1"]]  # 5 problems x 2, chunk_size 2


def record_of(out, k=0):
    return out / "samples" / "shard-00000-of-00001" / f"chunk-{k:05d}.batch.json"


def answered_once(server, requests=10):
    return len(server.upstream.answered) == requests and set(server.upstream.answered.values()) == {1}


def written(out) -> str:
    return "".join(p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file())


def test_a_batch_run_gives_the_rows_the_openai_backend_gives(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    with FaultServer() as direct:
        generate.run(make_cfg(direct, tmp_path / "direct"))
    with BatchServer(key=KEY) as server:
        server.polls = 2
        stats = generate.run(make_cfg(server, tmp_path / "gen", *BATCH, f"engine.api_key_env={KEY_ENV}"))
        assert server.submitted == CHUNKS
        assert len(server.checks) == 3 * 3  # each batch: in progress twice, then done
        assert set(server.upstream.arrivals) == set(direct.arrivals) and answered_once(server)  # same prompts, seeds
    assert samples(tmp_path / "gen") == samples(tmp_path / "direct")
    assert stats["requests"]["requests"] == 10 and stats["requests"]["errors"] == 0 and stats["failed_requests"] == 0
    assert not list((tmp_path / "gen").rglob("*.batch.json")) and not list((tmp_path / "gen").rglob("*.journal.jsonl"))
    assert KEY not in written(tmp_path / "gen")


def test_a_run_killed_while_polling_resumes_by_the_recorded_batch(tmp_path, monkeypatch):
    """SIGKILL a batch-backed generate once its first batch is recorded and polled: the rerun polls that batch, so
    each chunk is submitted once and each request answered once; the key is in no file, the record included."""
    out = tmp_path / "gen"
    monkeypatch.setenv(KEY_ENV, KEY)
    with BatchServer(key=KEY) as server:
        server.polls = 10**6  # the first batch stays in progress until the kill
        settings = [f"model={server.model}", f"output_dir={out}", "engine.backend=openai", f"engine.base_url={server.url}",
                    f"engine.api_key_env={KEY_ENV}", *BATCH, "problems.num_problems=5", "sampling.n=2",
                    "sampling.max_tokens=64", "chunk_size=2", "prompt.template=number", "answer.extraction=last_number"]
        proc = subprocess.Popen([sys.executable, "-m", "seqdistill", "generate", "--set", *settings],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 100
        while proc.poll() is None and len(server.checks) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        polled = len(server.checks)
        recorded = record_of(out).read_text()
        assert server.submitted == CHUNKS[:1] and json.loads(recorded)["batch_id"] == server.checks[0]
        assert KEY not in recorded
        server.polls = 0
        stats = generate.run(configlib.load(GenerateConfig, None, settings))
        assert server.submitted == CHUNKS  # one batch per chunk: the killed run's was polled, not sent again
        assert server.checks[polled] == server.checks[0] and answered_once(server)
    assert [(r["problem_index"], r["sample_index"]) for r in samples(out)] == [(p, s) for p in range(5) for s in range(2)]
    assert stats["failed_requests"] == 0 and KEY not in written(out)


def test_a_run_killed_while_creating_its_batch_finds_it_by_its_input_file(tmp_path, monkeypatch):
    class Killed(BaseException):
        pass

    create = BatchEngine.create

    async def create_then_die(self, client, record):
        await create(self, client, record)
        raise Killed  # the batch exists on the server, its id was never recorded

    monkeypatch.setattr(BatchEngine, "create", create_then_die)
    with BatchServer() as server:
        with pytest.raises(Killed):
            generate.run(make_cfg(server, tmp_path / "gen", *BATCH))
        assert "batch_id" not in json.loads(record_of(tmp_path / "gen").read_text()) and len(server.submitted) == 1
        monkeypatch.setattr(BatchEngine, "create", create)
        generate.run(make_cfg(server, tmp_path / "gen", *BATCH))
        assert server.submitted == CHUNKS and answered_once(server)
    assert len(samples(tmp_path / "gen")) == 10


def test_a_lost_answer_to_creating_a_batch_creates_no_second_one(tmp_path):
    with BatchServer() as server:
        server.slow_create = 1.5  # past engine.timeout (1 s): the batch exists, its answer never arrives
        generate.run(make_cfg(server, tmp_path / "gen", *BATCH, problems=2))
        assert server.submitted == CHUNKS[:1] and answered_once(server, 4)


def test_failed_requests_alone_go_into_the_next_batch(tmp_path):
    with BatchServer() as server:
        server.fail = {"1/0": 500, "3/1": 503}
        stats = generate.run(make_cfg(server, tmp_path / "gen", *BATCH))
        assert server.submitted == [CHUNKS[0], ["1/0"], CHUNKS[1], ["3/1"], CHUNKS[2]]
        assert answered_once(server)
    u = stats["requests"]
    assert (u["requests"], u["retries"], u["errors"], stats["failed_requests"]) == (12, 2, 2, 0)
    assert len(samples(tmp_path / "gen")) == 10


def test_a_refused_request_is_not_resubmitted_and_a_rerun_sends_only_it(tmp_path):
    with BatchServer() as server:
        server.fail = {"2/1": 400}
        with pytest.raises(ConfigError, match="1 requests failed after retries"):
            generate.run(make_cfg(server, tmp_path / "gen", *BATCH))
        assert server.submitted == CHUNKS
        assert 2 not in {r["problem_index"] for r in samples(tmp_path / "gen")}  # a problem is written whole or not
        generate.run(make_cfg(server, tmp_path / "gen", *BATCH))
        assert server.submitted == [*CHUNKS, ["2/1"]]
    assert len(samples(tmp_path / "gen")) == 10


def test_an_expired_batch_is_resubmitted_with_its_unanswered_requests(tmp_path):
    with BatchServer() as server:
        server.expire = 1  # the first batch answers 0/0 and 0/1, then expires
        generate.run(make_cfg(server, tmp_path / "gen", *BATCH))
        assert server.submitted == [CHUNKS[0], ["1/0", "1/1"], *CHUNKS[1:]]
        assert answered_once(server)
    assert len(samples(tmp_path / "gen")) == 10


@pytest.mark.parametrize("discount,overrides", [(0.5, []), (0.2, ["engine.batch_discount=0.2"])])
def test_cost_is_at_the_batch_price(tmp_path, caplog, discount, overrides):
    caplog.set_level(logging.INFO, logger="seqdistill")
    with BatchServer() as server:
        stats = generate.run(make_cfg(server, tmp_path / "gen", *BATCH, "engine.price_input=1000000",
                                      "engine.price_output=2000000", *overrides))  # $1 a prompt token, $2 a completion one
    low, high = map(float, re.search(r"total cost between \$([\d.]+) and \$([\d.]+)", caplog.text).groups())
    assert high - low == pytest.approx((640 - 10) * 2 * discount)  # the estimate: 10 answers of 1 to 64 tokens
    u = stats["requests"]
    assert u["completion_tokens"] > 0
    assert u["cost"] == round((u["prompt_tokens"] + 2 * u["completion_tokens"]) * discount, 4)
    assert f"cost {u['cost']}" in (tmp_path / "gen" / "README.md").read_text()


OPENAI = ["engine.backend=openai", "engine.base_url=http://127.0.0.1:1/v1", "engine.batch=true"]


@pytest.mark.parametrize("overrides,message", [
    (["engine.batch=true"], r"batch sends the requests through a server's batch API: it needs backend openai"),
    ([*OPENAI, "engine.base_url=[http://a:1/v1, http://b:1/v1]"], r"batch: true takes one base_url"),
    ([*OPENAI, "engine.requests_per_minute=60"], r"no requests_per_minute / tokens_per_minute \(the batch API paces"),
    ([*OPENAI, "engine.batch_discount=0"], r"need 0 < batch_discount <= 1 and batch_poll > 0, got 0"),
])
def test_bad_batch_settings_fail_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message):
        configlib.load(GenerateConfig, None, overrides)
