"""Thinking budgets in eval (s1's budget forcing, issue 30): `thinking_budget` expands each benchmark into one entry
per budget, bad settings are refused before anything loads, and on the real vLLM engine (the tiny model) every think
block stays within its budget, is closed, gets an answer after it, continues after "Wait" below min_thinking_tokens,
resumes phase by phase, and pass@1 is drawn against the budget."""

import json

import pytest

from seqdistill import config as configlib
from seqdistill import evaluate, store
from seqdistill.config import ConfigError
from seqdistill.engines import engine, thinking
from seqdistill.evaluate import EvalConfig
from seqdistill.sources.problems import PRESETS

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"  # a hub id: checked by its name only, never loaded here


def make_cfg(out, model, *overrides):
    return configlib.load(EvalConfig, None, [
        f"output_dir={out}", f"models=[{{model: '{model}', name: tiny}}]",
        "benchmarks=[{name: embedded-heldout, num_problems: 4}]", "sampling.n=2", "sampling.max_tokens=8",
        "prompt.template=number", "answer.extraction=last_number", "answer_tokens=6", *overrides])


def test_budgets_expand_each_benchmark_and_bad_settings_are_one_line(tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path, BASE, "thinking_budget=[16, 64]",
                   "benchmarks=[{name: svamp, num_problems: 5, samples: 3}, {name: own, preset: gsm8k, thinking_budget: 32}]")
    work = evaluate.budgeted(cfg)
    assert [(b.name, b.thinking_budget, cfg.samples(b)) for b in work] == [
        ("svamp@think16", 16, 3), ("svamp@think64", 16 * 4, 3), ("own", 32, PRESETS["gsm8k"].samples)]  # own: its own budget
    assert work[0].problems_config().preset == "svamp" and work[0].num_problems == 5
    assert all(not b.validate() for b in work)
    assert cfg.max_response_tokens(work[1]) == thinking.longest(64, 6) and cfg.max_response_tokens(cfg.benchmarks[0]) == 8
    assert not make_cfg(tmp_path, BASE).thinks(cfg.benchmarks[0])  # no budget, no minimum: one phase, as before

    monkeypatch.setattr(engine, "load_vllm", lambda *a, **k: pytest.fail("engine started for a run that must be refused"))
    for overrides, message in [
        (["thinking_budget=[0]"], "thinking_budget must be at least 1 token, got 0"),
        (["thinking_budget=[8, 8]"], r"thinking_budget lists a budget twice: \[8, 8\]"),
        (["thinking_budget=[8, 64]", "min_thinking_tokens=32"], r"min_thinking_tokens \(32\) exceeds thinking_budget 8"),
        (["answer_tokens=0"], "need min_thinking_tokens >= 0 and answer_tokens >= 1"),
        (["thinking_budget=[8]", "engine.backend=openai", "engine.base_url=http://127.0.0.1:9/v1"],
         "thinking budgets continue a response from its tokens: with backend openai set engine.api: completions"),
        (["benchmarks=[{name: svamp@think8}]"], "names with @think are kept for the entries thinking_budget makes"),
    ]:
        with pytest.raises(ConfigError, match=message):
            make_cfg(tmp_path / "e", BASE, *overrides)
    # a served model through the completions API may take budgets
    make_cfg(tmp_path, BASE, "thinking_budget=[8]", *served("http://127.0.0.1:9/v1"), "engine.api=completions")


def served(url):
    return ["engine.backend=openai", f"engine.base_url={url}", "engine.served_model=tiny"]


def test_budgets_on_the_real_engine_cut_close_answer_and_resume(tiny_llm, tiny_llama, tmp_path, monkeypatch):
    cfg = make_cfg(tmp_path / "eval", tiny_llama, "thinking_budget=[3, 10]", "chunk_size=3", "answer_prefix=So it is")
    results = evaluate.run(cfg, llms={tiny_llama: tiny_llm})
    assert list(results["tiny"]) == ["embedded-heldout@think3", "embedded-heldout@think10"]
    for budget in (3, 10):
        where = tmp_path / "eval" / "tiny" / f"embedded-heldout@think{budget}"
        samples = store.read_parquet([where / "samples.parquet"]).to_list()
        assert len(samples) == 4 * 2
        for s in samples:  # the think block within its budget, closed once, the answer after it
            assert 1 <= s["thinking_tokens"] <= budget and s["response"].count("\n</think>\n\n") == 1
            assert s["response"].split("\n</think>\n\n")[1].startswith("So it is")  # the answer forced after it
            assert s["response_tokens"] <= budget + 6 and s["waits"] == 0
        assert any(s["budget_hit"] for s in samples)  # a random model rarely ends a block on its own
        r = results["tiny"][f"embedded-heldout@think{budget}"]
        assert r["thinking"]["budget"] == budget and r["thinking"]["mean_thinking_tokens"] <= budget
        assert sorted(p.name for p in (where / "chunks").iterdir()) == ["answer", "think"]
    longer = store.read_parquet([tmp_path / "eval" / "tiny" / "embedded-heldout@think10" / "samples.parquet"])
    assert max(longer["thinking_tokens"]) > 3
    assert (tmp_path / "eval" / evaluate.BUDGET_FIGURE).is_file()
    assert "embedded-heldout@think10 pass@1" in (tmp_path / "eval" / "results.md").read_text()

    # the answer phase lost: a rerun samples only the answers again, from the kept think blocks, and draws the same
    where = tmp_path / "eval" / "tiny" / "embedded-heldout@think10"
    whole = store.read_parquet([where / "samples.parquet"])["response"]
    kept = {p: p.stat().st_mtime for p in (where / "chunks" / "think").glob("*.parquet")}
    for path in ("results.json", "samples.parquet", "chunks/answer/chunk-00001.parquet"):
        (where / path).unlink()
    evaluate.run(cfg, llms={tiny_llama: tiny_llm})
    assert {p: p.stat().st_mtime for p in kept} == kept
    assert store.read_parquet([where / "samples.parquet"])["response"] == whole


def test_min_thinking_tokens_continue_a_block_after_wait(tiny_llm, tiny_llama, tmp_path):
    # "e" stops a block almost at once (a stand-in for a model that closes its think block early)
    cfg = make_cfg(tmp_path / "eval", tiny_llama, "thinking_budget=[12]", "min_thinking_tokens=6",
                   "sampling.stop=[e]", "sampling.temperature=1.0")
    results = evaluate.run(cfg, llms={tiny_llama: tiny_llm})
    samples = store.read_parquet([tmp_path / "eval" / "tiny" / "embedded-heldout@think12" / "samples.parquet"]).to_list()
    waited = [s for s in samples if s["waits"]]
    assert waited, "no think block ended before 6 tokens: the stop string did not bite"
    for s in samples:
        think = s["response"].split("\n</think>\n\n")[0]
        assert think.count(thinking.WAIT) >= s["waits"] and s["thinking_tokens"] <= 12
        # each block reached the minimum, ran into the budget, or used every Wait
        assert s["thinking_tokens"] >= 6 or s["budget_hit"] or s["waits"] == thinking.MAX_WAITS
    assert results["tiny"]["embedded-heldout@think12"]["thinking"]["mean_waits"] > 0
    phases = sorted(p.name for p in (tmp_path / "eval" / "tiny" / "embedded-heldout@think12" / "chunks").iterdir())
    assert phases[:2] == ["answer", "think"] and phases[2:] and all(p.startswith("wait-") for p in phases[2:])
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["tiny"]["embedded-heldout@think12"]["thinking"]["min_tokens"] == 6
