"""Gold answers are checked before any sampling: unreadable golds are refused with the field and a fix,
and `answer_format: leading_number` reads golds such as `9 (apples)` (ASDiv's style) so they score right."""

import json
import logging

import pytest
from fault_server import FaultServer

from seqdistill import config as configlib
from seqdistill import evaluate, generate, store
from seqdistill.checking import verify
from seqdistill.checking.verify import AnswerConfig
from seqdistill.config import ConfigError
from seqdistill.engines import engine
from seqdistill.evaluate import EvalConfig
from seqdistill.generate import GenerateConfig
from seqdistill.sources import filters, problems
from seqdistill.sources.filters import FilterConfig
from seqdistill.sources.problems import ProblemsConfig


def svamp_with_units(benchmarks_dir, tmp_path, n=12):
    """The first n real SVAMP problems, their golds written with a unit as ASDiv writes them: `145 (bananas)`."""
    rows = [json.loads(line) for line in (benchmarks_dir / "svamp" / "test.jsonl").read_text().splitlines()[:n]]
    path = tmp_path / "svamp-units.jsonl"
    path.write_text("".join(json.dumps({"question": f"{r['Body']} {r['Question']}",
                                        "answer": f"{r['Answer']:g} ({r['Question'].rstrip('?').split()[-1]})"}) + "\n"
                            for r in rows))
    return path, [f"{r['Answer']:g}" for r in rows]


@pytest.fixture
def nothing_starts(monkeypatch):
    """A refused run must not start an engine nor reach a server (not even its preflight)."""
    def refuse(*a, **k):
        raise AssertionError("an engine or server was reached for a run that must be refused")
    for name in ("load_vllm", "open_engine", "preflight"):
        monkeypatch.setattr(engine, name, refuse)


def gen_cfg(server, out, source, *overrides):
    return configlib.load(GenerateConfig, None, [
        f"model={server.model}", f"output_dir={out}", f"problems.source={source}", "sampling.n=2",
        "sampling.max_tokens=64", "chunk_size=4", "engine.backend=openai", f"engine.base_url={server.url}",
        "answer.extraction=last_number", "prompt.template=number", "filters.near_duplicate=1.0", *overrides])


@pytest.mark.parametrize("gold,extraction,why", [
    ("9 (apples)", "auto", "a number with words"),
    ("-3.5 (degrees)", "last_number", "a number with words"),
    ("18 dollars", "auto", "a number with words"),
    ("", "auto", "empty"),
    ("x^2+1", "last_number", "not a number"),
    ("\\text{(C)}", "last_number", "not a number"),
    ("9 apples", "auto", None),  # math-verify reads it as 9
    ("\\frac{1}{2}", "last_number", None),
    ("x^2+1", "auto", None),
    ("5\\text{ cm}", "auto", None),
    ("1,000", "last_number", None),
    ("Monday", "auto", None),
])
def test_which_golds_the_verifier_cannot_read(gold, extraction, why):
    found = verify.gold_problem(gold, AnswerConfig(extraction=extraction))
    assert found == why if why is None else found.startswith(why)


def test_real_benchmark_golds_all_read(benchmarks_dir):
    for name in ("gsm8k", "svamp", "mawps", "aime24", "amc23"):
        rows = problems.load(ProblemsConfig(source=str(benchmarks_dir / name / "test.jsonl"), preset=name))
        assert verify.check_golds(rows, AnswerConfig(extraction="last_number"), name, name)["unreadable"] == 0, name


def test_leading_number_format():
    assert [problems.extract_gold(v, "leading_number") for v in ("9 (apples)", "$1,200 (dollars)", "-2.5 (degrees C)", 7.0)] \
        == ["9", "1200", "-2.5", "7"]
    assert problems.extract_gold("apples: 9", "leading_number") == "apples: 9"  # kept whole: the gold check reports it
    with pytest.raises(ConfigError, match="answer_format must be plain, gsm8k, boxed, leading_number, got 'first'"):
        configlib.load(ProblemsConfig, None, ["answer_format=first"])


def test_a_share_under_the_threshold_is_logged_with_examples(caplog):
    rows = [{"id": str(i), "question": "q", "answer": str(i)} for i in range(199)] + [{"id": "x", "question": "q", "answer": "4 (cats)"}]
    rows += [{"id": "rg", "question": "q", "answer": "a b", "rg_task": "word_sorting"}, {"id": "c", "question": "q", "answer": "", "tests": "[]"}]
    with caplog.at_level(logging.INFO, logger="seqdistill.checking.verify"):
        found = verify.check_golds(rows, AnswerConfig(), "problems", "mine.jsonl")  # 1 of 200: 0.5% <= 1%
    assert found == {"checked": 200, "unreadable": 1, "examples": ["'4 (cats)' (a number with words)"]}
    assert "mine.jsonl: 1 of 200 gold answers unreadable by math-verify, e.g. '4 (cats)' (a number with words)" in caplog.text
    with pytest.raises(ConfigError, match=r"^problems: 1 of 200 gold answers of mine.jsonl \(0.5%\) can't be read"):
        verify.check_golds(rows, AnswerConfig(max_unreadable_gold=0), "problems", "mine.jsonl")


def test_unreadable_golds_refused_before_any_engine_or_request(benchmarks_dir, tmp_path, nothing_starts):
    path, _ = svamp_with_units(benchmarks_dir, tmp_path)
    with FaultServer() as server:
        with pytest.raises(ConfigError) as e:
            generate.run(gen_cfg(server, tmp_path / "gen", path))
        assert server.requests == 0
    message = str(e.value)
    # `19 (weigh)` is read as 19 by math-verify, so the answer 19 matches it: not counted
    assert "\n" not in message and message.startswith(f"problems: 11 of 12 gold answers of {path} (91.7%) can't be read by math-verify")
    assert "e.g. '145 (bananas)' (a number with words); '3 (cost)' (a number with words)" in message
    assert "set problems.answer_format: leading_number" in message and "answer.max_unreadable_gold: 0.01" in message
    assert not (tmp_path / "gen").exists()  # refused before the output directory was touched


def test_eval_refuses_unreadable_golds_naming_the_benchmark(benchmarks_dir, tmp_path, nothing_starts):
    path, _ = svamp_with_units(benchmarks_dir, tmp_path)
    bench = {"name": "svamp-units", "source": str(path)}
    cfg = configlib.load(EvalConfig, None, [
        f"output_dir={tmp_path / 'eval'}", f"benchmarks={json.dumps([bench])}",
        "models=[{model: fake, engine: {backend: openai, base_url: 'http://127.0.0.1:9/v1'}}]"])
    with pytest.raises(ConfigError, match=r"^benchmarks\[svamp-units\]: 11 of 12 gold answers .* set benchmarks\[svamp-units\]"
                                          r"\.answer_format: leading_number \(keeps the number each gold starts with\), or fix"):
        evaluate.run(cfg)
    cfg.benchmarks[0].answer_format = "leading_number"
    with pytest.raises(AssertionError, match="an engine or server was reached"):  # now it gets as far as the server
        evaluate.run(cfg)


def test_golds_that_last_number_cannot_read_ask_for_another_extraction():
    rows = [{"id": str(i), "question": "q", "answer": f"\\text{{({letter})}}"} for i, letter in enumerate("ABCD")]
    assert verify.check_golds(rows, AnswerConfig(), "problems", "mc.jsonl")["unreadable"] == 0
    with pytest.raises(ConfigError, match="4 of 4 .* set answer.extraction: auto \\(or boxed\\) for answers that aren't numbers"):
        verify.check_golds(rows, AnswerConfig(extraction="last_number"), "problems", "mc.jsonl")


def reply_with_gold(rows):
    """The fault server answers each problem's number: right for even seeds, one more for odd ones."""
    def reply(prompt, seed):
        row = next(r for r in rows if r["question"] in prompt)
        number = float(row["answer"].split()[0]) + seed % 2
        return f"Add them up. The answer is {number:g}."
    return reply


def test_leading_number_golds_score_right_through_generate(benchmarks_dir, tmp_path):
    path, numbers = svamp_with_units(benchmarks_dir, tmp_path)
    with FaultServer() as server:
        cfg = gen_cfg(server, tmp_path / "gen", path, "problems.answer_format=leading_number", "filters.max_per_problem=null")
        rows = generate.select_problems(cfg)
        assert [r["answer"] for r in rows] == numbers
        server.reply = reply_with_gold(rows)
        stats = generate.run(cfg)
    out = list(store.read_parquet([tmp_path / "gen" / "data" / "train.parquet", tmp_path / "gen" / "data" / "dropped.parquet"]))
    seeds = {(r["problem_id"], r["sample_index"]): r for r in out}
    assert len(seeds) == 24 and stats["funnel"]["correct"] == sum(s % 2 == 0 for _, s in server.arrivals) > 0
    assert all(r["correct"] == (r["answer"] == r["gold"]) for r in out) and {r["drop_reason"] for r in out} <= {None, "wrong_answer", "duplicate"}


def test_the_raw_gold_scores_every_sample_wrong_and_leading_number_fixes_it(benchmarks_dir, tmp_path):
    """The silent hole the check closes: right answers (145) against raw golds (`145 (bananas)`) score wrong."""
    path, numbers = svamp_with_units(benchmarks_dir, tmp_path, n=3)
    samples = lambda number: [{"completion": f"So {number} in all. The answer is {number}.", "finish_reason": "stop",  # noqa: E731
                               "completion_tokens": 9, "sample_index": 0}]
    cfg = AnswerConfig(extraction="last_number")
    for fmt, expected in (("plain", [False, True, False]), ("leading_number", [True] * 3)):
        rows = problems.load(ProblemsConfig(source=str(path), answer_format=fmt))
        judged = [filters.apply(samples(n), row["answer"], FilterConfig(), cfg, False, problem=row)[0]["correct"]
                  for row, n in zip(rows, numbers)]
        assert judged == expected, fmt
        # the gold check predicts exactly which problems could never score right (`19 (weigh)` parses as 19)
        assert judged == [verify.gold_problem(row["answer"], cfg) is None for row in rows], fmt


def test_max_unreadable_gold_must_be_a_share():
    with pytest.raises(ConfigError, match=r"answer.max_unreadable_gold must be in \[0, 1\], got 2"):
        configlib.load(GenerateConfig, None, ["answer.max_unreadable_gold=2"])
