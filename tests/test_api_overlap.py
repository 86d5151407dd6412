"""The OpenAI-compatible backend keeps engine.max_concurrency requests in flight from the first request to the last:
a chunk's stragglers no longer hold back the next chunk (issue 26), while each chunk is still written whole and a
killed run still sends no answered request twice. Also: custom headers read from the environment (engine.headers)
and the body field that carries max_tokens (engine.max_tokens_field), for hosted APIs (issue 29).
Against the fault-injecting server on 127.0.0.1 (no engine, no model)."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from fault_server import FaultServer
from test_api import make_cfg, samples

from seqdistill import config as configlib
from seqdistill import generate
from seqdistill.config import ConfigError
from seqdistill.generate import GenerateConfig


def problem_of(prompt: str, questions: list[str]) -> int:
    return next(i for i, q in enumerate(questions) if q in prompt)


def chunk_files(out) -> dict:
    """Every chunk's rows, sidecar (less its seconds) and journal lines (in any order), by file name."""
    files = {}
    for p in sorted(out.rglob("chunk-*")):
        if p.name.endswith(".json"):
            files[p.name] = {k: v for k, v in json.loads(p.read_text()).items() if k != "seconds"}
        elif p.name.endswith(".journal.jsonl"):
            files[p.name] = sorted(p.read_text().splitlines())
    return files


def test_the_next_chunk_runs_beside_a_straggler_and_the_output_is_the_chunk_at_a_time_one(tmp_path):
    """3 chunks of 2 problems x 2 samples, max_concurrency 4. Problem 0 (chunk 0) answers in 1 s, the rest at once:
    every request of chunks 1 and 2 starts while chunk 0's stragglers run, never more than 4 in flight, and rows,
    sidecars and journals (problem 3 of chunk 1 is refused, so its journal stays) are what max_concurrency 1 gives,
    where no chunk can overlap another."""
    runs = {}
    for concurrency in (4, 1):
        with FaultServer(delay=0.01) as server:
            cfg = make_cfg(server, tmp_path / f"c{concurrency}", f"engine.max_concurrency={concurrency}",
                           "engine.timeout=30", problems=6)
            questions = [r["question"] for r in generate.select_problems(cfg)]
            server.slow[questions[0]] = 1.0
            server.always[questions[3]] = "400"
            with pytest.raises(ConfigError, match="2 requests failed after retries"):
                generate.run(cfg)
            spans = [s for s in server.spans if s[1] is not None]  # completions (not the check's /tokenize)
            runs[concurrency] = spans, server.max_inflight, server.answered
    spans, most, answered = runs[4]
    straggler_end = min(end for prompt, _, _, end in spans if problem_of(prompt, questions) == 0)
    later = [start for prompt, _, start, _ in spans if problem_of(prompt, questions) >= 2]
    assert len(later) == 8 and max(later) < straggler_end  # chunks 1 and 2 sent before chunk 0's first straggler is in
    assert most == 4  # one limit over all chunks: all 4 slots busy, never more
    assert sorted(answered.values()) == [1] * 10  # 12 requests, 2 refused, no answer twice
    assert runs[1][1] == 1
    assert chunk_files(tmp_path / "c4") == chunk_files(tmp_path / "c1")
    assert "chunk-00001.journal.jsonl" in chunk_files(tmp_path / "c4")
    assert samples(tmp_path / "c4") == samples(tmp_path / "c1") and len(samples(tmp_path / "c4")) == 10


def test_a_run_killed_while_chunks_overlap_resumes_exactly_once(tmp_path):
    """SIGKILL a run while two chunks' requests are in flight (every chunk's first problem takes 0.5 s), rerun to
    the end: every (problem, sample) once, and no request answered twice but those in flight at each kill."""
    out, rng, kills, overlapped = tmp_path / "gen", random.Random(1), 0, 0
    with FaultServer(delay=0.01) as server:
        args = ["generate", "--set", f"model={server.model}", f"output_dir={out}", "engine.backend=openai",
                f"engine.base_url={server.url}", "engine.max_concurrency=4", "problems.num_problems=24",
                "sampling.n=2", "chunk_size=4", "prompt.template=number", "answer.extraction=last_number"]
        cfg = configlib.load(GenerateConfig, None, args[2:])
        questions = [r["question"] for r in generate.select_problems(cfg)]
        for q in questions[::4]:
            server.slow[q] = 0.5
        for attempt in range(3):
            proc = subprocess.Popen([sys.executable, "-m", "seqdistill", *args], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
            if attempt == 2:  # the last run goes to the end
                assert proc.wait(timeout=300) == 0
                break
            deadline = time.monotonic() + 120
            while proc.poll() is None and len(list(out.rglob("*.journal.jsonl"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)  # two chunks' journals open: the next chunk started before the last one finished
            overlapped += len(list(out.rglob("*.journal.jsonl"))) >= 2
            time.sleep(rng.uniform(0.0, 0.3))
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                kills += 1
            proc.wait()
        answered = server.answered
    assert kills == 2 and overlapped == 2
    keys = [(r["problem_index"], r["sample_index"]) for r in samples(out)]
    assert sorted(keys) == [(p, s) for p in range(24) for s in range(2)]
    assert len(answered) == 48
    assert sum(answered.values()) - 48 <= 4 * kills  # at most the requests in flight (concurrency 4) per kill


def test_a_request_that_stops_the_run_cancels_the_rest_and_the_finished_chunks_are_kept(tmp_path):
    """The server starts refusing the key after chunk 0's 4 answers: one line, chunk 0 written, no request sent
    once the refusal is in, and a rerun sends only what was not journaled."""
    with FaultServer(delay=0.05) as server:
        cfg = make_cfg(server, tmp_path / "gen", "engine.max_concurrency=4", problems=12)  # 6 chunks of 4 requests
        answers = iter(range(100))

        def reply(prompt, seed):
            if next(answers) == 3:
                server.key = "sk-rotated"  # every request from now on: 401
            return "The answer is 1."

        server.reply = reply
        with pytest.raises(ConfigError, match=r"^the server refused no key \(set engine.api_key_env\) \(401\); check the key$"):
            generate.run(cfg)
        sent = server.requests
        assert sent <= 4 + 4 + 4  # of 24: chunk 0, the 4 in flight at the rotation, and the 4 sent before a 401 is in
        chunks = tmp_path / "gen" / "samples"
        assert [p.name for p in sorted(chunks.rglob("chunk-*.json"))] == ["chunk-00000.json"]
        server.key, server.reply = None, None
        generate.run(cfg)
        assert len(server.answered) == 24  # every request answered; twice at most the 4 in flight at the refusal
        assert sum(server.answered.values()) - 24 <= 4  # (cancelled there before their answers could be journaled)
    assert len(samples(tmp_path / "gen")) == 24


HEADERS = {"SEQDISTILL_TEST_AZURE": "azure-secret-5f3a9c", "SEQDISTILL_TEST_REFERER": "https://referer.example/x7q2"}


def test_custom_headers_are_sent_from_the_environment_and_never_written(tmp_path, monkeypatch, caplog):
    for name, value in HEADERS.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "gen"
    with FaultServer() as server:
        generate.run(make_cfg(server, out, "engine.headers={api-key: SEQDISTILL_TEST_AZURE, "
                                           "HTTP-Referer: SEQDISTILL_TEST_REFERER}", problems=2, n=1))
        seen = [{k.lower(): v for k, v in h.items()} for h in server.headers]
    assert len(seen) == 1 + 1 + 2  # GET /models, POST /tokenize (the context check), then 2 completions
    assert all(h["api-key"] == HEADERS["SEQDISTILL_TEST_AZURE"] and h["http-referer"] == HEADERS["SEQDISTILL_TEST_REFERER"]
               for h in seen)
    written = "".join(p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file()) + caplog.text
    assert not [v for v in HEADERS.values() if v in written]
    assert "SEQDISTILL_TEST_AZURE" in (out / "seqdistill_config.yaml").read_text()


@pytest.mark.parametrize("headers,message", [
    ("{api-key: SEQDISTILL_TEST_UNSET}",
     r"engine.headers.api-key names SEQDISTILL_TEST_UNSET, which is not set: export SEQDISTILL_TEST_UNSET=\.\.\."),
    ("{api-key: sk-abc/123}", r"engine.headers.api-key must be the NAME of an environment variable holding the value"),
    ("{api-key: a3f9e0c1d2b4}", r"engine.headers.api-key must be the NAME of an environment variable .* in upper case"),
    ("{'bad header': SEQDISTILL_TEST_AZURE}", r"engine.headers: 'bad header' is not an HTTP header name"),
])
def test_a_bad_header_fails_before_any_request(tmp_path, monkeypatch, headers, message):
    monkeypatch.setenv("SEQDISTILL_TEST_AZURE", "x")
    monkeypatch.delenv("SEQDISTILL_TEST_UNSET", raising=False)
    with FaultServer() as server:
        with pytest.raises(ConfigError, match=message) as e:
            generate.run(make_cfg(server, tmp_path / "gen", f"engine.headers={headers}"))
        assert server.headers == []  # not even GET /models
    assert "sk-abc/123" not in str(e.value) and "a3f9e0c1d2b4" not in str(e.value)  # a pasted key is never echoed


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_goes_in_the_field_the_api_takes(tmp_path, field):
    with FaultServer() as server:
        generate.run(make_cfg(server, tmp_path / "gen", f"engine.max_tokens_field={field}", problems=2, n=1))
        bodies = [b for b in server.bodies if "seed" in b]  # the completions, not the context check's /tokenize
    other = {"max_tokens", "max_completion_tokens"} - {field}
    assert len(bodies) == 2 and all(b[field] == 64 and not other & set(b) for b in bodies)


def test_an_unknown_max_tokens_field_is_refused():
    with pytest.raises(ConfigError, match=r"max_tokens_field must be max_tokens or max_completion_tokens, got 'max_new'"):
        configlib.load(GenerateConfig, None, ["engine.backend=openai", "engine.base_url=http://127.0.0.1:1/v1",
                                              "engine.max_tokens_field=max_new"])
