from seqdistill.checking.verify import (
    AnswerConfig,
    extract_answer,
    is_equivalent,
    strip_think,
)


def test_extraction_methods():
    text = "First 3 + 4 = 7, so \\boxed{7}. Then 12 apples."
    assert extract_answer(text, AnswerConfig(extraction="boxed")) == "7"
    assert extract_answer(text, AnswerConfig(extraction="last_number")) == "12"
    assert extract_answer(text, AnswerConfig(extraction="auto")) == "7"
    assert extract_answer("work... The answer is 42.\nbye 3", AnswerConfig(extraction="marker")) == "42"
    assert extract_answer("no marker 5", AnswerConfig(extraction="marker")) is None
    assert extract_answer("nested \\boxed{\\frac{1}{2}}", AnswerConfig(extraction="boxed")) == "\\frac{1}{2}"


def test_think_blocks():
    assert strip_think("<think>guess 3</think> final 4") == " final 4"
    assert strip_think("<think>still thinking 3") is None
    assert extract_answer("<think>x = 9</think>So \\boxed{5}", AnswerConfig()) == "5"
    assert extract_answer("<think>x = 9 and no end", AnswerConfig()) is None


def test_equivalence():
    assert is_equivalent("0.5", "\\frac{1}{2}")
    assert is_equivalent("1/2", "0.5")
    assert is_equivalent("18", "18.0")
    assert not is_equivalent("17", "18")
    assert not is_equivalent(None, "18")
