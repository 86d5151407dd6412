"""Answers read from text, and nothing else: reasoning blocks stripped, the answer cut out (last \\boxed{}, last
number, a marker, reasoning-gym's <answer> tags), gold answers cleaned; the answer settings (the LLM judge's among
them, which seqdistill.checking.judge reads). The bottom of answer checking: it imports
nothing from seqdistill, so `problems`, `code` and `verify` all build on it and never on each other in a circle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
LATEX_COMMAND = re.compile(r"\\[A-Za-z]+(?:\{[^{}]*\})?")  # \frac, \text{ cm}: not words of a gold answer
LEADING_NUMBER = re.compile(r"\s*\\?\$?\s*(" + NUMBER.pattern + ")")  # `9 (apples)`, `$18 (dollars)`


@dataclass
class JudgeConfig:
    """An LLM asked where no rule decides (seqdistill.checking.judge): off until `model` is set."""

    # the judge's model as its OpenAI-compatible server names it; null: no judge (undecided samples stay dropped)
    model: str | None = None
    # how to reach it: engine's openai settings (base_url, api_key_env, headers, max_concurrency, max_retries,
    # timeout, retry_backoff, extra_body, price_input, price_output, seed), e.g. {base_url: http://HOST:8001/v1}
    engine: dict = field(default_factory=dict)
    # reasoning-gym tasks whose failed samples (wrong_answer, no_answer) the judge also reads; math rows are read when
    # math-verify can't read the gold or no answer could be extracted; code rows never
    tasks: list[str] = field(default_factory=list)
    tail_chars: int = 4000  # the judge sees this many characters of the response's end (after the think block)
    max_tokens: int = 1024  # the judge's reply length; a reply without a last line VERDICT: ... is asked again

    def validate(self) -> list[str]:
        errors = []
        if self.model is None and (self.engine or self.tasks):
            errors.append("engine and tasks configure a judge, which is off without model: set model (the served "
                          "name) or remove them")
        if self.tail_chars < 100 or self.max_tokens < 1:
            errors.append(f"tail_chars must be at least 100 and max_tokens at least 1, got {self.tail_chars} and {self.max_tokens}")
        return errors


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
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # an LLM judge where math-verify can't decide (off by default)

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


def extract_gold(value, answer_format: str) -> str:
    """The gold answer as a clean string: GSM8K's `#### 18`, a last \\boxed{}, the number it starts with
    (`9 (apples)` -> 9; a gold that starts otherwise is kept whole, and the gold check reports it), or the value itself."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if answer_format == "gsm8k":
        text = text.rsplit("####", 1)[-1].strip()
    elif answer_format == "boxed":
        text = last_boxed(text) or text
    elif answer_format == "leading_number":
        text = leading_number(text) or text
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)


def is_code(problem: dict | None) -> bool:
    """Code rows carry their tests (see seqdistill.sources.problems); every other row has a gold answer."""
    return bool(problem and problem.get("tests"))


def is_reasoning_gym(problem: dict | None) -> bool:
    return bool(problem and problem.get("rg_task"))
