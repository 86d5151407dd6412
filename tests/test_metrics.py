"""Metrics against hand-computed values."""

import math

import pytest

from seqdistill import metrics


def test_pass_at_k_matches_hand_computation():
    # n=4, c=1: pass@1 = 1/4; pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5; pass@4 = 1
    assert metrics.pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert metrics.pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert metrics.pass_at_k(4, 1, 4) == 1.0
    # n=5, c=2, k=3: 1 - C(3,3)/C(5,3) = 1 - 1/10
    assert metrics.pass_at_k(5, 2, 3) == pytest.approx(0.9)
    assert metrics.pass_at_k(8, 0, 4) == 0.0
    with pytest.raises(ValueError, match="at least 5 samples"):
        metrics.pass_at_k(4, 1, 5)


def test_standard_error():
    mean, se = metrics.mean_and_stderr([1.0, 0.0, 0.5, 0.5])
    # sample variance = (0.25 + 0.25 + 0 + 0) / 3 = 1/6; se = sqrt(1/6 / 4)
    assert mean == 0.5 and se == pytest.approx(math.sqrt(1 / 24))
    assert metrics.mean_and_stderr([0.3]) == (0.3, 0.0)


def test_majority_groups_equivalent_answers():
    assert metrics.majority(["1/2", "0.3", "0.5", "0.3", "\\frac{1}{2}"]) == "1/2"  # 3 votes for one half
    assert metrics.majority([None, "7", None]) == "7"
    assert metrics.majority([None, None]) is None
    assert metrics.majority(["3", "4"]) == "3"  # tie: the earliest


def test_score():
    per_problem = [
        {"gold": "0.5", "answers": ["1/2", "2", "0.5", "3"], "correct": [True, False, True, False],
         "truncated": [False, False, False, True], "lengths": [10, 20, 30, 40]},
        {"gold": "7", "answers": ["6", "6", None, "7"], "correct": [False, False, False, True],
         "truncated": [False] * 4, "lengths": [10] * 4},
    ]
    out = metrics.score(per_problem, [1, 2, 4])
    assert out["pass@1"] == pytest.approx((0.5 + 0.25) / 2)
    assert out["pass@2"] == pytest.approx(((1 - 1 / 6) + 0.5) / 2)
    assert out["pass@4"] == 1.0
    assert out["maj@4"] == pytest.approx(0.5)  # problem 1: 1/2 and 0.5 vote together; problem 2: 6 wins
    assert out["maj@1"] == pytest.approx(0.5)
    assert out["truncated_share"] == pytest.approx(1 / 8)
    assert out["mean_response_tokens"] == pytest.approx(140 / 8)
    with pytest.raises(ValueError, match="k <= n=4"):
        metrics.score(per_problem, [8])


# four problems, four samples each: (baseline, model) verdicts
PAIRED = [
    ([True, False, False, False], [True, True, True, False]),  # 0.25 -> 0.75: d = +0.5, gained (1/4 -> 3/4)
    ([True, True, False, False], [False] * 4),  # 0.5 -> 0: d = -0.5, lost (2 of 4 right is solved)
    ([False] * 4, [True, False, False, False]),  # 0 -> 0.25: d = +0.25, better but still unsolved
    ([True] * 4, [True] * 4),  # d = 0
]


def test_paired_difference_and_flips_match_hand_computation():
    out = metrics.paired([b for b, _ in PAIRED], [m for _, m in PAIRED])
    # d = [0.5, -0.5, 0.25, 0]: mean 0.0625; squared deviations 0.19140625 + 0.31640625 + 0.03515625 + 0.00390625
    # = 0.546875; sample variance 0.546875 / 3; s.e. = sqrt(variance) / sqrt(4)
    assert out["delta_pass@1"] == pytest.approx(0.0625)
    assert out["delta_pass@1_stderr"] == pytest.approx(math.sqrt(0.546875 / 3) / 2)
    assert (out["problems"], out["gained"], out["lost"], out["better"], out["worse"]) == (4, 1, 1, 2, 1)
    # the unpaired s.e. of the difference would be far larger: pairing removes the problems' own spread
    _, se_base = metrics.mean_and_stderr([sum(b) / 4 for b, _ in PAIRED])
    _, se_model = metrics.mean_and_stderr([sum(m) / 4 for _, m in PAIRED])
    assert out["delta_pass@1_stderr"] < math.hypot(se_base, se_model)
    assert metrics.solved([True]) and not metrics.solved([False]) and metrics.solved([True, False])
    with pytest.raises(ValueError, match="same problems, got 4 and 3"):
        metrics.paired([b for b, _ in PAIRED], [m for _, m in PAIRED][:3])
