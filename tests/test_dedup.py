"""Near-duplicate problems across sources (problems.mix + filters.near_duplicate_problems), on GSM8K train and MAWPS."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from seqdistill import config as configlib
from seqdistill import generate, store
from seqdistill.config import ConfigError
from seqdistill.generate import GenerateConfig
from seqdistill.sources import dedup, filters, problems
from seqdistill.sources.filters import FilterConfig
from seqdistill.sources.problems import ProblemsConfig, ProblemSource

ROOT = Path(__file__).resolve().parents[1]
# MAWPS's own repeats among its first 700 problems (removed id, the earlier one kept, Jaccard)
MAWPS_REPEATS = [("255", "226", 0.8776), ("275", "138", 0.8095), ("517", "508", 1.0), ("526", "510", 1.0),
                 ("637", "635", 1.0), ("638", "630", 1.0), ("650", "646", 1.0), ("658", "655", 1.0), ("674", "673", 1.0),
                 ("687", "686", 1.0), ("688", "686", 1.0), ("689", "686", 1.0), ("692", "691", 1.0), ("693", "691", 1.0),
                 ("695", "691", 1.0)]


def mixed(benchmarks_dir, tmp_path, threshold=0.8) -> GenerateConfig:
    """GSM8K train (300) + MAWPS (700) + a third file holding edited copies of problems of both."""
    gsm = [json.loads(line) for line in (benchmarks_dir / "gsm8k" / "train.jsonl").open()][:2]
    mawps = [json.loads(line) for line in (benchmarks_dir / "mawps" / "test.jsonl").open()][:2]
    edited = [
        gsm[0]["question"].replace(" ", "  "),  # the same text, spaced differently
        mawps[1]["input"].replace("did he store", "did he stack").replace(" ?", "?"),  # two small edits
        gsm[1]["question"].replace("Weng earns", "Weng makes"),  # one word
        "A farmer has 17 sheep and buys 5 goats. How many animals does the farmer have?",  # new
    ]
    path = tmp_path / "edited.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": "1"}) + "\n" for q in edited))
    mix = configlib.build(ProblemsConfig, {
        "source": str(benchmarks_dir / "gsm8k" / "train.jsonl"), "preset": "gsm8k", "num_problems": 300,
        "mix": [{"source": str(benchmarks_dir / "mawps" / "test.jsonl"), "preset": "mawps", "num_problems": 700},
                {"source": str(path)}]}, "problems.")
    return GenerateConfig(problems=mix, filters=FilterConfig(near_duplicate_problems=threshold))


def test_exact_and_near_duplicates_removed_across_sources(benchmarks_dir, tmp_path):
    cfg = mixed(benchmarks_dir, tmp_path)
    funnel = {}
    rows = generate.select_problems(cfg, funnel)
    assert funnel == {"loaded": 1004, "distinct": 1004 - 18}
    everything = problems.load(cfg.problems)
    kept_ids = {r["id"] for r in rows}
    removed = [r["id"] for r in everything if r["id"] not in kept_ids]
    assert removed == [f"mix0-test-{a}" for a, _, _ in MAWPS_REPEATS] + ["mix1-edited-0", "mix1-edited-1", "mix1-edited-2"]
    assert {"train-0", "train-1", "mix0-test-1", "mix1-edited-3"} <= kept_ids  # first occurrences and the new problem
    assert [r["_index"] for r in rows] == sorted(r["_index"] for r in rows)  # source order kept


def test_pairs_similarities_and_threshold(benchmarks_dir, tmp_path):
    rows = problems.load(mixed(benchmarks_dir, tmp_path).problems)
    texts = [r["question"] for r in rows]
    pairs = [(rows[d.index]["id"], rows[d.of]["id"], d.similarity) for d in dedup.near_duplicates(texts, 0.8)]
    assert pairs[:15] == [(f"mix0-test-{a}", f"mix0-test-{b}", s) for a, b, s in MAWPS_REPEATS]
    assert pairs[15:] == [("mix1-edited-0", "train-0", 1.0), ("mix1-edited-1", "mix0-test-1", 0.8235),
                          ("mix1-edited-2", "train-1", 0.84)]
    # a higher threshold keeps the pairs under it
    at_09 = [(rows[d.index]["id"], d.similarity) for d in dedup.near_duplicates(texts, 0.9)]
    assert [s for _, s in at_09] == [1.0] * 14
    assert not {"mix0-test-255", "mix0-test-275", "mix1-edited-1", "mix1-edited-2"} & set(dict(at_09))


def brute_force(texts: list[str], threshold: float) -> list[tuple[int, int]]:
    """Every text against every kept earlier one: O(n^2), what LSH must reproduce."""
    sets, kept, out = [dedup.shingles(t) for t in texts], [], []
    for i, s in enumerate(sets):
        best = max(((filters.jaccard(s, sets[j]), -j) for j in kept), default=(0.0, 0))
        if best[0] >= threshold:
            out.append((i, -best[1]))
        else:
            kept.append(i)
    return out


@pytest.mark.parametrize("threshold", [0.7, 0.8, 0.9])
def test_lsh_finds_what_all_pairs_find(benchmarks_dir, threshold):
    rows = problems.load(ProblemsConfig(source=str(benchmarks_dir / "mawps" / "test.jsonl"), preset="mawps",
                                        num_problems=1000))
    texts = [r["question"] for r in rows]
    assert [(d.index, d.of) for d in dedup.near_duplicates(texts, threshold)] == brute_force(texts, threshold)


def test_bands_propose_a_pair_at_the_threshold():
    for threshold in (0.5, 0.7, 0.8, 0.9, 0.95, 1.0):
        b, r = dedup.bands(threshold)
        assert b * r <= dedup.NUM_PERM and 1 - (1 - threshold**r) ** b >= 0.99
    assert dedup.bands(0.8) == (21, 6)


def test_deterministic_across_python_processes(benchmarks_dir):
    """Shingles are hashed with CRC32 and seeded permutations, not Python's salted hash()."""
    code = ("import sys, json; from seqdistill.sources import dedup; texts = [json.loads(l)['input'] for l in open(sys.argv[1])]"
            "[:600]; print([(d.index, d.of, d.similarity) for d in dedup.near_duplicates(texts, 0.8)]); "
            "print(dedup.signatures([dedup.shingles(texts[0])]).tolist())")
    outs = [subprocess.run([sys.executable, "-c", code, str(benchmarks_dir / "mawps" / "test.jsonl")], capture_output=True,
                           text=True, check=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")]
    assert outs[0] == outs[1] and outs[0].startswith("[(255, 226, 0.8776), (275, 138, 0.8095), (517, 508, 1.0)")
    assert "\n[[17887338, 33227893, 22329641, 26961411, " in outs[0]  # the same signature on any machine


def test_off_by_default_and_quickstart_problems_unchanged():
    assert FilterConfig().near_duplicate_problems is None and ProblemsConfig().mix == []
    quick = yaml.safe_load((ROOT / "pipelines" / "quickstart.yaml").read_text())["generate"]
    on = GenerateConfig(problems=configlib.build(ProblemsConfig, quick["problems"]),
                        filters=configlib.build(FilterConfig, {**quick["filters"], "near_duplicate_problems": 0.8}))
    funnel = {}
    assert len(generate.select_problems(on, funnel)) == 200
    assert funnel == {"loaded": 200, "distinct": 200, "decontaminated": 200}  # no problem removed as a near-duplicate


def test_bad_settings_are_refused(benchmarks_dir):
    assert FilterConfig(near_duplicate_problems=0.0).validate() == [
        "near_duplicate_problems must be in (0, 1] (or null: off), got 0.0"]
    with pytest.raises(ConfigError, match=r"unknown setting problems.mix\[0\].sorce \(did you mean problems.mix\[0\].source"):
        configlib.build(ProblemsConfig, {"mix": [{"sorce": "x.jsonl"}]}, "problems.")
    with pytest.raises(ConfigError, match=r"mix\[0\]: problem file missing.jsonl does not exist"):
        configlib.build(ProblemsConfig, {"mix": [{"source": "missing.jsonl"}]}, "problems.")
    same = str(benchmarks_dir / "mawps" / "test.jsonl")
    rows = problems.load(ProblemsConfig(source=same, preset="mawps", num_problems=3,
                                        mix=[ProblemSource(source=same, preset="mawps", num_problems=3)]))
    assert [r["id"] for r in rows] == ["test-0", "test-1", "test-2", "mix0-test-0", "mix0-test-1", "mix0-test-2"]


def test_generate_samples_only_distinct_problems_engine(tiny_llm, tiny_llama, tmp_path):
    """Real vLLM engine (the session's shared tiny Llama): the removed problems get no samples, stats.json has the
    problem funnel, and the language filter runs beside the others."""
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    questions = ["Tom has 3 apples and buys 4 more. How many apples does Tom have now?",
                 "A box holds 6 pens. How many pens are in 2 boxes?",
                 "Sara reads 5 pages of her book every day for 3 days in a row. How many pages does she read?"]
    first.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in zip(questions, "7 12 15".split())))
    repeats = [questions[0], questions[2].replace("read?", "read in all?"), "Ann has 9 cards and gives away 2. How many are left?"]
    second.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in zip(repeats, "7 15 7".split())))
    out = tmp_path / "gen-dedup"
    cfg = configlib.load(GenerateConfig, None, [
        f"model={tiny_llama}", f"output_dir={out}", f"problems.source={first}", f"problems.mix=[{{source: {second}}}]",
        "filters.near_duplicate_problems=0.8", "filters.language=latin", "sampling.n=2", "sampling.max_tokens=12",
        "answer.extraction=last_number"])
    stats = generate.run(cfg, llm=tiny_llm)
    assert stats["problem_funnel"] == {"loaded": 6, "distinct": 4}
    assert json.loads((out / "stats.json").read_text())["problem_funnel"] == stats["problem_funnel"]
    rows = store.read_parquet([out / "data" / "train.parquet", out / "data" / "dropped.parquet"])
    assert sorted(set(rows["problem_id"])) == ["first-0", "first-1", "first-2", "mix0-second-2"]
    assert stats["funnel"]["generated"] == 4 * 2 and set(stats["drop_reasons"]) <= set(filters.REASONS)
