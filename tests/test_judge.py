"""The LLM judge (answer.judge): asked only where no rule decides, strict about its verdict line, journaled so that
no question is asked twice. The teacher and the judge are both a local OpenAI-compatible server (fault_server)."""

import json
import re
from collections import Counter

import pytest
from fault_server import FaultServer

from seqdistill import config as configlib
from seqdistill import evaluate, generate, store
from seqdistill.checking import judge
from seqdistill.checking.answers import JudgeConfig
from seqdistill.checking.verify import AnswerConfig
from seqdistill.config import ConfigError
from seqdistill.evaluate import EvalConfig
from seqdistill.generate import GenerateConfig

MALFORMED = "**VERDICT: CORRECT**"  # a verdict in bold is not the line asked for: never counted correct
# question, gold, the teacher's reply (every sample the same), the judge's reply (None: it must never be asked)
PROBLEMS = [
    ("How many is four plus five?", "nine", "Four plus five makes 9.", "Same value.\nVERDICT: CORRECT"),  # a gold in words
    ("How many legs does a spider have?", "8", "A spider has eight legs.", "VERDICT: CORRECT"),  # no number: no_answer
    ("Which city is the capital of France?", "Paris", "It is Lyon.", "VERDICT: INCORRECT"),  # no_answer, judged wrong
    ("How many sides has a triangle?", "3", "I cannot tell.", MALFORMED),  # no_answer, every reply malformed
    ("What is 2 plus 3?", "5", "The answer is 5.", None),  # math-verify decides: right
    ("What is 2 plus 4?", "6", "The answer is 7.", None),  # math-verify decides: wrong
]


def reply(prompt: str, seed: int) -> str:
    """The teacher's reply to a problem, or the judge's to its prompt (which asks for a VERDICT line)."""
    question, _, teacher, verdict = next(p for p in PROBLEMS if p[0] in prompt)
    if "VERDICT" not in prompt:
        return teacher
    return verdict or "VERDICT: CORRECT"  # asked where a rule decided: the asserts below would see it flip


def judge_asked(server) -> Counter:
    """Judge requests per question (the /tokenize probe of the preflight carries no temperature)."""
    bodies = [b for b in server.bodies if "temperature" in b and "VERDICT" in b["messages"][-1]["content"]]
    return Counter(next(p[0] for p in PROBLEMS if p[0] in b["messages"][-1]["content"]) for b in bodies)


def write_problems(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": gold}) + "\n" for q, gold, _, _ in PROBLEMS))
    return path


def judge_settings(server) -> list[str]:
    return [f"answer.judge.model={server.model}", f"answer.judge.engine.base_url={server.url}",
            "answer.judge.engine.max_retries=1", "answer.judge.engine.retry_backoff=0.01", "answer.judge.engine.timeout=5",
            "answer.judge.max_tokens=64"]


def make_cfg(server, out, problems, *overrides):
    return configlib.load(GenerateConfig, None, [
        f"model={server.model}", f"output_dir={out}", f"problems.source={problems}", "sampling.n=2",
        "sampling.max_tokens=64", "chunk_size=4", "prompt.template=number",
        "engine.backend=openai", f"engine.base_url={server.url}", "engine.timeout=5", "engine.max_retries=2",
        "engine.retry_backoff=0.01", *judge_settings(server), *overrides])


def test_verdict_parsing_is_strict():
    assert judge.parse_verdict("The values match.\nVERDICT: CORRECT") is True
    assert judge.parse_verdict("VERDICT: INCORRECT\n\n") is False
    assert judge.parse_verdict("<think>\nVERDICT: INCORRECT?\n</think>\nVERDICT: CORRECT") is True  # reasoning skipped
    for malformed in ["", "CORRECT", "VERDICT: CORRECT.", "verdict: correct", MALFORMED, "VERDICT: CORRECT\nI hope.",
                      "VERDICT: PARTLY", "<think>\nVERDICT: CORRECT", "VERDICT:CORRECT"]:
        assert judge.parse_verdict(malformed) is None, malformed


def test_only_samples_no_rule_decided_are_read():
    cfg = AnswerConfig(judge=JudgeConfig(model="j", tasks=["leg_counting"]))
    assert judge.undecided("math-verify", "no_answer", "8", cfg)
    assert judge.undecided("math-verify", "wrong_answer", "nine", cfg)  # math-verify reads it as n*i*n*e
    assert judge.undecided("math-verify", "wrong_answer", "9 (apples)", cfg)
    assert not judge.undecided("math-verify", "wrong_answer", "9", cfg)  # decided: never overridden
    assert not judge.undecided("math-verify", None, "nine", cfg)  # correct already
    assert not judge.undecided("math-verify", "truncated", "nine", cfg)
    assert not judge.undecided("tests", "no_code", "", cfg) and not judge.undecided("tests", "wrong_output", "", cfg)
    assert judge.undecided("reasoning-gym:leg_counting", "wrong_answer", "4", cfg)
    assert not judge.undecided("reasoning-gym:basic_arithmetic", "wrong_answer", "4", cfg)


def test_generate_keeps_what_the_judge_finds_correct_and_asks_each_question_once(tmp_path):
    out, problems = tmp_path / "gen", write_problems(tmp_path)
    with FaultServer() as server:
        server.reply = reply
        stats = generate.run(make_cfg(server, out, problems))
        teacher = len(PROBLEMS) * 2
        # one request per (question, gold, response tail), though two samples share each; the malformed one 1 + 1 retry
        assert judge_asked(server) == {PROBLEMS[0][0]: 1, PROBLEMS[1][0]: 1, PROBLEMS[2][0]: 1, PROBLEMS[3][0]: 2}
        assert server.requests == teacher + 5
        judge_bodies = [b for b in server.bodies if "temperature" in b and "VERDICT" in b["messages"][-1]["content"]]
        # first asked greedily; a malformed reply is asked again sampled (greedily it would come back the same)
        assert {(b["temperature"], b["max_tokens"], b["model"]) for b in judge_bodies} == {
            (0.0, 64, server.model), (judge.RETRY_TEMPERATURE, 64, server.model)}
        assert sum(b["temperature"] > 0 for b in judge_bodies) == 1  # the malformed one's second try

        again = generate.run(make_cfg(server, out, problems))
        assert server.requests == teacher + 5  # every verdict from the journal: nothing asked again

        journal = out / judge.JOURNAL
        lines = journal.read_text().splitlines()
        assert len(lines) == 5 and all(json.loads(line)["fp"].startswith(judge.PROMPT_VERSION) for line in lines)
        # a run killed before the malformed replies came: the rerun asks exactly those again
        journal.write_text("".join(line + "\n" for line in lines if MALFORMED not in line))
        resumed = generate.run(make_cfg(server, out, problems))
        assert server.requests == teacher + 7

    assert stats["judge"] == again["judge"] == resumed["judge"]
    assert {k: stats["judge"][k] for k in ("model", "prompt", "asked", "judged_correct", "judged_wrong", "undecided",
                                           "replies")} == {"model": server.model, "prompt": "judge-v1", "asked": 8,
                                                           "judged_correct": 4, "judged_wrong": 2, "undecided": 2,
                                                           "replies": 5}
    assert stats["funnel"] == again["funnel"] == {"generated": 12, "finished": 12, "formatted": 8, "correct": 6,
                                                  "deduplicated": 3, "kept": 3}
    assert stats["verifier"]["judge"] == {server.model: 6} and stats["verifier"]["math-verify"] == 6
    rows = list(store.read_parquet([out / "data" / "train.parquet", out / "data" / "dropped.parquet"]))
    by_question = {q: [r for r in rows if r["question"] == q] for q, _, _, _ in PROBLEMS}
    for q in (PROBLEMS[0][0], PROBLEMS[1][0]):  # judged correct: kept (once; the second is the same text)
        assert [(r["correct"], r["verifier"], r["verdict_detail"]) for r in by_question[q]] == \
            [(True, f"judge:{server.model}", "judge-v1: CORRECT")] * 2
        assert sorted(str(r["drop_reason"]) for r in by_question[q]) == ["None", "duplicate"]
    assert {(r["correct"], r["drop_reason"], r["verifier"]) for r in by_question[PROBLEMS[2][0]]} == \
        {(False, "no_answer", f"judge:{server.model}")}
    undecided = by_question[PROBLEMS[3][0]]  # malformed every time: dropped as before, never correct
    assert {(r["correct"], r["keep"], r["drop_reason"], r["verifier"]) for r in undecided} == \
        {(False, False, "no_answer", "math-verify")}
    assert all("undecided" in r["verdict_detail"] for r in undecided)
    assert {(r["correct"], r["verifier"]) for r in by_question[PROBLEMS[4][0]]} == {(True, "math-verify")}
    assert {(r["drop_reason"], r["verifier"]) for r in by_question[PROBLEMS[5][0]]} == {("wrong_answer", "math-verify")}
    card = (out / "README.md").read_text()
    assert f"LLM judge `{server.model}` with prompt judge-v1" in card and "4 judged correct" in card
    assert json.loads((out / "stats.json").read_text())["judge"]["judged_correct"] == 4


def test_turning_the_judge_on_later_samples_nothing_again(tmp_path):
    out, problems = tmp_path / "gen", write_problems(tmp_path)
    with FaultServer() as server:
        server.reply = reply
        off = generate.run(make_cfg(server, out, problems, "answer.judge.model=null", "answer.judge.engine={}"))
        assert "judge" not in off and off["funnel"]["correct"] == 2 and server.requests == 12
        on = generate.run(make_cfg(server, out, problems))  # rebuilt from the sampled chunks: only the judge is asked
        assert server.requests == 12 + 5 and on["judge"]["judged_correct"] == 4


def test_bad_judge_settings_are_refused_before_any_request(tmp_path, monkeypatch):
    monkeypatch.delenv("SEQDISTILL_NO_SUCH_KEY", raising=False)
    url = "answer.judge.engine.base_url=http://127.0.0.1:9/v1"
    for overrides, message in [
        (["answer.judge.model=j"], "answer.judge.engine: backend openai needs base_url"),
        (["answer.judge.model=j", url, "answer.judge.engine.api_key_env=SEQDISTILL_NO_SUCH_KEY"],
         "answer.judge.engine: api_key_env names SEQDISTILL_NO_SUCH_KEY, which is not set"),
        ([url], "answer.judge.engine and tasks configure a judge, which is off without model"),
        (["answer.judge.model=j", url, "answer.judge.engine.batch=true"], "the judge asks through the chat API"),
        (["answer.judge.model=j", url, "answer.judge.engine.backend=vllm"], "answer.judge.engine.backend: the judge is"),
        (["answer.judge.model=j", url, "answer.judge.engine.base_ur=x"], "did you mean answer.judge.engine.base_url?"),
        (["answer.judge.model=j", url, "answer.judge.tail_chars=10"], "answer.judge.tail_chars must be at least 100"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            configlib.load(GenerateConfig, None, overrides)

    problems = write_problems(tmp_path)
    with FaultServer() as server:
        server.reply = reply
        for override, message in [("answer.judge.model=no-such-judge", "answer.judge: model 'no-such-judge' is not served"),
                                  ("answer.judge.tasks=[leg_counting]", "answer.judge.tasks: 'leg_counting' is not a "
                                                                        "reasoning-gym task of these problems")]:
            out = tmp_path / override.split("=")[0]
            with pytest.raises(ConfigError, match=re.escape(message)):
                generate.run(make_cfg(server, out, problems, override))
            assert not out.exists()  # refused before the output directory was touched
        assert server.requests == 0  # neither the teacher nor the judge was asked anything


def test_eval_counts_what_the_judge_finds_correct_and_marks_the_table(tmp_path):
    problems = write_problems(tmp_path)
    with FaultServer() as server:
        server.reply = reply
        cfg = configlib.load(EvalConfig, None, [
            f"output_dir={tmp_path / 'eval'}", f"benchmarks=[{{name: mine, source: {problems}, samples: 2}}]",
            "prompt.template=number", *judge_settings(server),
            f"models=[{{model: {server.model}, name: served, engine: {{backend: openai, base_url: {server.url}, timeout: 5}}}}]"])
        result = evaluate.run(cfg)["served"]["mine"]
        assert judge_asked(server) == {PROBLEMS[0][0]: 1, PROBLEMS[1][0]: 1, PROBLEMS[2][0]: 1, PROBLEMS[3][0]: 2}
    assert {k: result["judge"][k] for k in ("judged_correct", "judged_wrong", "undecided")} == \
        {"judged_correct": 4, "judged_wrong": 2, "undecided": 2}
    assert result["pass@1"] == pytest.approx(3 / 6)  # math-verify alone: 1 of 6 problems
    # maj@k votes over extracted answers, each right as judged: "9" against "nine" counts; an answer-less sample the
    # judge found right (the spider) counts in pass@k only
    assert result["maj@2"] == pytest.approx(2 / 6)
    assert (tmp_path / "eval" / "served" / "mine" / judge.JOURNAL).is_file()
    table = (tmp_path / "eval" / "results.md").read_text()
    assert "0.500 ± " in table and " †" in table and f"LLM judge `{server.model}` (judge-v1)" in table
    samples = evaluate.read_samples(tmp_path / "eval" / "served" / "mine" / "samples.parquet")
    assert Counter(r["verdict"] for r in samples)["judged"] == 4


def test_a_refused_request_or_an_empty_gold_leaves_the_sample_undecided():
    """A request the judge's server refuses (too long for its context, say) would be refused again: the sample stays
    undecided instead of the stage failing on every rerun; a sample with no gold has nothing to be judged against."""
    refused = {"k/0": {"ok": False, "refused": True, "error": "the server refused the request (400)"}}
    assert judge.next_try(refused, "k", 3) == (None, None)
    assert judge.next_try({"k/0": {"ok": False, "error": "timed out"}}, "k", 3) == (0, None)  # sent again
    assert judge.next_try({"k/0": {"ok": True, "finish_reason": "stop", "text": "x"}}, "k", 3) == (1, None)
    cfg = AnswerConfig(judge=JudgeConfig(model="m"))
    assert judge.undecided("math-verify", "no_answer", "8", cfg)
    assert not judge.undecided("math-verify", "no_answer", " ", cfg)
