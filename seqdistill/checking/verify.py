"""Answer extraction and checking: reasoning blocks stripped, answer extracted, math-verify compares.

`generate` uses it to keep correct traces and `eval` to score models, so both read answers the
same way. `judge` picks the verifier per problem: code rows (with `tests`) run their tests in the
sandbox (`seqdistill.checking.code`), reasoning-gym rows (with `rg_task`) are scored by their task's own
`score_answer` (`seqdistill.checking.rgym`; correct at a score >= `answer.rg_threshold`), every other row is
compared with its gold answer by math-verify.

A reasoning-gym answer may be any text (sorted words, a move list), so under `extraction: auto` it is
the last `<answer>...</answer>` after the think block (what reasoning-gym's own prompts ask for), else
the last \\boxed{}, else the whole text after the think block; the other extraction modes apply as set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from seqdistill.checking import code, rgym
from seqdistill.checking.answers import (  # noqa: F401  (answer extraction's home is answers; these names stay importable here)
    LATEX_COMMAND, NUMBER, AnswerConfig, extract_answer, extract_free_answer, is_code, is_reasoning_gym,
    last_boxed, last_number, last_tag, leading_number, strip_think,
)
from seqdistill.config import ConfigError

GOLD_EXAMPLES = 3  # unreadable gold answers shown in the log and the error


def extract_for(text: str, problem: dict | None, cfg: AnswerConfig) -> str | None:
    """The answer as the problem's verifier reads it (a program for code rows)."""
    if is_code(problem):
        return code.extract_code(text, cfg.think_tag)
    return extract_free_answer(text, cfg) if is_reasoning_gym(problem) else extract_answer(text, cfg)


@lru_cache(maxsize=100_000)
def _parse(text: str):
    from math_verify import parse

    # bare numbers and expressions parse as they are; latex is wrapped so math-verify reads it
    return parse(text if text.startswith("$") else f"${text}$") or parse(text)


def is_equivalent(answer: str | None, gold: str) -> bool:
    """math-verify equivalence (1/2 == 0.5 == \\frac{1}{2}); False when either side doesn't parse."""
    if answer is None or not str(gold).strip():
        return False
    from math_verify import verify

    try:
        parsed_gold, parsed = _parse(str(gold)), _parse(answer)
        return bool(parsed_gold and parsed and verify(parsed_gold, parsed))
    except Exception:  # math-verify raises on odd latex; an unreadable answer is a wrong one
        return False


def gold_problem(gold: str, cfg: AnswerConfig) -> str | None:
    """Why no response could match this gold answer under math-verify and `cfg.extraction`; None when one can.

    Unreadable: empty; nothing math-verify parses; a number with words that survive parsing as symbols
    (`9 (apples)` parses as 9*a*p*p*l*e*s, so the answer 9 never matches; `9 apples` parses as 9 and is fine);
    under `extraction: last_number`, anything that isn't a number."""
    text = str(gold).strip()
    if not text:
        return "empty"
    try:
        parsed = _parse(text)
    except Exception:  # math-verify raises on odd latex
        parsed = None
    if not parsed:
        return "math-verify parses nothing"
    words = re.findall(r"[A-Za-z]{2,}", LATEX_COMMAND.sub(" ", text))
    if words and NUMBER.search(text) and getattr(parsed[0], "free_symbols", None):
        return "a number with words"
    if cfg.extraction == "last_number" and not getattr(parsed[0], "is_number", False):
        return "not a number, and answer.extraction last_number reads only numbers"
    return None


def gold_undecidable(gold: str, cfg: AnswerConfig) -> str | None:
    """Why math-verify can't decide answers against this gold (the LLM judge's cue): `gold_problem`'s reasons, or
    words it reads as a product of symbols (`nine` parses as n*i*n*e, which the answer 9 never matches); None when it can."""
    why = gold_problem(gold, cfg)
    if why or not re.search(r"[A-Za-z]{2,}", LATEX_COMMAND.sub(" ", str(gold))):
        return why
    try:
        parsed = _parse(str(gold).strip())
    except Exception:  # math-verify raises on odd latex
        return "math-verify parses nothing"
    return "words, not math" if getattr(parsed[0], "free_symbols", None) else None


def check_golds(rows: list[dict], cfg: AnswerConfig, setting: str, source: str) -> dict:
    """Before any sampling: the share of gold answers the verifier can't read (code and reasoning-gym rows have
    their own checkers and are skipped), logged with examples; above `cfg.max_unreadable_gold` a one-line
    ConfigError naming `setting` (problems, benchmarks[NAME]) and a fix, unless answer.judge is on (it reads those
    problems' samples). Returns {checked, unreadable, examples}."""
    import logging

    log = logging.getLogger(__name__)
    golds = [row["answer"] for row in rows if not is_code(row) and not is_reasoning_gym(row)]
    bad = [(gold, why) for gold in golds if (why := gold_problem(gold, cfg))]
    examples = [f"{_short(gold)} ({why})" for gold, why in bad[:GOLD_EXAMPLES]]
    if golds:
        log.info("%s: %d of %d gold answers unreadable by math-verify%s", source, len(bad), len(golds),
                 f", e.g. {'; '.join(examples)}" if bad else "")
    if bad and cfg.judge.model is not None:  # the judge reads the samples of those problems (seqdistill.checking.judge)
        log.info("%s: answer.judge %s decides the samples of the %d problems with an unreadable gold", source,
                 cfg.judge.model, len(bad))
    elif bad and len(bad) > cfg.max_unreadable_gold * len(golds):
        raise ConfigError(f"{setting}: {len(bad)} of {len(golds)} gold answers of {source} ({len(bad) / len(golds):.1%}) "
                          f"can't be read by math-verify, so every sample of those problems would score wrong "
                          f"(e.g. {'; '.join(examples)}); {_gold_fix(bad, setting)}, or fix the file "
                          f"(answer.max_unreadable_gold: {cfg.max_unreadable_gold} is the share allowed)")
    return {"checked": len(golds), "unreadable": len(bad), "examples": examples}


def _short(text: str, width: int = 40) -> str:
    text = " ".join(str(text).split())
    return repr(text if len(text) <= width else text[: width - 3] + "...")


def _gold_fix(bad: list[tuple[str, str]], setting: str) -> str:
    """The likeliest fix for the unreadable golds seen."""
    if any(why.startswith("not a number") for _, why in bad):
        return "set answer.extraction: auto (or boxed) for answers that aren't numbers"
    if sum(leading_number(str(gold)) is not None for gold, _ in bad) > len(bad) / 2:
        return f"set {setting}.answer_format: leading_number (keeps the number each gold starts with)"
    return f"point {setting}.answer_field at the answer or set its answer_format (plain, gsm8k, boxed, leading_number)"


@dataclass
class Judgement:
    answer: str | None  # the extracted answer; for code problems the program
    correct: bool
    verdict: str  # code: seqdistill.checking.code.VERDICTS; math: passed | wrong_answer | no_answer
    detail: str = ""  # code: the first failing case or the error


def verifier_name(problem: dict | None) -> str:
    """math-verify, tests, or reasoning-gym:TASK: which checker judges this problem's answers."""
    if is_code(problem):
        return "tests"
    return f"reasoning-gym:{problem['rg_task']}" if is_reasoning_gym(problem) else "math-verify"


def judge(text: str, problem: dict, cfg: AnswerConfig, code_cfg=None) -> Judgement:
    """One response against one problem row: tests in the sandbox for code rows, the task's checker for
    reasoning-gym rows, math-verify for the rest."""
    return judge_many([text], [problem], cfg, code_cfg)[0]


def judge_many(texts: list[str], problems: list[dict], cfg: AnswerConfig, code_cfg=None) -> list[Judgement]:
    """`judge` for many responses; the programs among them run `code_cfg.workers` at a time."""
    out: list[Judgement | None] = [None] * len(texts)
    runs = []
    for i, (text, problem) in enumerate(zip(texts, problems)):
        if is_code(problem):
            runs.append(i)
            continue
        if is_reasoning_gym(problem):
            answer = extract_free_answer(text, cfg)
            score = rgym.score(answer, problem) if answer is not None else 0.0
            correct = score >= cfg.rg_threshold
            verdict = "passed" if correct else "no_answer" if answer is None else "wrong_answer"
            out[i] = Judgement(answer, correct, verdict, f"score {score:.3g}")
            continue
        answer = extract_answer(text, cfg)
        correct = is_equivalent(answer, problem["answer"])
        out[i] = Judgement(answer, correct, "passed" if correct else "no_answer" if answer is None else "wrong_answer")
    if runs:
        code_cfg = code_cfg or code.CodeConfig()
        verdicts = code.verify_many([(texts[i], problems[i]["tests"]) for i in runs], code_cfg, cfg.think_tag)
        for i, v in zip(runs, verdicts):
            out[i] = Judgement(code.extract_code(texts[i], cfg.think_tag), v.passed, v.status, v.detail)
    return out
