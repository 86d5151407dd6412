"""One case per drop reason, on hand-made samples of one problem."""

import pytest

from seqdistill.checking.verify import AnswerConfig
from seqdistill.sources import filters
from seqdistill.sources.filters import FilterConfig


def sample(text, finish="stop", tokens=None, i=0):
    return {"completion": text, "finish_reason": finish, "completion_tokens": tokens or len(text.split()),
            "sample_index": i}


def reason(text, cfg=FilterConfig(), think=False, **kw):
    return filters.apply([sample(text, **kw)], "12", cfg, AnswerConfig(), think)[0]["drop_reason"]


def test_kept():
    out = filters.apply([sample("5 + 7 = 12. The answer is 12.")], "12", FilterConfig(), AnswerConfig(), False)[0]
    assert out["keep"] and out["correct"] and out["answer"] == "12" and out["drop_reason"] is None


@pytest.mark.parametrize("text,kwargs,expected", [
    ("5 + 7 = 1", {"finish": "length"}, "truncated"),
    ("<think>5 + 7 = 12 so 12", {"think": True}, "unbalanced_think"),
    ("5 + 7 = 12 </think><think> 12", {"think": True}, "unbalanced_think"),
    ("I do not know.", {}, "no_answer"),
    ("12", {"cfg": FilterConfig(min_tokens=5)}, "too_short"),
    ("so the total is 12", {"cfg": FilterConfig(max_tokens=3)}, "too_long"),
    ("add them up and " * 20 + "12", {}, "repetitive"),
    ("5 + 7 = 13", {}, "wrong_answer"),
])
def test_each_drop_reason(text, kwargs, expected):
    assert reason(text, **kwargs) == expected


def test_duplicates_near_duplicates_and_limit():
    texts = [
        "We add 5 and 7 to get 12 apples in total. The answer is 12.",
        "We add 5 and 7 to get 12 apples in total.  The answer is 12.",  # same up to whitespace
        "We add 5 and 7 to get 12 apples in total. The answer is 12!",  # near-duplicate
        "Five plus seven makes 12.",
        "Start with 5, then 7 more: 12.",
    ]
    cfg = FilterConfig(max_per_problem=2, near_duplicate=0.8)
    out = filters.apply([sample(t, i=i) for i, t in enumerate(texts)], "12", cfg, AnswerConfig(), False)
    assert [o["drop_reason"] for o in out] == [None, "duplicate", "near_duplicate", None, "over_limit"]
    assert all(o["correct"] for o in out)
    assert filters.funnel([o["drop_reason"] for o in out]) == {
        "generated": 5, "finished": 5, "formatted": 5, "correct": 5, "deduplicated": 3, "kept": 2}


def test_decontamination_by_ngram(benchmarks_dir):
    index = filters.contamination_index([f"gsm8k={benchmarks_dir}/gsm8k/test.jsonl"], 8)
    leaked = "Janet\u2019s ducks lay 16 eggs per day. She eats three for breakfast every morning"
    assert filters.is_contaminated(leaked, index, 8)
    assert not filters.is_contaminated("Tom has 3 apples. He buys 4 more. How many apples does Tom have now?", index, 8)


@pytest.mark.parametrize("prefer,kept", [("first", [0, 1]), ("longest", [1, 3]), ("shortest", [2, 4])])
def test_prefer_picks_which_correct_traces_the_limit_keeps(prefer, kept):
    texts = ["So 5 and 7 make 12.", "Five apples, then seven more apples: counting them all gives twelve, so 12.",
             "12", "Start from five. Add seven, one at a time: six, seven, eight, nine, ten, eleven, twelve. 12.",
             "5+7=12", "5 + 7 = 13"]  # the last one is wrong: never kept, whatever its length
    out = filters.apply([sample(t, i=i) for i, t in enumerate(texts)], "12",
                        FilterConfig(max_per_problem=2, prefer=prefer), AnswerConfig(extraction="last_number"), False)
    assert [i for i, o in enumerate(out) if o["keep"]] == kept
    assert [o["drop_reason"] for o in out].count("over_limit") == 3 and out[5]["drop_reason"] == "wrong_answer"
    assert filters.funnel([o["drop_reason"] for o in out])["kept"] == 2


def test_prefer_ties_keep_sample_order_and_unknown_values_are_refused():
    texts = ["so a b gives 12", "so c d gives 12", "so e f gives 12"]
    for prefer in ("longest", "shortest"):
        out = filters.apply([sample(t, i=i, tokens=5) for i, t in enumerate(texts)], "12",
                            FilterConfig(max_per_problem=1, prefer=prefer), AnswerConfig(), False)
        assert [o["drop_reason"] for o in out] == [None, "over_limit", "over_limit"]
    assert FilterConfig(prefer="long").validate() == ["prefer must be first, longest, shortest, got 'long'"]
