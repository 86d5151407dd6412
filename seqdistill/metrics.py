"""Benchmark metrics over k samples per problem: pass@1 with its standard error, unbiased pass@k,
and majority vote with answers grouped by mathematical equivalence (math-verify), not by string;
problems marked `exact` (reasoning-gym tasks, whose answers need not be math) vote by exact answer
string, and the vote is right when the task's checker judged that answer correct."""

from __future__ import annotations

import math

from seqdistill.checking.verify import is_equivalent


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimator of pass@k from n samples with c correct (Chen et al. 2021, the Codex paper)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    """Mean over problems and its standard error (sample std / sqrt(N); 0 for a single problem)."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def majority(answers: list[str | None], exact: bool = False) -> str | None:
    """The most common answer, equivalent answers voting together (1/2 with 0.5; `exact`: the same
    string, surrounding spaces aside); ties: the earliest."""
    groups: list[list[str]] = []
    for answer in answers:
        if answer is None:
            continue
        if exact:
            answer = answer.strip()
        for group in groups:
            if answer == group[0] or (not exact and is_equivalent(answer, group[0])):
                group.append(answer)
                break
        else:
            groups.append([answer])
    if not groups:
        return None
    return max(groups, key=len)[0]  # max keeps the first of equal-size groups


def majority_correct(p: dict, k: int) -> bool:
    """Whether the majority of the first k answers is right: math-verify against the gold, or (exact) the
    verdict of a sample that gave that answer."""
    exact = p.get("exact", False)
    vote = majority(p["answers"][:k], exact)
    if vote is None:
        return False
    if not exact:
        return is_equivalent(vote, p["gold"])
    return next(c for a, c in zip(p["answers"][:k], p["correct"]) if a is not None and a.strip() == vote)


def score(per_problem: list[dict], ks: list[int]) -> dict:
    """Metrics from one record per problem: {"gold", "answers", "correct", "truncated", "lengths"} and
    optionally "exact" (majority by answer string, judged by the sample's own verdict)."""
    n = min(len(p["correct"]) for p in per_problem)
    p1, se = mean_and_stderr([sum(p["correct"]) / len(p["correct"]) for p in per_problem])
    out = {"problems": len(per_problem), "samples_per_problem": n, "pass@1": p1, "pass@1_stderr": se}
    for k in ks:
        if k > n:
            raise ValueError(f"pass@{k} needs k <= n={n} samples per problem")
        out[f"pass@{k}"] = sum(pass_at_k(len(p["correct"]), sum(p["correct"]), k) for p in per_problem) / len(per_problem)
        out[f"maj@{k}"] = sum(majority_correct(p, k) for p in per_problem) / len(per_problem)
    lengths = [x for p in per_problem for x in p["lengths"]]
    out["truncated_share"] = sum(sum(p["truncated"]) for p in per_problem) / max(1, len(lengths))
    out["mean_response_tokens"] = sum(lengths) / max(1, len(lengths))
    return out


def solved(correct: list[bool]) -> bool:
    """A problem counts as solved when at least half of its samples are right (with one sample: that one)."""
    return 2 * sum(correct) >= len(correct)


def flips(baseline: list[list[bool]], model: list[list[bool]]) -> tuple[list[int], list[int]]:
    """Positions of the problems the model gained (unsolved by the baseline, solved by the model; see `solved`)
    and lost (the reverse)."""
    pairs = [(solved(b), solved(m)) for b, m in zip(baseline, model)]
    return [i for i, (b, m) in enumerate(pairs) if m and not b], [i for i, (b, m) in enumerate(pairs) if b and not m]


def paired(baseline: list[list[bool]], model: list[list[bool]]) -> dict:
    """Two models on the same problems (aligned lists, one list of verdicts per problem): the mean difference
    of per-problem pass@1 estimates, model minus baseline, with its paired standard error sd(d_i)/sqrt(P),
    and the problems that flipped: `gained` (unsolved by the baseline, solved by the model; see `solved`) and
    `lost` (the reverse); `better`/`worse` count problems whose share of right samples rose/fell."""
    if len(baseline) != len(model):
        raise ValueError(f"paired comparison needs the same problems, got {len(baseline)} and {len(model)}")
    diffs = [sum(m) / len(m) - sum(b) / len(b) for b, m in zip(baseline, model)]
    delta, se = mean_and_stderr(diffs)
    gained, lost = flips(baseline, model)
    return {
        "problems": len(diffs), "delta_pass@1": delta, "delta_pass@1_stderr": se,
        "gained": len(gained), "lost": len(lost),
        "better": sum(d > 0 for d in diffs), "worse": sum(d < 0 for d in diffs),
    }
