"""Preference pairs from generate's funnel (`preference.pairs`): a kept trace against a wrong or truncated one of
the same problem, written in TRL's conversational preference format."""

import random

import datasets
import pytest
from transformers import AutoTokenizer

from seqdistill import config as configlib
from seqdistill import generate, store
from seqdistill.checking.verify import AnswerConfig
from seqdistill.config import ConfigError
from seqdistill.engines import engine
from seqdistill.generate import GenerateConfig
from seqdistill.sources import filters
from seqdistill.sources.filters import PreferenceConfig

# problem id -> (gold, sampled traces as (text, finish_reason)), in sample order
TRACES = {
    "p0": ("5", [("<think>\nTwo plus three.\n</think>\nThe answer is 5.", "stop"),  # kept
                 ("<think>\nTwo and four.\n</think>\nThe answer is 6.", "stop"),  # wrong_answer
                 ("<think>\nLet me count the apples one by one", "length"),  # truncated
                 ("<think>\nStart at two, add three more.\n</think>\nSo we get 5.", "stop"),  # kept
                 ("<think>\nA guess.\n</think>\nIt must be 7.", "stop")]),  # wrong_answer
    "p1": ("3", [("<think>\nOne and one.\n</think>\nThe answer is 2.", "stop"),  # wrong_answer
                 ("<think>\nOne plus two.\n</think>\nThe answer is 3.", "stop"),  # kept
                 ("<think>\nHmm.\n</think>\nI do not know.", "stop")]),  # no_answer: not a rejected reason by default
    "p2": ("9", [("<think>\nFour and five.\n</think>\nThe answer is 9.", "stop"),  # all kept: nothing to reject
                 ("<think>\nThree threes.\n</think>\nIt is 9.", "stop")]),
    "p3": ("4", [("<think>\nTwo and three.\n</think>\nThe answer is 5.", "stop"),  # never solved: nothing to choose
                 ("<think>\nOne and two.\n</think>\nThe answer is 3.", "stop")]),
}


def stage_samples():
    """The tagged samples of the four problems, built as generate builds and tags them (build_samples,
    filters.apply) and joined as assemble joins the chunks (the chunks' schema, reselect)."""
    cfg = GenerateConfig()
    rows = []
    for index, (pid, (gold, traces)) in enumerate(TRACES.items()):
        problem = {"id": pid, "_index": index, "question": f"Question {pid}?", "answer": gold}
        output = engine.Output([engine.Completion(text, finish, len(text.split())) for text, finish in traces], 9)
        samples = generate.build_samples(cfg, problem, f"Question {pid}?", output, vocab=0)
        rows += filters.apply(samples, gold, cfg.filters, AnswerConfig(), True, problem=problem)
    random.Random(0).shuffle(rows)  # pairing must not depend on the samples' order
    table = datasets.Dataset.from_list(rows, features=generate.sample_features())
    return generate.reselect(table, cfg.filters)


def write(tmp_path, **settings):
    path = tmp_path / "data" / "preference.parquet"
    counts = generate.write_preference(stage_samples(), PreferenceConfig(pairs=True, **settings), path)
    return counts, datasets.load_dataset("parquet", data_files=str(path), split="train")


def test_pairs_set_kept_against_wrong_or_truncated_of_the_same_problem(tmp_path):
    counts, pairs = write(tmp_path)
    # p0: kept 0, 3 against rejected 1 (wrong), 2 (truncated), 4 (wrong): min(2, 3) pairs in sample order
    # p1: kept 1 against wrong 0 (no_answer 2 is not rejected); p2 has no rejected trace, p3 no kept one
    assert [(p["problem_id"], p["chosen_index"], p["rejected_index"], p["rejected_reason"]) for p in pairs] == [
        ("p0", 0, 1, "wrong_answer"), ("p0", 3, 2, "truncated"), ("p1", 1, 0, "wrong_answer")]
    assert counts == {"pairs": 3, "problems": 2, "rejected": {"wrong_answer": 2, "truncated": 1}}
    samples = {(s["problem_id"], s["sample_index"]): s for s in stage_samples()}
    for pair in pairs:  # no pair holds traces of two problems: both turns are that problem's samples
        chosen, rejected = samples[pair["problem_id"], pair["chosen_index"]], samples[pair["problem_id"], pair["rejected_index"]]
        assert chosen["keep"] and not rejected["keep"]
        assert pair["prompt"] == chosen["messages"][:-1] == rejected["messages"][:-1]
        assert pair["prompt"] == [{"role": "user", "content": f"Question {pair['problem_id']}?"}]
        assert pair["chosen"] == [{"role": "assistant", "content": chosen["completion"]}]
        assert pair["rejected"] == [{"role": "assistant", "content": rejected["completion"]}]


def test_pairs_per_problem_limit_and_rejected_reasons(tmp_path):
    _, pairs = write(tmp_path / "limit", max_per_problem=1)
    assert [(p["problem_id"], p["chosen_index"], p["rejected_index"]) for p in pairs] == [("p0", 0, 1), ("p1", 1, 0)]
    _, pairs = write(tmp_path / "no-answer", rejected=["no_answer"])
    assert [(p["problem_id"], p["chosen_index"], p["rejected_index"], p["rejected_reason"]) for p in pairs] == [
        ("p1", 1, 2, "no_answer")]


def test_no_pairs_still_writes_the_schema(tmp_path):
    path = tmp_path / "data" / "preference.parquet"
    counts = generate.write_preference(stage_samples(), PreferenceConfig(pairs=True, rejected=["repetitive"]), path)
    table = store.read_parquet([path])  # `datasets` can't load an empty file
    assert counts == {"pairs": 0, "problems": 0, "rejected": {}} and len(table) == 0
    assert table.column_names == ["prompt", "chosen", "rejected", "problem_id", "chosen_index", "rejected_index",
                                  "rejected_reason"]


def test_trl_reads_the_pairs_as_conversational_preference_data(tmp_path, smollm2_path):
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    _, pairs = write(tmp_path)
    for pair in pairs:
        assert is_conversational(pair)
        text = maybe_apply_chat_template(pair, tokenizer)  # raises KeyError on keys of no TRL format
        assert text["prompt"] == tokenizer.apply_chat_template(pair["prompt"], tokenize=False, add_generation_prompt=True)
        assert text["prompt"] + text["chosen"] == tokenizer.apply_chat_template(pair["prompt"] + pair["chosen"], tokenize=False)
        assert text["chosen"].startswith(pair["chosen"][0]["content"])
        assert text["rejected"].startswith(pair["rejected"][0]["content"])


def test_off_by_default_rebuildable_and_checked():
    assert GenerateConfig().preference.pairs is False  # existing runs write what they wrote
    assert "preference" in generate.OUTPUT.rebuild  # turning it on later samples nothing again
    cfg = configlib.load(GenerateConfig, None, ["preference.pairs=true", "preference.rejected=[wrong_answer, too_long]"])
    assert cfg.preference.rejected == ["wrong_answer", "too_long"]
    with pytest.raises(ConfigError, match=r"preference.rejected must name drop reasons, got \['wrong'\]; pick from truncated, "):
        configlib.load(GenerateConfig, None, ["preference.rejected=[wrong]"])
    with pytest.raises(ConfigError, match="preference.max_per_problem must be at least 1"):
        configlib.load(GenerateConfig, None, ["preference.max_per_problem=0"])


def test_generate_writes_pairs_and_rebuilds_them_without_sampling(tiny_llm, tiny_llama, tmp_path):
    """The real stage: pairs only with the setting; turning it on reuses the sampled chunks (no engine)."""
    out = tmp_path / "gen-pairs"
    overrides = [f"model={tiny_llama}", f"output_dir={out}", "problems.num_problems=6", "sampling.n=4",
                 "sampling.max_tokens=12", "sampling.temperature=1.0", "chunk_size=2", "answer.extraction=last_number",
                 "filters.max_per_problem=null"]
    first = generate.run(configlib.load(GenerateConfig, None, overrides), llm=tiny_llm)
    assert "preference" not in first and not (out / "data" / "preference.parquet").exists()
    before = list(store.read_parquet([out / "data" / "train.parquet"]))
    stats = generate.run(configlib.load(GenerateConfig, None, [*overrides, "preference.pairs=true"]), llm=None)
    assert list(store.read_parquet([out / "data" / "train.parquet"])) == before  # the funnel is untouched
    rows = list(store.read_parquet([out / "data" / "train.parquet", out / "data" / "dropped.parquet"]))
    expected = filters.preference_pairs(rows, PreferenceConfig(pairs=True))
    pairs = list(store.read_parquet([out / "data" / "preference.parquet"]))
    assert pairs == expected and stats["preference"]["pairs"] == len(pairs)
    assert stats["funnel"] == first["funnel"]
    for pid in {r["problem_id"] for r in rows}:
        kept = sum(r["keep"] for r in rows if r["problem_id"] == pid)
        rejected = sum(r["drop_reason"] in ("wrong_answer", "truncated") for r in rows if r["problem_id"] == pid)
        assert sum(p["problem_id"] == pid for p in pairs) == min(kept, rejected)
    assert '"preference"' in (out / "stats.json").read_text()


def test_generate_writes_pairs_through_a_server(tmp_path):
    """The real stage without an engine: a local OpenAI-compatible server answers right for even seeds and wrong for
    odd ones, its first answer cut at max_tokens. Pairs only with the setting; turning it on samples nothing again."""
    from fault_server import FaultServer

    out = tmp_path / "gen-server"

    def make_cfg(server, *overrides):
        return configlib.load(GenerateConfig, None, [
            f"model={server.model}", f"output_dir={out}", "problems.num_problems=4", "sampling.n=4",
            "sampling.max_tokens=64", "chunk_size=2", "answer.extraction=last_number", "prompt.template=number",
            "engine.backend=openai", f"engine.base_url={server.url}", "engine.timeout=5", "engine.max_retries=2",
            "engine.retry_backoff=0.01", *overrides])

    with FaultServer() as server:
        server.faults = ["length"]
        first = generate.run(make_cfg(server))
        sent = server.requests
        stats = generate.run(make_cfg(server, "preference.pairs=true"))
        assert server.requests == sent  # rebuilt from the sampled chunks
    assert "preference" not in first and stats["funnel"] == first["funnel"]
    rows = list(store.read_parquet([out / "data" / "train.parquet", out / "data" / "dropped.parquet"]))
    pairs = datasets.load_dataset(str(out), "preference", split="train")  # the dataset card names the config
    # which request the server truncates depends on the order requests arrive in; the per-problem counts below
    # hold either way (truncated traces count as rejected)
    assert stats["preference"]["pairs"] == len(pairs) > 0
    assert sum(stats["preference"]["rejected"].values()) == len(pairs)
    for pid in {r["problem_id"] for r in rows}:
        kept = sum(r["keep"] for r in rows if r["problem_id"] == pid)
        rejected = sum(r["drop_reason"] in ("wrong_answer", "truncated") for r in rows if r["problem_id"] == pid)
        assert sum(p == pid for p in pairs["problem_id"]) == min(kept, rejected)
    by_key = {(r["problem_id"], r["sample_index"]): r for r in rows}
    for pair in pairs:
        chosen, rejected = by_key[pair["problem_id"], pair["chosen_index"]], by_key[pair["problem_id"], pair["rejected_index"]]
        assert chosen["keep"] and rejected["drop_reason"] == pair["rejected_reason"]
        assert pair["prompt"] == chosen["messages"][:-1] == rejected["messages"][:-1]
        assert pair["chosen"][0]["content"] == chosen["completion"] and pair["rejected"][0]["content"] == rejected["completion"]
