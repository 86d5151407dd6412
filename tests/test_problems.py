import json
from pathlib import Path

import pytest

from seqdistill.checking.verify import _parse
from seqdistill.config import ConfigError
from seqdistill.sources import arithmetic, problems
from seqdistill.sources.problems import ProblemsConfig


def test_embedded_is_reproducible_and_exact():
    a = problems.load(ProblemsConfig(num_problems=50, seed=3, max_steps=3, operations="+-*/"))
    b = problems.load(ProblemsConfig(num_problems=50, seed=3, max_steps=3, operations="+-*/"))
    assert a == b and len({r["id"] for r in a}) == 50
    c = problems.load(ProblemsConfig(num_problems=50, seed=4, max_steps=3, operations="+-*/"))
    assert a != c
    for row in a:
        assert int(row["answer"]) >= 0 and row["question"].endswith("?")


def test_embedded_train_and_heldout_never_share_a_problem():
    # different seeds and difficulties still cannot put one question in both splits
    train = {r["question"] for s in range(3) for r in problems.load(ProblemsConfig(num_problems=400, seed=s))}
    held = {r["question"] for s in range(3) for r in
            problems.load(ProblemsConfig(num_problems=200, seed=s + 10, split="heldout"))}
    assert train and held and not train & held
    assert all(arithmetic.split_of(q) == "heldout" for q in held)


def test_difficulty_knob_changes_steps_and_operands():
    easy = problems.load(ProblemsConfig(num_problems=100, max_steps=1, max_operand=5))
    hard = problems.load(ProblemsConfig(num_problems=100, min_steps=3, max_steps=3, max_operand=50))
    assert all(r["steps"] == 1 for r in easy) and all(r["steps"] == 3 for r in hard)
    assert max(int(r["answer"]) for r in hard) > max(int(r["answer"]) for r in easy)


@pytest.mark.parametrize("name,rows", [("gsm8k", 1319), ("svamp", 1000), ("mawps", 2065), ("aime24", 30), ("amc23", 40)])
def test_benchmark_files_load_through_presets(benchmarks_dir, name, rows):
    loaded = problems.load(ProblemsConfig(source=str(benchmarks_dir / name / "test.jsonl"), preset=name))
    assert len(loaded) == rows
    unreadable = [r["id"] for r in loaded if not _parse(r["answer"])]
    assert not unreadable, f"{name}: gold answers math-verify cannot read: {unreadable[:5]}"


def test_gsm8k_and_svamp_mapping(benchmarks_dir):
    gsm = problems.load(ProblemsConfig(source=str(benchmarks_dir / "gsm8k/test.jsonl"), preset="gsm8k", num_problems=1))
    assert gsm[0]["answer"] == "18" and gsm[0]["question"].startswith("Janet")
    svamp = problems.load(ProblemsConfig(source=str(benchmarks_dir / "svamp/test.jsonl"), preset="svamp", num_problems=1))
    assert svamp[0]["answer"] == "145"
    assert svamp[0]["question"].endswith("How big is each group of bananas?")  # Body + Question


def test_package_source_written_by_hand():
    # the form the svamp preset resolves to works when written out, and a wrong path inside the package is one line
    rows = problems.load(ProblemsConfig(source="package:seqdistill/data/svamp.jsonl", preset="svamp", num_problems=2))
    assert [r["answer"] for r in rows] == ["145", "19"]
    assert ProblemsConfig(source="package:seqdistill/data/svamp.jsonl").validate() == []
    errors = ProblemsConfig(source="package:seqdistill/data/gsm8k.jsonl").validate()
    assert len(errors) == 1 and "has no file 'data/gsm8k.jsonl'" in errors[0] and "preset" in errors[0]
    assert "pip install no-such-pkg" in ProblemsConfig(source="package:no_such_pkg/x.jsonl").validate()[0]
    assert "not installed" in ProblemsConfig(source="package:no_such.pkg/x.jsonl").validate()[0]  # not a traceback


def test_short_gsm8k_problems_and_a_held_out_slice():
    """max_solution_steps keeps problems whose worked solution has at most N lines before ####; offset skips
    past the ones a training run used, and ids keep naming rows of the whole file."""
    whole = problems.load(ProblemsConfig(source="", preset="gsm8k-train"))
    short = problems.load(ProblemsConfig(source="", preset="gsm8k-train", max_solution_steps=2))
    assert len(whole) == 7473 and len(short) == 1961
    raw = [json.loads(line)["answer"] for line in open(Path(problems.__file__).parent.parent / "data" / "gsm8k-train.jsonl")]
    picked = {int(r["id"].rsplit("-", 1)[1]) for r in short}
    assert picked == {i for i, answer in enumerate(raw) if problems.solution_steps(answer) <= 2}
    assert {r["id"] for r in short} <= {r["id"] for r in whole}
    heldout = problems.load(ProblemsConfig(source="", preset="gsm8k-train", max_solution_steps=2, offset=1000, num_problems=5))
    assert [r["id"] for r in heldout] == [r["id"] for r in short[1000:1005]]
    assert problems.solution_steps("Half of 48 is <<48/2=24>>24.\n48 + 24 = <<48+24=72>>72\n#### 72") == 2
    assert "needs answer_format gsm8k" in ProblemsConfig(source="", preset="svamp", max_solution_steps=2).validate()[0]
    assert "not embedded" in ProblemsConfig(offset=5).validate()[0]
    assert "offset must be at least 0" in ProblemsConfig(source="", preset="gsm8k-train", offset=-1).validate()[0]
    assert "at least 1, got 0" in ProblemsConfig(source="", preset="gsm8k-train", max_solution_steps=0).validate()[0]
    with pytest.raises(ConfigError, match=r"1961 problems with at most 2 steps of 7473, so offset 1961 leaves none"):
        problems.load(ProblemsConfig(source="", preset="gsm8k-train", max_solution_steps=2, offset=1961))


def test_missing_fields_listed(benchmarks_dir):
    with pytest.raises(ConfigError, match=r"field\(s\) question, answer not found; it has input, target"):
        problems.load(ProblemsConfig(source=str(benchmarks_dir / "mawps/test.jsonl")))


def test_extract_gold():
    assert problems.extract_gold("so 2 + 2 = 4\n#### 1,000", "gsm8k") == "1000"
    assert problems.extract_gold(145.0, "plain") == "145"
    assert problems.extract_gold("The answer is $\\boxed{\\frac{1}{2}}$", "boxed") == "\\frac{1}{2}"
