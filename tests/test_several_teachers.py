"""Several teachers in one generate run (issue 30): `teachers` refused when malformed before anything loads; on the
real vLLM engine (the tiny model as two teachers with their own seeds) every problem is sampled from each, rows
name their teacher, the per-problem filters choose across teachers, the card and stats count each, weights send each
problem to one teacher, and a rerun samples nothing."""

import pytest
from datasets import Dataset

from seqdistill import config as configlib
from seqdistill import generate, store
from seqdistill.config import ConfigError
from seqdistill.engines import engine
from seqdistill.generate import GenerateConfig
from seqdistill.sources.filters import FilterConfig

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"  # a hub id: checked by its name only, never loaded here


def make_cfg(out, teachers, *overrides):
    return configlib.load(GenerateConfig, None, [
        f"teachers={teachers}", f"output_dir={out}", "problems.num_problems=5", "sampling.n=2",
        "sampling.max_tokens=10", "chunk_size=2", "answer.extraction=last_number", "sampling.temperature=1.0",
        *overrides])


def rows(out):
    rows = list(store.read_parquet([out / "data" / "train.parquet", out / "data" / "dropped.parquet"]))
    return sorted(rows, key=lambda r: (r["problem_index"], r["sample_index"]))


@pytest.mark.parametrize("teachers, overrides, message", [
    (f"[{{model: {BASE}}}]", [f"model={BASE}x"], "give the teacher in model or the teachers in teachers, not both"),
    (f"[{{model: {BASE}}}, {{model: {BASE}}}]", [], r"teacher names must be unique, got \['SmolLM2-135M-Instruct'"),
    (f"[{{model: {BASE}, name: a, weight: 2}}, {{model: {BASE}, name: b}}]", [],
     r"give every teacher a weight > 0 .* or none .*; got \[2.0, None\]"),
    (f"[{{model: {BASE}, name: a}}, {{model: {BASE}, name: b}}]", ["teacher_logprobs=true"],
     "teacher_logprobs with several teachers would mix their distributions"),
    (f"[{{model: {BASE}, name: 'a b'}}]", [], "name 'a b' must be letters, digits"),
    (f"[{{model: {BASE}, name: a, engine: {{backend: openai}}}}]", [], r"teachers\[0\]: engine.backend openai needs base_url"),
])
def test_bad_teachers_are_one_line_before_anything_loads(tmp_path, monkeypatch, teachers, overrides, message):
    monkeypatch.setattr(engine, "load_vllm", lambda *a, **k: pytest.fail("engine started for a run that must be refused"))
    with pytest.raises(ConfigError, match=message):
        make_cfg(tmp_path, teachers, *overrides)


def test_two_teachers_sample_every_problem_and_filters_choose_across_them(tiny_llm, tiny_llama, tmp_path, monkeypatch):
    out = tmp_path / "gen-two"
    cfg = make_cfg(out, f"[{{model: '{tiny_llama}', name: a}}, {{model: '{tiny_llama}', name: b}}]")
    stats = generate.run(cfg, llm=tiny_llm)
    samples = rows(out)
    assert len(samples) == 5 * 2 * 2 == stats["funnel"]["generated"]
    for problem in {r["problem_index"] for r in samples}:  # a's samples 0, 1 then b's 2, 3, each problem
        mine = [r for r in samples if r["problem_index"] == problem]
        assert [(r["teacher"], r["sample_index"]) for r in mine] == [("a", 0), ("a", 1), ("b", 2), ("b", 3)]
    a = [r["completion"] for r in samples if r["teacher"] == "a"]
    b = [r["completion"] for r in samples if r["teacher"] == "b"]
    assert a != b  # each teacher its own seeds
    shard = out / "samples" / "shard-00000-of-00001"
    assert sorted(p.name for p in shard.iterdir() if p.is_dir()) == ["a", "b"]
    assert set(stats["teachers"]) == {"a", "b"} and all(t["samples"] == 10 for t in stats["teachers"].values())
    assert sum(t["funnel"]["kept"] for t in stats["teachers"].values()) == stats["funnel"]["kept"]
    readme = (out / "README.md").read_text()
    assert "## Teachers" in readme and "| a | 5 | 10 |" in readme and f"`{tiny_llama}` (a)" in readme

    # the per-problem filters see both teachers' samples of a problem together: were every sample right,
    # max_per_problem 1 with prefer shortest keeps the shortest of the four, whichever teacher wrote it
    right = Dataset.from_list([r | {"correct": True, "keep": True, "drop_reason": None} for r in samples],
                              features=generate.sample_features())
    chosen = generate.reselect(right, FilterConfig(max_per_problem=1, prefer="shortest", near_duplicate=1.0)).to_list()
    for problem in {r["problem_index"] for r in samples}:
        mine = [r for r in chosen if r["problem_index"] == problem]
        kept = [r for r in mine if r["keep"]]
        assert len(kept) == 1 and kept[0]["completion_tokens"] == min(r["completion_tokens"] for r in mine)
    monkeypatch.setattr(engine, "load_vllm", lambda *a, **k: pytest.fail("engine started for a finished run"))
    assert generate.run(cfg)["funnel"] == stats["funnel"]  # a rerun samples nothing


def test_weights_send_each_problem_to_one_teacher(tiny_llm, tiny_llama, tmp_path):
    out = tmp_path / "gen-weighted"
    cfg = make_cfg(out, f"[{{model: '{tiny_llama}', name: a, weight: 3}}, {{model: '{tiny_llama}', name: b, weight: 1}}]",
                   "problems.num_problems=12")
    stats = generate.run(cfg, llm=tiny_llm)
    samples = rows(out)
    assert len(samples) == 12 * 2  # each problem once, from one teacher
    by_problem = {}
    for r in samples:
        by_problem.setdefault(r["problem_index"], set()).add(r["teacher"])
    assert all(len(t) == 1 for t in by_problem.values())
    rows_ = generate.select_problems(cfg)
    assigned = cfg.assigned(rows_)
    assert {rows_[i]["_index"] for i in assigned["a"]} == {p for p, t in by_problem.items() if t == {"a"}}
    assert assigned["a"] and assigned["b"]  # 12 problems at 3:1: both teachers drew some (seeded, fixed)
    assert stats["teachers"]["a"]["problems"] == len(assigned["a"])
