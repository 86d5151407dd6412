"""Answer extraction and checking: reasoning blocks stripped, answer extracted, math-verify compares.

`generate` uses it to keep correct traces and `eval` to score models, so both read answers the
same way. `judge` picks the verifier per problem: code rows (with `tests`) run their tests in the
sandbox (`seqdistill.code`), reasoning-gym rows (with `rg_task`) are scored by their task's own
`score_answer` (correct at a score >= `answer.rg_threshold`), every other row is compared with its
gold answer by math-verify.

A reasoning-gym answer may be any text (sorted words, a move list), so under `extraction: auto` it is
the last `<answer>...</answer>` after the think block (what reasoning-gym's own prompts ask for), else
the last \\boxed{}, else the whole text after the think block; the other extraction modes apply as set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
LATEX_COMMAND = re.compile(r"\\[A-Za-z]+(?:\{[^{}]*\})?")  # \frac, \text{ cm}: not words of a gold answer
LEADING_NUMBER = re.compile(r"\s*\\?\$?\s*(" + NUMBER.pattern + ")")  # `9 (apples)`, `$18 (dollars)`
GOLD_EXAMPLES = 3  # unreadable gold answers shown in the log and the error


@dataclass
class AnswerConfig:
    # boxed: the last \boxed{...}; last_number: the last number; marker: what follows the last
    # `marker`; auto: boxed when there is one, else the last number (reasoning-gym rows: the last
    # <answer>...</answer>, else boxed, else the whole text after the think block).
    extraction: str = "auto"
    marker: str = "The answer is"
    think_tag: str = "think"  # responses with an unclosed <think> block have no answer
    rg_threshold: float = 1.0  # reasoning-gym rows: correct when the task's score_answer (0 to 1) reaches this
    # largest share of gold answers math-verify may fail to read before any sampling starts (0.01: 1%); every
    # sample of such a problem would score wrong. Code and reasoning-gym rows have their own checkers
    max_unreadable_gold: float = 0.01

    def validate(self) -> list[str]:
        errors = []
        if self.extraction not in ("auto", "boxed", "last_number", "marker"):
            errors.append(f"extraction must be auto, boxed, last_number or marker, got {self.extraction!r}")
        if not 0 < self.rg_threshold <= 1:
            errors.append(f"rg_threshold must be in (0, 1], got {self.rg_threshold}")
        if not 0 <= self.max_unreadable_gold <= 1:
            errors.append(f"max_unreadable_gold must be in [0, 1], got {self.max_unreadable_gold}")
        return errors


def strip_think(text: str, tag: str = "think") -> str | None:
    """The part after the reasoning block; None when a block is opened and never closed."""
    open_, close = f"<{tag}>", f"</{tag}>"
    if close in text:
        return text.rsplit(close, 1)[1]
    if open_ in text:
        return None
    return text


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def last_number(text: str) -> str | None:
    found = NUMBER.findall(text)
    return found[-1].replace(",", "").rstrip(".") if found else None


def leading_number(text: str) -> str | None:
    """The number a text starts with (`9 (apples)` -> 9, `$1,200 total` -> 1200); None when it starts otherwise."""
    found = LEADING_NUMBER.match(text)
    return found.group(1).replace(",", "") if found else None


def extract_answer(text: str, cfg: AnswerConfig) -> str | None:
    body = strip_think(text, cfg.think_tag)
    if body is None:
        return None
    if cfg.extraction == "boxed":
        return last_boxed(body)
    if cfg.extraction == "last_number":
        return last_number(body)
    if cfg.extraction == "marker":
        if cfg.marker not in body:
            return None
        after = body.rsplit(cfg.marker, 1)[1].strip().lstrip(":").strip()
        line = after.splitlines()[0].strip().rstrip(".") if after else ""
        return last_boxed(line) or line or None
    return last_boxed(body) or last_number(body)


def last_tag(text: str, tag: str = "answer") -> str | None:
    """Content of the last <tag>...</tag> (reasoning-gym's answer format)."""
    found = re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags=re.DOTALL)
    return found[-1].strip() if found else None


def extract_free_answer(text: str, cfg: AnswerConfig) -> str | None:
    """A reasoning-gym answer: <answer> tags, else \\boxed{}, else the whole final text (auto); else as `extract_answer`."""
    if cfg.extraction != "auto":
        return extract_answer(text, cfg)
    body = strip_think(text, cfg.think_tag)
    if body is None:
        return None
    answer = last_tag(body)
    if answer is None:
        answer = last_boxed(body) or body.strip()
    return answer or None


def extract_for(text: str, problem: dict | None, cfg: AnswerConfig) -> str | None:
    """The answer as the problem's verifier reads it (a program for code rows)."""
    if is_code(problem):
        from seqdistill.code import extract_code

        return extract_code(text, cfg.think_tag)
    return extract_free_answer(text, cfg) if is_reasoning_gym(problem) else extract_answer(text, cfg)


def rg_score(answer: str | None, problem: dict) -> float:
    """The task's own score_answer on its exact entry; an answer the checker chokes on scores 0."""
    from seqdistill.problems import rg_entry

    dataset, entry = rg_entry(problem)
    try:
        return float(dataset.score_answer(answer, entry))
    except Exception:
        return 0.0


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


def check_golds(rows: list[dict], cfg: AnswerConfig, setting: str, source: str) -> dict:
    """Before any sampling: the share of gold answers the verifier can't read (code and reasoning-gym rows have
    their own checkers and are skipped), logged with examples; above `cfg.max_unreadable_gold` a one-line
    ConfigError naming `setting` (problems, benchmarks[NAME]) and a fix. Returns {checked, unreadable, examples}."""
    import logging

    from seqdistill.config import ConfigError

    log = logging.getLogger(__name__)
    golds = [row["answer"] for row in rows if not is_code(row) and not is_reasoning_gym(row)]
    bad = [(gold, why) for gold in golds if (why := gold_problem(gold, cfg))]
    examples = [f"{_short(gold)} ({why})" for gold, why in bad[:GOLD_EXAMPLES]]
    if golds:
        log.info("%s: %d of %d gold answers unreadable by math-verify%s", source, len(bad), len(golds),
                 f", e.g. {'; '.join(examples)}" if bad else "")
    if bad and len(bad) > cfg.max_unreadable_gold * len(golds):
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
    verdict: str  # code: seqdistill.code.VERDICTS; math: passed | wrong_answer | no_answer
    detail: str = ""  # code: the first failing case or the error


def is_code(problem: dict | None) -> bool:
    """Code rows carry their tests (see seqdistill.problems); every other row has a gold answer."""
    return bool(problem and problem.get("tests"))


def is_reasoning_gym(problem: dict | None) -> bool:
    return bool(problem and problem.get("rg_task"))


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
            score = rg_score(answer, problem) if answer is not None else 0.0
            correct = score >= cfg.rg_threshold
            verdict = "passed" if correct else "no_answer" if answer is None else "wrong_answer"
            out[i] = Judgement(answer, correct, verdict, f"score {score:.3g}")
            continue
        answer = extract_answer(text, cfg)
        correct = is_equivalent(answer, problem["answer"])
        out[i] = Judgement(answer, correct, "passed" if correct else "no_answer" if answer is None else "wrong_answer")
    if runs:
        from seqdistill import code

        code_cfg = code_cfg or code.CodeConfig()
        verdicts = code.verify_many([(texts[i], problems[i]["tests"]) for i in runs], code_cfg, cfg.think_tag)
        for i, v in zip(runs, verdicts):
            out[i] = Judgement(code.extract_code(texts[i], cfg.think_tag), v.passed, v.status, v.detail)
    return out
