"""filters.language: traces that drift into another script are dropped as language_mixed; math is not foreign."""

import pytest

from seqdistill.checking.verify import AnswerConfig
from seqdistill.sources import filters, language
from seqdistill.sources.filters import FilterConfig

# GSM8K train's first problem, answered as R1-Zero did: English that switches to Chinese mid-reasoning
DRIFT_TO_CHINESE = (
    "<think>\nNatalia sold 48 clips in April. In May she sold half as many, so 48 / 2 = 24 clips. "
    "好的，我再检查一下：四月卖了48个，五月卖了一半，也就是24个，所以总共是48加24等于72个。"
    "So altogether she sold 48 + 24 = 72 clips.\n</think>\nThe answer is \\boxed{72}."
)
# the same problem reasoned in Russian: right, but not in the target script
RUSSIAN = (
    "<think>\nВ апреле Наталья продала 48 заколок. В мае она продала вдвое меньше: 48 / 2 = 24. "
    "Всего получается 48 + 24 = 72 заколки.\n</think>\nОтвет: \\boxed{72}."
)
# English with LaTeX, Greek letters and Unicode math: nothing in it is foreign
ENGLISH_MATH = (
    "<think>\nLet $x$ be the clips sold in May, so $x = \\frac{48}{2} = 24$. With θ = π/4 and α ∈ ℝ the angle "
    "plays no role here; ∑ over both months gives 48 + 24 = 72, and 𝑥 ≤ 48 holds. \\[ 48 + x = 72 \\]\n</think>\n"
    "The answer is \\boxed{72}."
)
# a long English trace with one two-character Chinese aside: under 5% of its words
ONE_ASIDE = (
    "<think>\nNatalia sold clips to 48 of her friends in April. In May she sold half as many clips as in April, "
    "which means I need to divide the April number by two. Half of 48 is 24, so she sold 24 clips in May. "
    "Now the question asks how many clips she sold altogether in April and May, so I add the two months "
    "together. That gives 48 + 24 = 72. Let me double-check the division: 24 times 2 is 48, which matches "
    "April, so May is right. 对的. Adding again, 48 plus 24 is 72, and nothing else was sold in those months."
    "\n</think>\nShe sold 72 clips in April and May. The answer is \\boxed{72}."
)


def reason(text: str, cfg: FilterConfig) -> str | None:
    sample = {"completion": text, "finish_reason": "stop", "completion_tokens": len(text.split()), "sample_index": 0}
    return filters.apply([sample], "72", cfg, AnswerConfig(), True)[0]["drop_reason"]


@pytest.mark.parametrize("text,target,expected", [
    (DRIFT_TO_CHINESE, "latin", "language_mixed"),
    (RUSSIAN, "english", "language_mixed"),
    (RUSSIAN, "russian", None),
    (ENGLISH_MATH, "latin", None),
    (ONE_ASIDE, "latin", None),
])
def test_language_mixed_traces_are_dropped(text, target, expected):
    assert reason(text, FilterConfig(language=target)) == expected


def test_off_by_default_and_threshold():
    assert FilterConfig().language is None and reason(DRIFT_TO_CHINESE, FilterConfig()) is None
    share = language.foreign_share(DRIFT_TO_CHINESE, "latin")
    assert round(share, 3) == 0.593  # 32 Han characters (a word each) against 22 English words
    assert reason(DRIFT_TO_CHINESE, FilterConfig(language="latin", max_foreign_share=0.8)) is None
    assert language.foreign_share(ONE_ASIDE, "latin") == 0.02  # 2 of 100 words


def test_what_counts_as_a_word():
    counts = language.script_words(ENGLISH_MATH)
    assert set(counts) <= {"LATIN", "GREEK", "MATHEMATICAL", "DOUBLE-STRUCK"} and "CJK" not in counts
    assert language.script_words("设x为苹果的数量，x = 3") == {"CJK": 7}  # a variable is not an English word
    assert language.foreign_share("12 + 7 = 19, (3 × 4)² ≥ 10 → ✓", "latin") == 0.0  # no letters: nothing foreign
    assert language.foreign_share("Ｔｈｅ answer", "latin") == 0.0  # fullwidth Latin is Latin


def test_funnel_counts_language_mixed():
    texts = [ENGLISH_MATH, DRIFT_TO_CHINESE, RUSSIAN]
    samples = [{"completion": t, "finish_reason": "stop", "completion_tokens": 60, "sample_index": i}
               for i, t in enumerate(texts)]
    out = filters.apply(samples, "72", FilterConfig(language="latin"), AnswerConfig(), True)
    reasons = [o["drop_reason"] for o in out]
    assert reasons == [None, "language_mixed", "language_mixed"]
    assert filters.funnel(reasons) == {"generated": 3, "finished": 3, "formatted": 1, "correct": 1,
                                       "deduplicated": 1, "kept": 1}


def test_unknown_language_is_refused():
    assert FilterConfig(language="klingon").validate() == [
        f"language must be one of {', '.join(language.LANGUAGES)} (or null: off), got 'klingon'"]
    assert FilterConfig(max_foreign_share=1.0).validate() == ["max_foreign_share must be in [0, 1), got 1.0"]
