"""The LLM judge: where no rule can decide whether a response is right, a model is asked, as open-r1 and OpenThoughts
fall back to one when math-verify can't read an answer.

    answer:
      judge: {model: Qwen/Qwen2.5-7B-Instruct, engine: {base_url: http://127.0.0.1:8001/v1}}

It reads only samples no rule decided (`undecided`): a math sample without an answer to extract (`no_answer`), or one
against a gold answer math-verify can't read (verify.gold_undecidable), or a failed sample of a reasoning-gym task
named in `answer.judge.tasks`. Never a code sample, never a decided verdict: it can only turn an undecided sample
correct. The prompt (templates/judge/v1.jinja, PROMPT_VERSION) shows the question, the gold answer and the end of the
response, and asks for a last line `VERDICT: CORRECT` or `VERDICT: INCORRECT`, at temperature 0, through the openai
backend (seqdistill.engines.api: retries, concurrency, replicas). A reply that ends otherwise is asked again, up to
engine.max_retries times, then left undecided: the sample stays dropped with its reason, never counted correct.
Every reply is journaled (JOURNAL, in the stage's output) as it arrives, keyed by (question, gold, response tail) and
the judge's settings, so a killed run resumes and a rerun asks nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from pathlib import Path

from seqdistill import config as configlib
from seqdistill.checking.answers import JudgeConfig, is_reasoning_gym, strip_think
from seqdistill.checking.verify import AnswerConfig, gold_undecidable
from seqdistill.config import ConfigError
from seqdistill.engines import api, prompts
from seqdistill.engines.sampling import OPERATIONAL as ENGINE_OPERATIONAL
from seqdistill.engines.sampling import EngineConfig, Prompt, Request, SamplingConfig

log = logging.getLogger(__name__)
PROMPT_VERSION = "judge-v1"  # a new prompt gets a new version (and file): cached verdicts are keyed by it
TEMPLATE = prompts.TEMPLATES_DIR / "judge" / "v1.jinja"
JOURNAL = "judge.jsonl"  # every reply, in generate's OUTPUT_DIR and eval's MODEL/BENCHMARK/
VERDICT = re.compile(r"VERDICT: (CORRECT|INCORRECT)")
SETTING = "answer.judge.engine"
# the judge's connection settings that change how fast or where its verdicts come, not which (Layout.ignore)
OPERATIONAL = tuple(f"answer.judge.{key}" for key in ENGINE_OPERATIONAL)
RETRY_TEMPERATURE = 0.7  # a reply without a VERDICT line is asked again sampled: greedily it would come back the same


def engine_config(cfg: JudgeConfig) -> EngineConfig:
    """The judge's connection: answer.judge.engine as engine's openai settings, serving answer.judge.model."""
    return configlib.build(EngineConfig, {**cfg.engine, "backend": "openai", "served_model": cfg.model}, f"{SETTING}.")


def check(cfg: JudgeConfig) -> list[str]:
    """answer.judge's connection settings as engine checks them (base_url given, the key's variable set, ...), each
    problem naming its setting; said by a stage's validate(), before any model loads."""
    if cfg.model is None:
        return []
    errors = [f"{SETTING}.{key}: the judge is always asked through the openai backend, as answer.judge.model; remove it"
              for key in ("backend", "served_model") if key in cfg.engine]
    try:
        eng = engine_config(cfg)
    except ConfigError as e:
        return errors + [p if p.startswith(("unknown setting", SETTING)) else f"{SETTING}: {p}" for p in e.problems]
    if eng.api != "chat" or eng.batch or eng.max_cost is not None or eng.max_tokens_total is not None:
        errors.append(f"{SETTING}: the judge asks through the chat API, request by request, with no spending limit: "
                      "remove api, batch, max_cost and max_tokens_total (stats.json counts what it spent)")
    return errors


def preflight(cfg: AnswerConfig, rows: list[dict]) -> None:
    """Before any engine starts or request is sent: the settings, answer.judge.tasks among the problems' tasks, and
    the judge's server reachable, taking the key and serving the model."""
    judge = cfg.judge
    if judge.model is None:
        return
    tasks = sorted({row["rg_task"] for row in rows if is_reasoning_gym(row)})
    errors = check(judge) + [f"answer.judge.tasks: {t!r} is not a reasoning-gym task of these problems (they have: "
                             f"{', '.join(tasks) or 'none'}); remove it" for t in judge.tasks if t not in tasks]
    if errors:
        raise ConfigError(errors)
    probe = Prompt("check", messages=[{"role": "user", "content": "VERDICT"}])
    try:
        api.OpenAIEngine(judge.model, engine_config(judge)).check({"judge": [probe]}, judge.max_tokens)
    except ConfigError as e:
        # the reply's limit here is the judge's own
        raise ConfigError([f"answer.judge: {p.replace('sampling.max_tokens', 'answer.judge.max_tokens')}"
                           for p in e.problems]) from e


def undecided(verifier: str | None, reason: str | None, gold: str, cfg: AnswerConfig) -> bool:
    """Whether the judge may read a sample: `verifier` (verify.verifier_name) and `reason` (its verdict or drop reason)
    say no rule decided it: math without an answer or against a gold math-verify can't read, or a failed sample of a
    reasoning-gym task in answer.judge.tasks. Never code, never a correct sample."""
    if reason not in ("no_answer", "wrong_answer") or not verifier or not str(gold).strip():
        return False  # without a reference answer there is nothing to judge against
    if verifier == "math-verify":
        return reason == "no_answer" or gold_undecidable(gold, cfg) is not None
    return verifier.startswith("reasoning-gym:") and verifier.split(":", 1)[1] in cfg.judge.tasks


def parse_verdict(reply: str) -> bool | None:
    """True when the reply's last non-empty line is exactly `VERDICT: CORRECT`, False for `VERDICT: INCORRECT`, None
    for anything else (a verdict mid-text, in bold, in other words); a reasoning block is skipped."""
    lines = [line.strip() for line in (strip_think(reply) or "").splitlines() if line.strip()]
    found = VERDICT.fullmatch(lines[-1]) if lines else None
    return None if found is None else found[1] == "CORRECT"


def read(sample: dict) -> bool:
    """Whether the judge gave this sample its verdict (its verdict_detail names the prompt version)."""
    return str(sample.get("verdict_detail") or "").startswith("judge-")  # judge-v1: ..., any prompt version


def name(cfg: AnswerConfig) -> str:
    """The verifier a judged sample names: judge:MODEL."""
    return f"judge:{cfg.judge.model}"


def detail(verdict: bool | None) -> str:
    """A judged sample's verdict_detail."""
    if verdict is None:
        return f"{PROMPT_VERSION}: undecided (no reply ended with a VERDICT line)"
    return f"{PROMPT_VERSION}: {'CORRECT' if verdict else 'INCORRECT'}"


def tail(text: str, cfg: AnswerConfig) -> str:
    """What the judge sees of a response: its end after the think block (the whole text when that is empty)."""
    body = strip_think(text, cfg.think_tag)
    return (body if body and body.strip() else text).strip()[-cfg.judge.tail_chars:]


def next_try(records: dict, key: str, tries: int) -> tuple[int | None, bool | None]:
    """(the attempt to send next, or None when settled; the verdict): the first finished reply with a VERDICT line
    decides; after `tries` others the sample stays undecided. A request the server refused (a 4xx: too long for the
    judge's context, say) settles it undecided: sent again, it would be refused again."""
    for j in range(tries):
        r = records.get(f"{key}/{j}")
        if r and r.get("refused"):
            return None, None
        if not (r and r.get("ok")):
            return j, None
        verdict = parse_verdict(r["text"]) if r.get("finish_reason") == "stop" else None
        if verdict is not None:
            return None, verdict
    return None, None


def ask(cfg: AnswerConfig, cases: list[tuple[str, str, str]], journal: Path) -> tuple[list[bool | None], dict]:
    """The judge's verdict on each (question, gold, response): True, False or None (undecided), and its counts for
    stats. A reply in `journal` is reused; the rest are asked, engine.max_concurrency at once, each journaled as it
    arrives. A request that fails after the engine's retries stops the run: a rerun asks only what is missing."""
    judge = cfg.judge
    eng = api.OpenAIEngine(judge.model, engine_config(judge))
    req = Request(SamplingConfig(n=1, temperature=0.0, top_p=1.0, max_tokens=judge.max_tokens))
    again = Request(SamplingConfig(n=1, temperature=RETRY_TEMPERATURE, top_p=1.0, max_tokens=judge.max_tokens))
    prompt_hash = hashlib.sha1(TEMPLATE.read_bytes()).hexdigest()[:8]  # an edited prompt never reuses old verdicts
    fp = f"{PROMPT_VERSION}-{prompt_hash}-{eng.fingerprint(req)}"  # the model, reply length and extra_body besides
    template = prompts.load_template(str(TEMPLATE))
    keys, asked = [], {}
    for question, gold, text in cases:
        shown = tail(text, cfg)
        key = hashlib.sha1(json.dumps([question, gold, shown]).encode()).hexdigest()
        keys.append(key)
        if key not in asked:
            content = template.render(question=question, gold=gold, response=shown).strip()
            asked[key] = Prompt(key, messages=[{"role": "user", "content": content}])
    tries, verdicts = eng.cfg.max_retries + 1, {}
    records = api.read_journal(journal, fp) if asked else {}
    while len(verdicts) < len(asked):
        todo = []
        for key, p in asked.items():
            if key not in verdicts:
                j, verdict = next_try(records, key, tries)
                if j is None:
                    verdicts[key] = verdict
                else:
                    todo.append((p, j))
        if todo:
            for attempt, batch in ((req, [t for t in todo if t[1] == 0]), (again, [t for t in todo if t[1] > 0])):
                if batch:
                    records = eng.send(batch, attempt, journal, fp)
            failed = [r.get("error", "not sent") for p, j in todo
                      if not (r := records.get(f"{p.key}/{j}", {})).get("ok") and not r.get("refused")]
            if failed:
                raise ConfigError(f"answer.judge: {len(failed)} requests to {judge.model} failed after retries (first: "
                                  f"{failed[0]}); rerun the same command to ask only those (answers so far are in {journal})")
    counts = Counter({True: "judged_correct", False: "judged_wrong", None: "undecided"}[verdicts[k]] for k in keys)
    refused = sum(1 for k in asked for j in range(tries) if records.get(f"{k}/{j}", {}).get("refused"))
    replies = [r for k in asked for j in range(tries) if (r := records.get(f"{k}/{j}")) and r.get("ok")]
    stats = {"model": judge.model, "prompt": PROMPT_VERSION, "asked": len(keys),
             **{k: counts[k] for k in ("judged_correct", "judged_wrong", "undecided")}, "replies": len(replies),
             "refused": refused,
             "prompt_tokens": sum(r.get("prompt_tokens", 0) for r in replies),
             "completion_tokens": sum(r.get("completion_tokens", 0) for r in replies)}
    if eng.cfg.prices():
        stats["cost"] = round(api.Budget(eng.cfg, stats["prompt_tokens"], stats["completion_tokens"]).cost(), 4)
    if keys:
        log.info("answer.judge %s on %d samples no rule decided: %d correct, %d wrong, %d undecided", judge.model,
                 len(keys), counts["judged_correct"], counts["judged_wrong"], counts["undecided"])
    return [verdicts[k] for k in keys], stats
