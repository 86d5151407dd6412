"""The filter chain: every sample of a problem is kept or dropped with one reason.

Order (one reason per sample, the first that applies):
  truncated -> unbalanced_think, no_answer -> too_short, too_long -> repetitive -> language_mixed -> wrong_answer
  -> too_easy, too_hard (the problem's pass rate outside `pass_rate`)
  -> duplicate, near_duplicate (within a problem) -> over_limit (at most k kept per problem: the first ones, or
  the longest or shortest with `prefer`).
Code problems (rows with `tests`) have `no_code` for `no_answer` and, for `wrong_answer`, the verdict
of their tests in the sandbox: wrong_output, runtime_error, timeout, memory or syntax_error.
reasoning-gym rows (with `rg_task`) are judged by their task's own checker (seqdistill.checking.verify).
A problem's pass rate is its correct samples over all its samples (open-r1 keeps 0.1 to 0.9).
Before sampling, whole problems are removed: `near_duplicate_problem` (seqdistill.sources.dedup, across every source of
`problems.mix`) and `contaminated` (`decontaminate`); `problem_funnel` counts them.
The funnel counts the samples that survive each stage. The per-problem stages (`select`: band, duplicates,
limit) need only each sample's verdict, so `generate` applies them again to stored samples: a rerun that
changes only `pass_rate`, `near_duplicate`, `max_per_problem` or `prefer` samples nothing again.
Preference pairs (`preference_pairs`) set a kept trace against a wrong or truncated one of the same problem.
With answer.judge on, generate has an LLM read the samples no rule decided (seqdistill.checking.judge) before `select`: one it
finds correct is correct from then on; a sample without an answer is read only when it passes `check_text`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from seqdistill.config import ConfigError
from seqdistill.sources.language import LANGUAGES, foreign_share
from seqdistill.checking.verify import AnswerConfig, extract_for, is_code, is_equivalent, is_reasoning_gym, judge_many, verifier_name
from seqdistill.sources.problems import PRESETS
from seqdistill.sources.problems import ProblemsConfig, load

CODE_FAILURES = ["wrong_output", "runtime_error", "timeout", "memory", "syntax_error"]  # seqdistill.checking.code verdicts
# funnel stage -> the drop reasons that end a sample at that stage
STAGES = {
    "finished": ["truncated"],
    "formatted": ["unbalanced_think", "no_answer", "no_code", "too_short", "too_long", "repetitive", "language_mixed"],
    "correct": ["wrong_answer", *CODE_FAILURES],
    "in_band": ["too_easy", "too_hard"],
    "deduplicated": ["duplicate", "near_duplicate"],
    "kept": ["over_limit"],
}
REASONS = [r for reasons in STAGES.values() for r in reasons]
PROBLEM_STAGES = {"distinct": "near_duplicate_problem", "decontaminated": "contaminated"}  # before sampling
PREFER = ("first", "longest", "shortest")
SELECTION = ("pass_rate", "near_duplicate", "max_per_problem", "prefer")  # settings `select` applies after sampling


@dataclass
class FilterConfig:
    require_think: bool | None = None  # balanced <think>...</think>; None: when the prefill opens one
    min_tokens: int = 1  # completion length bounds, in tokens
    max_tokens: int | None = None
    repetition_ngram: int = 6  # word n-grams for the degenerate-repetition check
    max_repeat_fraction: float = 0.5  # drop when more than this share of n-grams repeat earlier ones
    # the script traces must be written in (latin, cyrillic, chinese, japanese, korean, arabic, ...; english = latin,
    # russian = cyrillic): a trace with more than max_foreign_share of its words in another script is dropped as
    # language_mixed (R1's language consistency); digits, math symbols, Greek letters and LaTeX don't count. None: off
    language: str | None = None
    max_foreign_share: float = 0.05  # the share of a trace's words in another script that filters.language allows
    near_duplicate: float = 0.9  # Jaccard similarity of word 3-gram sets that counts as a near-duplicate
    max_per_problem: int | None = 4  # None: keep every correct, distinct sample
    # which correct, distinct samples max_per_problem keeps: first (sample order), longest or shortest (completion
    # tokens; s1 and LIMO prefer long traces); the others are dropped as over_limit
    prefer: str = "first"
    # eval sets whose questions must not appear in the problems: preset names (gsm8k), local files
    # with a question field, or preset=path (mawps=../shared/benchmarks/mawps/test.jsonl)
    decontaminate: list[str] = field(default_factory=list)
    decontaminate_ngram: int = 8
    # Jaccard similarity of word 3-gram sets (MinHash + LSH, exact check) at which a problem repeats an earlier
    # one, across every source of problems.mix: removed before sampling as near_duplicate_problem, the first
    # occurrence kept (RUCAIBox's STILL recipes use 0.8). None: off
    near_duplicate_problems: float | None = None
    # [lo, hi]: keep only problems whose teacher pass rate (correct / samples) lies in the band; None: all
    pass_rate: list[float] | None = None

    def validate(self) -> list[str]:
        errors = []
        if self.min_tokens < 0 or (self.max_tokens is not None and self.max_tokens < self.min_tokens):
            errors.append(f"need 0 <= min_tokens <= max_tokens, got {self.min_tokens} and {self.max_tokens}")
        if self.repetition_ngram < 1 or not 0 < self.max_repeat_fraction <= 1:
            errors.append("repetition_ngram must be >= 1 and max_repeat_fraction in (0, 1]")
        if not 0 < self.near_duplicate <= 1:
            errors.append(f"near_duplicate must be in (0, 1], got {self.near_duplicate}")
        if self.language is not None and self.language not in LANGUAGES:
            errors.append(f"language must be one of {', '.join(LANGUAGES)} (or null: off), got {self.language!r}")
        if not 0 <= self.max_foreign_share < 1:
            errors.append(f"max_foreign_share must be in [0, 1), got {self.max_foreign_share}")
        if self.near_duplicate_problems is not None and not 0 < self.near_duplicate_problems <= 1:
            errors.append(f"near_duplicate_problems must be in (0, 1] (or null: off), got {self.near_duplicate_problems}")
        if self.max_per_problem is not None and self.max_per_problem < 1:
            errors.append(f"max_per_problem must be at least 1 (or null for no limit), got {self.max_per_problem}")
        if self.prefer not in PREFER:
            errors.append(f"prefer must be {', '.join(PREFER)}, got {self.prefer!r}")
        if self.pass_rate is not None:
            band = self.pass_rate
            if len(band) != 2 or not 0 <= band[0] <= band[1] <= 1:
                errors.append(f"pass_rate must be [lo, hi] with 0 <= lo <= hi <= 1, got {band}")
        return errors


@dataclass
class PreferenceConfig:
    # also write data/preference.parquet: pairs in TRL's conversational preference format (prompt, chosen = a kept
    # trace, rejected = a dropped trace of the same problem) for DPO, as Sky-T1-Flash builds them; nothing else changes
    pairs: bool = False
    # the drop reasons whose traces are rejected ones (code problems: add wrong_output, runtime_error, ...)
    rejected: list[str] = field(default_factory=lambda: ["wrong_answer", "truncated"])
    max_per_problem: int | None = None  # pairs per problem at most; None: min(kept, rejected) of the problem

    def validate(self) -> list[str]:
        errors = []
        unknown = [r for r in self.rejected if r not in REASONS]
        if unknown or not self.rejected:
            errors.append(f"rejected must name drop reasons, got {self.rejected}; pick from {', '.join(REASONS)}")
        if self.max_per_problem is not None and self.max_per_problem < 1:
            errors.append(f"max_per_problem must be at least 1 (or null: min(kept, rejected)), got {self.max_per_problem}")
        return errors


def words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())


def ngrams(tokens: list[str], n: int) -> list[tuple]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repeat_fraction(text: str, n: int) -> float:
    """Share of word n-grams that already appeared earlier in the text (0 for a loop-free text)."""
    grams = ngrams(words(text), n)
    if not grams:
        return 0.0
    return sum(c - 1 for c in Counter(grams).values()) / len(grams)


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def check_sample(sample: dict, gold: str, cfg: FilterConfig, answer_cfg: AnswerConfig, think: bool) -> tuple[str | None, str | None]:
    """(answer, drop reason or None) for one sample of a math problem, before the per-problem stages."""
    answer, reason = check_format(sample, cfg, answer_cfg, think)
    if reason is None and not is_equivalent(answer, gold):
        return answer, "wrong_answer"
    return answer, reason


def check_format(sample: dict, cfg: FilterConfig, answer_cfg: AnswerConfig, think: bool,
                 problem: dict | None = None) -> tuple[str | None, str | None]:
    """(answer, drop reason or None) up to the `formatted` stage; for code the answer is the program."""
    text, code = sample["completion"], is_code(problem)
    answer = extract_for(text, problem, answer_cfg)
    if sample["finish_reason"] != "stop":
        return answer, "truncated"
    if think:
        tag = answer_cfg.think_tag
        if text.count(f"<{tag}>") != 1 or text.count(f"</{tag}>") != 1 or text.find(f"<{tag}>") > text.find(f"</{tag}>"):
            return answer, "unbalanced_think"
    if answer is None:
        return answer, "no_code" if code else "no_answer"
    return answer, check_text(sample, cfg)


def check_text(sample: dict, cfg: FilterConfig) -> str | None:
    """The format stages after the answer (too_short, too_long, repetitive, language_mixed): the drop reason or None.
    Also what a sample without an answer must pass before the LLM judge reads it (seqdistill.checking.judge)."""
    text = sample["completion"]
    if sample["completion_tokens"] < cfg.min_tokens:
        return "too_short"
    if cfg.max_tokens is not None and sample["completion_tokens"] > cfg.max_tokens:
        return "too_long"
    if repeat_fraction(text, cfg.repetition_ngram) > cfg.max_repeat_fraction:
        return "repetitive"
    if cfg.language is not None and foreign_share(text, cfg.language) > cfg.max_foreign_share:
        return "language_mixed"
    return None


def check_judged(samples: list[dict], problem: dict, cfg: FilterConfig, answer_cfg: AnswerConfig, think: bool,
                 code_cfg=None) -> list[tuple[str | None, str | None, str]]:
    """(answer, drop reason or None, detail) per sample of a code or reasoning-gym problem: the formatted
    ones are judged by `verify.judge_many` (programs run in the sandbox, several at a time)."""
    checked = [(*check_format(s, cfg, answer_cfg, think, problem), "") for s in samples]
    todo = [i for i, (_, reason, _) in enumerate(checked) if reason is None]
    judged = judge_many([samples[i]["completion"] for i in todo], [problem] * len(todo), answer_cfg, code_cfg)
    for i, j in zip(todo, judged):
        checked[i] = (checked[i][0], None if j.correct else j.verdict, j.detail)
    return checked


def apply(samples: list[dict], gold: str, cfg: FilterConfig, answer_cfg: AnswerConfig, think: bool,
          problem: dict | None = None, code_cfg=None) -> list[dict]:
    """Tag each sample of one problem (in sample order) with answer, correct, keep, drop_reason.

    `problem` (the problem row) picks the verifier: a code row (with `tests`) runs its tests in the
    sandbox under `code_cfg` (seqdistill.checking.code.CodeConfig; None: its defaults) and each sample also
    gets `verdict_detail` (the first failing case or the error); a reasoning-gym row is scored by its
    task's checker (`verdict_detail`: the score); any other row is checked against `gold`. Each sample
    gets `verifier` (verify.verifier_name).
    """
    if is_code(problem) or is_reasoning_gym(problem):
        checked = check_judged(samples, problem, cfg, answer_cfg, think, code_cfg)
    else:
        checked = [(*check_sample(s, gold, cfg, answer_cfg, think), "") for s in samples]
    out = []
    for sample, (answer, reason, detail) in zip(samples, checked):
        record = {**sample, "answer": answer, "correct": reason is None, "drop_reason": reason}
        if problem is not None:  # detail: a code problem's failing case, a reasoning-gym score; else None
            record["verdict_detail"] = detail if is_code(problem) or is_reasoning_gym(problem) else None
            record["verifier"] = verifier_name(problem)
        out.append(record)
    for record, reason in zip(out, select(out, cfg)):
        record["keep"], record["drop_reason"] = reason is None, reason
    return out


def select(samples: list[dict], cfg: FilterConfig) -> list[str | None]:
    """The drop reason (None: kept) of each judged sample of one problem after the per-problem stages: the
    pass-rate band, duplicates and near-duplicates of kept samples, and max_per_problem, taking the correct
    samples in `cfg.prefer` order. Each sample needs `correct`, `completion`, `completion_tokens` and, when
    not correct, its `drop_reason`, which stays."""
    band = band_reason(sum(s["correct"] for s in samples), len(samples), cfg.pass_rate)
    order = list(range(len(samples)))  # sorted() is stable: equal lengths stay in sample order
    if cfg.prefer != "first":
        order.sort(key=lambda i: samples[i]["completion_tokens"] * (-1 if cfg.prefer == "longest" else 1))
    reasons = [None if s["correct"] else s["drop_reason"] for s in samples]
    kept_texts: list[str] = []
    kept_shingles: list[set] = []
    for i in order:
        if not samples[i]["correct"]:
            continue
        if band:
            reasons[i] = band
            continue
        normalized = " ".join(samples[i]["completion"].split())
        shingles = set(ngrams(words(normalized), 3))
        if normalized in kept_texts:
            reasons[i] = "duplicate"
        elif any(jaccard(shingles, other) >= cfg.near_duplicate for other in kept_shingles):
            reasons[i] = "near_duplicate"
        elif cfg.max_per_problem is not None and len(kept_texts) >= cfg.max_per_problem:
            reasons[i] = "over_limit"
        else:
            kept_texts.append(normalized)
            kept_shingles.append(shingles)
    return reasons


def band_reason(correct: int, total: int, band: list[float] | None) -> str | None:
    """too_easy / too_hard when a problem's pass rate falls outside the band, else None."""
    if band is None or total == 0:
        return None
    rate = correct / total
    return "too_easy" if rate > band[1] else "too_hard" if rate < band[0] else None


def preference_pairs(samples: list[dict], cfg: PreferenceConfig) -> list[dict]:
    """TRL preference rows (prompt, chosen, rejected: lists of messages) from the tagged samples of a generation.

    Per problem (`problem_index`), its kept traces and its traces dropped for a reason in `cfg.rejected`, each
    in sample order, are zipped: min(kept, rejected) pairs (at most `cfg.max_per_problem`), no trace in two pairs,
    never two problems in one pair. Each sample needs messages, problem_id, problem_index, sample_index, keep and
    drop_reason; a pair also records problem_id, both sample indices and the rejected trace's reason."""
    by_problem: dict[int, list[dict]] = {}
    for s in sorted(samples, key=lambda s: (s["problem_index"], s["sample_index"])):
        by_problem.setdefault(s["problem_index"], []).append(s)
    rows = []
    for group in by_problem.values():
        chosen = [s for s in group if s["keep"]]
        rejected = [s for s in group if not s["keep"] and s["drop_reason"] in cfg.rejected]
        for good, bad in list(zip(chosen, rejected))[: cfg.max_per_problem]:
            rows.append({"prompt": good["messages"][:-1], "chosen": good["messages"][-1:],
                         "rejected": bad["messages"][-1:], "problem_id": good["problem_id"],
                         "chosen_index": good["sample_index"], "rejected_index": bad["sample_index"],
                         "rejected_reason": bad["drop_reason"]})
    return rows


def funnel(reasons: list[str | None]) -> dict[str, int]:
    """Samples left after each stage: generated -> finished -> formatted -> correct -> (in_band, when the
    pass-rate band dropped any) -> deduplicated -> kept."""
    counts = Counter(reasons)
    left = len(reasons)
    out = {"generated": left}
    for stage, stage_reasons in STAGES.items():
        if stage == "in_band" and not any(counts[r] for r in stage_reasons):
            continue
        left -= sum(counts[r] for r in stage_reasons)
        out[stage] = left
    return out


def problem_funnel(loaded: int, removed: dict[str, int]) -> dict[str, int]:
    """Problems left after each stage before sampling: loaded -> distinct -> decontaminated, a stage shown only
    when its setting is on (`removed` has its reason, even at 0)."""
    out, left = {"loaded": loaded}, loaded
    for stage, reason in PROBLEM_STAGES.items():
        if reason in removed:
            left -= removed[reason]
            out[stage] = left
    return out


def eval_preset(src: str) -> str | None:
    """The preset a decontaminate entry names (gsm8k, gsm8k=path), or None for a bare file."""

    if "=" in src:
        return src.split("=", 1)[0]
    return src if src in PRESETS else None


def contamination_index(sources: list[str], n: int) -> set[tuple]:
    """Word n-grams of the questions of named eval sets (presets or local files)."""

    grams: set[tuple] = set()
    for src in sources:
        preset = eval_preset(src)
        path = src.split("=", 1)[1] if "=" in src else "" if preset else src
        try:
            rows = load(ProblemsConfig(source=path, preset=preset))
        except ConfigError as e:
            raise ConfigError(f"filters.decontaminate {src}: {e}") from e
        for row in rows:
            grams.update(ngrams(words(row["question"]), n))
    return grams


def is_contaminated(question: str, index: set[tuple], n: int) -> bool:
    return any(g in index for g in ngrams(words(question), n))
