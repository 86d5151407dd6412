"""Thinking budgets (s1's budget forcing) for eval, by sampling in phases:

1. think: each prompt's n samples, cut at the budget (or sampling.max_tokens) and at the end of the think block;
2. wait: a think block that ended before `min_tokens` is continued after "Wait" (at most MAX_WAITS times, never past
   the budget);
3. answer: every think block is closed ("\\n</think>\\n\\n"), `answer_prefix` (s1: "Final Answer:") written after it,
   and the answer sampled from there (`answer_tokens`).

Each phase is an ordinary chunked sampling call in a folder of its own (think/, wait-1/, ..., answer/ under the
benchmark's chunks/), so a rerun resumes phase by phase and draws what an uninterrupted run would have. A phase
continues a response from its token ids, so budgets need prompts rendered here: backend vllm, or openai with
api completions (a chat API can't be asked to continue an assistant turn).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from seqdistill import store
from seqdistill.engines import engine
from seqdistill.engines.engine import Completion, Output, Prompt, Request

WAIT = "Wait"  # s1's continuation word
MAX_WAITS = 4
CLOSE_MARGIN = 8  # tokens of the closing tag between the think block and the answer


def check(engines: list, budgets: list[int], min_tokens: int, answer_tokens: int) -> list[str]:
    """Bad settings, said before anything loads; `budgets` as they apply (eval's and the benchmarks' own)."""
    errors = [f"thinking_budget must be at least 1 token, got {b}" for b in budgets if b < 1]
    if min_tokens < 0 or answer_tokens < 1:
        errors.append(f"need min_thinking_tokens >= 0 and answer_tokens >= 1, got {min_tokens} and {answer_tokens}")
    errors += [f"min_thinking_tokens ({min_tokens}) exceeds thinking_budget {b}: no think block could reach it; lower it"
               for b in sorted(set(budgets)) if min_tokens > b >= 1]
    if budgets or min_tokens:
        for eng in engines:
            if eng.backend == "openai" and eng.api == "chat":
                errors.append("thinking budgets continue a response from its tokens: with backend openai set "
                              "engine.api: completions (the prompt is rendered here), or use backend vllm")
                break
    return errors


def close(tag: str) -> str:
    return f"\n</{tag}>\n\n"


def longest(cap: int, answer_tokens: int) -> int:
    """The most tokens a response under `cap` thinking tokens can take (for the context check)."""
    return cap + CLOSE_MARGIN + answer_tokens


def sample(get_engine, prompts: list[Prompt], where: Path, req: Request, *, encode, seed_key: tuple, chunk_size: int,
           budget: int | None, min_tokens: int, answer_tokens: int, answer_prefix: str = "", desc: str = ""):
    """(outputs, thought, parts): per prompt an Output whose completions are the whole responses (think block,
    closing tag, answer), `thought[i][j]` = {thinking_tokens, waits, budget_hit} of sample j, and every phase's
    chunk files. outputs is None when a phase had failed requests (they are retried by a rerun)."""
    s = req.sampling
    cap = budget or s.max_tokens
    end = f"</{req.think_tag}>"
    phase = lambda max_tokens, stop: dataclasses.replace(  # noqa: E731
        req, sampling=dataclasses.replace(s, n=1, max_tokens=max_tokens, stop=stop))
    # think: n samples per prompt, cut at the budget and at the end of the think block
    think = dataclasses.replace(req, sampling=dataclasses.replace(s, max_tokens=cap, stop=[*s.stop, end]))
    parts = engine.sample_in_chunks(get_engine, prompts, where / "think", think, seed_key=(*seed_key, "think"),
                                    chunk_size=chunk_size, to_rows=pieces, desc=f"{desc}: thinking")
    if failed(parts):
        return None, None, parts
    state = {(r["i"], r["j"]): {"text": r["text"], "tokens": r["tokens"], "finish": r["finish"], "waits": 0}
             for r in store.read_parquet(parts).to_list()}
    wait_ids = len(encode(WAIT))
    for wait in range(1, MAX_WAITS + 1):  # s1: a block that ended too soon goes on after "Wait", within the budget
        room = {key: cap - st["tokens"] - wait_ids for key, st in state.items()
                if st["finish"] != "length" and st["tokens"] < min_tokens}
        short = [key for key, left in room.items() if left >= 1]
        if not short:
            break
        cont = [Prompt(f"{i}.{j}", prompts[i].token_ids + encode(state[(i, j)]["text"] + WAIT)) for i, j in short]
        more = engine.sample_in_chunks(get_engine, cont, where / f"wait-{wait}",
                                       phase(max(room[key] for key in short), [*s.stop, end]),
                                       seed_key=(*seed_key, "wait", wait), chunk_size=chunk_size, to_rows=pieces,
                                       desc=f"{desc}: Wait {wait}")
        parts += more
        if failed(more):
            return None, None, parts
        for r in store.read_parquet(more).to_list():
            key = short[r["i"]]
            text, tokens, finish = r["text"], r["tokens"], r["finish"]
            if tokens > room[key]:  # past this block's own budget (the phase ran to the largest): cut to it
                text, tokens, finish = decode_prefix(encode, text, room[key]), room[key], "length"
            st = state[key]
            st.update(text=st["text"] + WAIT + text, tokens=st["tokens"] + wait_ids + tokens, finish=finish, waits=wait)
    # answer: every think block closed, the answer sampled after it
    keys = sorted(state)
    shut = close(req.think_tag) + answer_prefix
    answers = [Prompt(f"{i}.{j}", prompts[i].token_ids + encode(state[(i, j)]["text"] + shut)) for i, j in keys]
    more = engine.sample_in_chunks(get_engine, answers, where / "answer", phase(answer_tokens, list(s.stop)),
                                   seed_key=(*seed_key, "answer"), chunk_size=chunk_size, to_rows=pieces,
                                   desc=f"{desc}: answers")
    parts += more
    if failed(more):
        return None, None, parts
    outputs = [Output([None] * s.n, len(p.token_ids or [])) for p in prompts]
    thought = [[None] * s.n for _ in prompts]
    for r in store.read_parquet(more).to_list():
        (i, j), st = keys[r["i"]], state[keys[r["i"]]]
        outputs[i].completions[j] = Completion(st["text"] + shut + r["text"], r["finish"], st["tokens"] + r["tokens"])
        thought[i][j] = {"thinking_tokens": st["tokens"], "waits": st["waits"], "budget_hit": st["finish"] == "length"}
    return outputs, thought, parts


def pieces(i: int, output: Output) -> list[dict]:
    """A phase's rows: prompt i's samples, as text with their token counts and finish reasons."""
    return [{"i": i, "j": j, "text": c.text, "tokens": c.tokens, "finish": c.finish_reason}
            for j, c in enumerate(output.completions)]


def decode_prefix(encode, text: str, tokens: int) -> str:
    """The longest prefix of `text` that encodes to at most `tokens` tokens (by characters: no tokenizer decode)."""
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(encode(text[:mid])) <= tokens:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


def failed(parts: list[Path]) -> bool:
    return any(json.loads(p.with_suffix(".json").read_text()).get("failed") for p in parts)
