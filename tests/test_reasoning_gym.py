"""reasoning-gym as a problem source: seeded draws, disjoint splits, each task's own checker through the
filter chain, generate and eval end to end through the fault server (no model), the pass-rate band, bad input."""

import json
import threading
from collections import Counter

import pytest
import yaml
from fault_server import FaultServer

from seqdistill import config as configlib
from seqdistill import evaluate, generate, store
from seqdistill.checking.verify import AnswerConfig
from seqdistill.config import ConfigError
from seqdistill.evaluate import EvalConfig
from seqdistill.generate import GenerateConfig
from seqdistill.sources import filters, problems
from seqdistill.sources.filters import FilterConfig
from seqdistill.sources.problems import ProblemsConfig

MIX = "[{name: chain_sum, weight: 3, config: {max_terms: 3}}, {name: word_sorting, weight: 1}]"


def draw(*overrides) -> list[dict]:
    return problems.load(configlib.load(ProblemsConfig, None, ["source=reasoning-gym", *overrides]))


def gen_cfg(server, out, *overrides, n=2):
    return configlib.load(GenerateConfig, None, [
        f"model={server.model}", f"output_dir={out}", "problems.source=reasoning-gym", f"problems.tasks={MIX}",
        "problems.num_problems=8", f"sampling.n={n}", "sampling.max_tokens=64", "chunk_size=3",
        "engine.backend=openai", f"engine.base_url={server.url}", "engine.max_concurrency=2", *overrides])


def answerer(rows, right=lambda row, seed, count: seed % 2 == 0):
    """A fault-server reply hook: the gold in <answer> tags when `right`, else a wrong answer; counts requests per problem."""
    counts, lock = Counter(), threading.Lock()

    def reply(prompt, seed):
        row = max((r for r in rows if r["question"].strip() in prompt), key=lambda r: len(r["question"]))
        with lock:
            counts[row["id"]] += 1
            count = counts[row["id"]]
        answer = row["answer"] if right(row, seed, count) else "not " + row["answer"]
        return f"<think>\nLet me work it out, try {seed}.\n</think>\n<answer>{answer}</answer>"

    return reply


def samples(out):
    return sorted(store.read_parquet([out / "data" / "train.parquet", out / "data" / "dropped.parquet"]),
                  key=lambda r: (r["problem_index"], r["sample_index"]))


def test_draws_are_seeded_reproducible_and_weighted():
    rows = draw(f"tasks={MIX}", "num_problems=8", "seed=3")
    assert rows == draw(f"tasks={MIX}", "num_problems=8", "seed=3")
    assert Counter(r["rg_task"] for r in rows) == {"chain_sum": 6, "word_sorting": 2}
    assert {r["question"] for r in rows} != {r["question"] for r in draw(f"tasks={MIX}", "num_problems=8", "seed=4")}
    assert len({r["id"] for r in rows}) == 8 and all(r["answer"] for r in rows)
    assert all(json.loads(r["rg_metadata"])["source_dataset"] == r["rg_task"] for r in rows)
    assert all(len(r["question"].split("+")) <= 3 for r in rows if r["rg_task"] == "chain_sum")  # the task's config


def test_train_and_heldout_never_overlap():
    small = "tasks=[{name: chain_sum, config: {min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}}]"
    train = {r["question"] for r in draw(small, "num_problems=120", "split=train")}
    heldout = {r["question"] for r in draw(small, "num_problems=25", "split=heldout")}
    assert len(train) == 120 and len(heldout) == 25 and not train & heldout


@pytest.mark.parametrize("task,wrong", [("chain_sum", "12345678"), ("leg_counting", "1"),
                                        ("word_sorting", "zzz, aaa"), ("spell_backward", "nope")])
def test_right_and_wrong_answers_judged_by_the_tasks_own_checker(task, wrong):
    row = draw(f"tasks={task}", "num_problems=1")[0]
    texts = [f"<think>\nsteps\n</think>\n<answer>{row['answer']}</answer>", f"<think>\nsteps\n</think>\n{row['answer']}",
             f"<think>\nsteps\n</think>\n<answer>{wrong}</answer>", "<think>\nno end"]
    sample = [{"completion": t, "finish_reason": "stop", "completion_tokens": 5, "sample_index": i} for i, t in enumerate(texts)]
    out = filters.apply(sample, row["answer"], FilterConfig(near_duplicate=1.0), AnswerConfig(), True, problem=row)
    assert [o["correct"] for o in out] == [True, True, False, False]
    assert [o["drop_reason"] for o in out][2:] == ["wrong_answer", "unbalanced_think"]
    assert {o["verifier"] for o in out} == {f"reasoning-gym:{task}"} and out[0]["verdict_detail"] == "score 1"


def test_generate_end_to_end_on_a_two_task_mix(tmp_path):
    with FaultServer() as server:
        rows = generate.select_problems(gen_cfg(server, tmp_path / "gen"))
        server.reply = answerer(rows)  # right for even seeds
        stats = generate.run(gen_cfg(server, tmp_path / "gen", "filters.require_think=true", "filters.near_duplicate=1.0"))
    out = samples(tmp_path / "gen")
    assert len(out) == 16 and all(r["keep"] == (r["drop_reason"] is None) for r in out)
    seeds = {(q, s) for q, s in server.arrivals}
    assert sum(r["keep"] for r in out) == sum(1 for _, s in seeds if s % 2 == 0) == stats["funnel"]["kept"]
    assert {r["drop_reason"] for r in out} == {None, "wrong_answer"}
    assert stats["verifier"]["reasoning-gym"] == {"chain_sum": 12, "word_sorting": 4} and stats["verifier"]["math-verify"] == 0
    assert "16 answers by their reasoning-gym task's own score_answer (chain_sum 12, word_sorting 4)" in \
        (tmp_path / "gen" / "README.md").read_text()


def test_pass_rate_band_drops_exactly_the_problems_outside_it(tmp_path):
    rights = {}  # problem id -> how many of its 4 samples are right (the first ones to arrive)

    def right(row, seed, count):
        return count <= rights[row["id"]]

    with FaultServer() as server:
        rows = generate.select_problems(gen_cfg(server, tmp_path / "gen"))
        rights.update({r["id"]: i % 5 for i, r in enumerate(rows)})  # 0..4 right of 4
        server.reply = answerer(rows, right)
        stats = generate.run(gen_cfg(server, tmp_path / "gen", "filters.pass_rate=[0.5, 0.75]", "filters.max_per_problem=null",
                                     "filters.near_duplicate=1.0", n=4))
    out = samples(tmp_path / "gen")
    kept = {r["problem_id"] for r in out if r["keep"]}
    assert kept == {pid for pid, c in rights.items() if c in (2, 3)}
    reasons = Counter((rights[r["problem_id"]], r["drop_reason"]) for r in out if r["correct"] and not r["keep"])
    assert reasons == {(1, "too_hard"): sum(c == 1 for c in rights.values()),
                       (4, "too_easy"): 4 * sum(c == 4 for c in rights.values())}
    assert stats["funnel"]["correct"] - stats["funnel"]["in_band"] == sum(reasons.values())
    assert stats["pass_rate"] == {"problems_solved": {"0/4": 2, "1/4": 2, "2/4": 2, "3/4": 1, "4/4": 1},
                                  "problems_without_trace": 5, "too_easy": 1, "too_hard": 2}
    card = (tmp_path / "gen" / "README.md").read_text()
    assert "## Teacher pass rate\n\n| right samples | problems |\n| --- | --- |\n| 0/4 | 2 |\n| 1/4 | 2 |" in card
    assert "5 of 8 problems contribute no trace (1 too easy and 2 too hard for filters.pass_rate)." in card


def test_a_band_that_leaves_no_problems_says_how_many_fell_on_each_side_and_a_wider_one_reuses_the_samples(tmp_path):
    with FaultServer() as server:
        server.reply = answerer(generate.select_problems(gen_cfg(server, tmp_path / "gen")), lambda *_: True)
        with pytest.raises(ConfigError, match=r"^filters.pass_rate \[0.0, 0.5\] left no problems: 8 too easy, 0 too hard, "
                                              "0 never solved; widen the band and rerun: the sampled chunks are kept and reused$"):
            generate.run(gen_cfg(server, tmp_path / "gen", "filters.pass_rate=[0, 0.5]", "filters.near_duplicate=1.0"))
        assert not (tmp_path / "gen" / "stats.json").exists() and server.requests == 16
        chunks = sorted((tmp_path / "gen" / "samples").rglob("chunk-*.parquet"))
        stamps = [p.stat().st_mtime_ns for p in chunks]
        stats = generate.run(gen_cfg(server, tmp_path / "gen", "filters.pass_rate=[0, 1]", "filters.near_duplicate=1.0"))
        assert server.requests == 16 and stats["funnel"]["kept"] == 16 and stats["pass_rate"]["too_easy"] == 0
        # the limit and preference are applied again too: one trace per problem, the longest
        stats = generate.run(gen_cfg(server, tmp_path / "gen", "filters.near_duplicate=1.0", "filters.max_per_problem=1",
                                     "filters.prefer=longest"))
        assert server.requests == 16 and stats["funnel"]["kept"] == 8 and stats["drop_reasons"] == {"over_limit": 8}
    assert [p.stat().st_mtime_ns for p in chunks] == stamps  # the chunks were read, never written again
    out = samples(tmp_path / "gen")
    for pid in {r["problem_id"] for r in out}:
        mine = [r for r in out if r["problem_id"] == pid]
        assert [r["keep"] for r in mine] == [r["completion_tokens"] == max(m["completion_tokens"] for m in mine) and
                                             r["sample_index"] == min(m["sample_index"] for m in mine if
                                                                      m["completion_tokens"] == r["completion_tokens"])
                                             for r in mine]
    with FaultServer() as server, pytest.raises(ConfigError, match="holds a different run"):  # other settings: refused
        generate.run(gen_cfg(server, tmp_path / "gen", "filters.near_duplicate=1.0", "sampling.temperature=0.9"))


def test_band_reason():
    assert [filters.band_reason(c, 4, [0.25, 0.75]) for c in range(5)] == ["too_hard", None, None, None, "too_easy"]
    assert filters.band_reason(4, 4, None) is None


def test_eval_on_a_reasoning_gym_benchmark(tmp_path):
    rows = draw("tasks=chain_sum", "split=heldout", "num_problems=6")
    with FaultServer() as server:
        server.reply = answerer(rows)
        cfg = configlib.load(EvalConfig, None, [
            f"output_dir={tmp_path / 'eval'}", "pass_k=[1, 4]",
            "benchmarks=[{name: rg-chain_sum, source: reasoning-gym, tasks: chain_sum, split: heldout, num_problems: 6, samples: 4}]",
            f"models=[{{model: {server.model}, name: served, engine: {{backend: openai, base_url: {server.url}}}}}]"])
        results = evaluate.run(cfg)["served"]["rg-chain_sum"]
    seeds = list(server.arrivals)
    assert len(seeds) == 24 and results["pass@1"] == pytest.approx(sum(s % 2 == 0 for _, s in seeds) / 24)
    # maj@4: the most common answer string (ties: the earliest sample), right when it is the gold
    answers = {}
    for r in sorted(store.read_parquet([tmp_path / "eval" / "served" / "rg-chain_sum" / "samples.parquet"]),
                    key=lambda r: r["sample_index"]):
        answers.setdefault(r["problem_id"], (r["gold"], []))[1].append(r["answer"])
    maj = sum(max(a, key=lambda x: (a.count(x), -a.index(x))) == gold for gold, a in answers.values()) / 6
    assert results["maj@4"] == pytest.approx(maj)


@pytest.mark.parametrize("overrides,message", [
    (["problems.tasks=chain_summ"], "problems.tasks: unknown reasoning-gym task 'chain_summ'; close: chain_sum, decimal_chain_sum"),
    (["problems.tasks=[{name: chain_sum, config: {terms: 3}}]"], "problems.tasks[chain_sum].config: the task has no setting(s) terms; it takes: min_terms, max_terms"),
    (["problems.tasks=[{name: chain_sum, config: {min_terms: 5, max_terms: 2}}]"],
     "problems.tasks[chain_sum].config {'min_terms': 5, 'max_terms': 2} refused by the task: max_terms must be >= min_terms"),
    (["problems.tasks=[{name: chain_sum, weight: 0}]"], "problems.tasks[chain_sum].weight must be > 0"),
    (["problems.tasks=[{name: chain_sum, weight: -2}, {name: leg_countin}]"],
     "problems.tasks[chain_sum].weight must be > 0, got -2"),
    (["problems.tasks=[{name: chain_sum, weight: -2}, {name: leg_countin}]"],
     "problems.tasks: unknown reasoning-gym task 'leg_countin'; close: leg_counting"),
    (["problems.tasks=[{name: leg_counting, config: {max_animals: 3, legs: 4}}]"],
     "problems.tasks[leg_counting].config: the task has no setting(s) legs; it takes: "),
    (["problems.split=test"], "problems.split must be train or heldout for reasoning-gym, got 'test'"),
    (["filters.pass_rate=[0.9, 0.1]"], "filters.pass_rate must be [lo, hi] with 0 <= lo <= hi <= 1"),
    (["filters.pass_rate=[0.2, 1.5]"], "filters.pass_rate must be [lo, hi] with 0 <= lo <= hi <= 1, got [0.2, 1.5]"),
    (["filters.pass_rate=[-0.1, 0.5]"], "filters.pass_rate must be [lo, hi] with 0 <= lo <= hi <= 1, got [-0.1, 0.5]"),
    (["filters.pass_rate=[0.5]"], "filters.pass_rate must be [lo, hi] with 0 <= lo <= hi <= 1, got [0.5]"),
    (["filters.prefer=longer"], "filters.prefer must be first, longest, shortest, got 'longer'"),
    (["answer.rg_threshold=0"], "answer.rg_threshold must be in (0, 1]"),
])
def test_bad_input_is_one_line_before_any_request(tmp_path, overrides, message):
    with FaultServer() as server:
        with pytest.raises(ConfigError) as e:
            generate.run(gen_cfg(server, tmp_path / "gen", *overrides))
        assert server.requests == 0
    assert message in str(e.value) and any(message in p and "\n" not in p for p in e.value.problems)


def test_tasks_without_reasoning_gym_source_is_refused():
    with pytest.raises(ConfigError, match="tasks is for source: reasoning-gym"):
        configlib.load(ProblemsConfig, None, ["tasks=chain_sum"])


def test_pipeline_rerun_with_a_wider_band_reuses_the_samples(tmp_path):
    from seqdistill import pipeline

    with FaultServer() as server:
        base = gen_cfg(server, tmp_path / "unused")
        server.reply = answerer(generate.select_problems(base), lambda *_: True)
        recipe = {"run_dir": str(tmp_path / "run"), "generate": {**configlib.to_dict(base), "filters": {"near_duplicate": 1.0}}}
        recipe["generate"].pop("output_dir")
        for band, requests in (([0, 0.5], 16), ([0, 1], 16)):
            recipe["generate"]["filters"]["pass_rate"] = band
            (tmp_path / "run.yaml").write_text(yaml.safe_dump(recipe))
            cfg = pipeline.load(str(tmp_path / "run.yaml"), [])
            if band[1] < 1:
                with pytest.raises(ConfigError, match="left no problems: 8 too easy"):
                    pipeline.run(cfg)
            else:
                assert pipeline.run(cfg)["generate"]["funnel"]["kept"] == 16
            assert server.requests == requests


GSM_SYMBOLIC = "[{name: chain_sum}, {name: gsm_symbolic}]"
BUILT_FROM_GSM8K = ("problems.tasks: gsm_symbolic is built from gsm8k's test questions (new names and numbers, which "
                    "decontamination can't catch), and {where} names gsm8k; drop gsm_symbolic from the tasks or "
                    "evaluate on another benchmark")


@pytest.mark.parametrize("decontaminate", ["[gsm8k]", "[svamp, gsm8k=../shared/benchmarks/gsm8k/test.jsonl]"])
def test_generate_refuses_gsm_symbolic_when_decontaminating_against_gsm8k(decontaminate):
    overrides = ["problems.source=reasoning-gym", f"problems.tasks={GSM_SYMBOLIC}"]
    with pytest.raises(ConfigError) as e:
        configlib.load(GenerateConfig, None, [*overrides, f"filters.decontaminate={decontaminate}"])
    assert e.value.problems == [BUILT_FROM_GSM8K.format(where="filters.decontaminate")]
    configlib.load(GenerateConfig, None, [*overrides, "filters.decontaminate=[svamp]"])  # another benchmark: fine


@pytest.mark.parametrize("benchmark", ["{name: gsm8k}", "{name: mine, preset: gsm8k, source: ../shared/benchmarks/gsm8k/test.jsonl}"])
def test_pipeline_refuses_training_on_gsm_symbolic_and_evaluating_on_gsm8k(tmp_path, benchmark):
    from seqdistill import pipeline

    recipe = tmp_path / "run.yaml"
    recipe.write_text(f"run_dir: {tmp_path / 'run'}\ngenerate: {{problems: {{source: reasoning-gym, tasks: {GSM_SYMBOLIC}}}}}\n"
                      f"eval: {{benchmarks: [{{name: svamp}}, {benchmark}]}}\n")
    with pytest.raises(ConfigError) as e:
        pipeline.load(str(recipe), [])
    assert e.value.problems == ["generate." + BUILT_FROM_GSM8K.format(where="eval.benchmarks")]
    assert pipeline.load(str(recipe), ["eval.benchmarks=[{name: svamp}]"]).eval.benchmarks[0].name == "svamp"
