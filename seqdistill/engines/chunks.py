"""The one sampling loop: prompts sampled in chunks, each chunk written whole (rows, then a sidecar that marks it
done), so a rerun skips finished chunks and draws what an uninterrupted run would have drawn."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Callable

from seqdistill.engines.api import Budget, OpenAIEngine
from seqdistill.config import first_line
from seqdistill.engines.ranks import DataParallel
from seqdistill.engines.sampling import EngineConfig, Output, Prompt, Request, prompts_digest
from seqdistill import store

log = logging.getLogger(__name__)

def sample_in_chunks(get_engine, prompts: list[Prompt], where: Path, req: Request, *, seed_key: tuple, chunk_size: int,
                     to_rows: Callable[[int, Output], list[dict]], features=None, desc: str = "") -> list[Path]:
    """Sample every prompt in chunks of `chunk_size`; each chunk's rows go to where/chunk-K.parquet.

    `get_engine()` gives the engine (see `lazy`); `to_rows(i, output)` turns prompt i's output into rows. A chunk is done when its sidecar
    (chunk-K.json: rows, seconds, tokens, usage, failures) matches its Parquet file; a chunk with
    failed requests is written with what succeeded and redone (only the failures) on the next run.
    Returns the chunk files, in order."""

    chunks = [range(i, min(i + chunk_size, len(prompts))) for i in range(0, len(prompts), chunk_size)]
    parts = [where / f"chunk-{k:05d}.parquet" for k in range(len(chunks))]
    store.remove_stale_temps(where)
    digests = [prompts_digest([prompts[i] for i in idx]) for idx in chunks]
    todo = [k for k in range(len(chunks)) if not chunk_done(parts[k], digests[k])]
    log.info("%s%d prompts in %d chunks, %d to sample", f"{desc}: " if desc else "", len(prompts), len(chunks), len(todo))
    failed = 0
    # a chunk's seed key is (seed_key, k): a resumed chunk, or one drawn by another rank, draws the same
    jobs = [(k, (*seed_key, k), [prompts[i] for i in chunks[k]]) for k in todo]
    if todo and isinstance(eng := get_engine(), OpenAIEngine):  # paid requests: the estimate, and the limits
        earlier = [json.loads(parts[k].with_suffix(".json").read_text()).get("usage") or {}
                   for k in sorted(set(range(len(chunks))) - set(todo))]
        eng.plan(jobs, req, [parts[k].with_suffix(".journal.jsonl") for k in todo], earlier)
    # closed on the way out: a server's requests still in flight are cancelled, not left running
    with contextlib.closing(chunk_outputs(get_engine, jobs, req, parts)) as chunked:
        for k, outputs, seconds, usage in chunked:
            idx = chunks[k]
            journal = parts[k].with_suffix(".journal.jsonl")
            rows = [row for i, out in zip(idx, outputs) if out.error is None for row in to_rows(i, out)]
            errors = {prompts[i].key: {"requests": out.failed or 1, "error": out.error}
                      for i, out in zip(idx, outputs) if out.error is not None}
            sidecar = {"rows": len(rows), "prompts": digests[k], "seconds": seconds,
                       "tokens": sum(c.tokens for o in outputs for c in o.completions),
                       "usage": usage, "failed": errors}
            store.write_parquet(rows, parts[k], features=features)
            store.write_text(parts[k].with_suffix(".json"), json.dumps(sidecar))  # written last: marks the chunk
            if errors:
                failed += sum(e["requests"] for e in errors.values())
                log.warning("chunk %d/%d: requests for %d prompts failed after retries (first: %s); rerun to retry "
                            "only those", k + 1, len(chunks), len(errors), next(iter(errors.values()))["error"])
            else:
                journal.unlink(missing_ok=True)
            # a server's chunk answered while the one before it finished its stragglers took no time of its own
            rate = f"{sidecar['tokens'] / seconds:.0f} generated tok/s" if seconds else "answered beside the chunk before"
            log.info("chunk %d/%d done: %d rows, %s", k + 1, len(chunks), len(rows), rate)
    if failed:
        log.warning("%d requests failed; their problems are missing from this result until a rerun succeeds", failed)
    return parts


def chunk_outputs(get_engine, jobs: list[tuple], req: Request, parts: list[Path]):
    """(k, outputs, seconds, usage) per job (k, seed key, prompts): one engine chunk after chunk, data-parallel
    ranks side by side (in the order they finish), or a server's requests flowing from chunk to chunk (in order)."""
    if not jobs:
        return
    eng = get_engine()
    if isinstance(eng, DataParallel):
        yield from eng.sample_chunks(jobs, req)
        return
    if isinstance(eng, OpenAIEngine) and not eng.cfg.batch:  # a batch is sent and awaited chunk by chunk, below
        yield from eng.sample_chunks(jobs, req, [parts[k].with_suffix(".journal.jsonl") for k, _, _ in jobs])
        return
    for k, key, batch in jobs:
        eng.start_chunk(*key)
        start = time.perf_counter()
        outputs = eng.sample(batch, req, journal=parts[k].with_suffix(".journal.jsonl"))
        yield k, outputs, time.perf_counter() - start, eng.usage_of(outputs)


def chunk_done(part: Path, digest: str) -> bool:
    """A chunk is reused only when whole (its row count matches its sidecar), for the same prompts, with no failures."""
    sidecar = part.with_suffix(".json")
    if not (part.is_file() and sidecar.is_file()):
        return False
    try:
        meta = json.loads(sidecar.read_text())
        import pyarrow.parquet as pq

        rows = pq.read_metadata(part).num_rows
    except Exception as e:  # a torn or foreign file: set it aside, sample the chunk again
        log.warning("%s is unreadable (%s); setting it aside and sampling that chunk again", part, first_line(e))
        part.replace(part.with_suffix(".parquet.bad"))
        return False
    if rows != meta.get("rows", rows):
        log.warning("%s holds %d rows, its sidecar says %d; sampling that chunk again", part, rows, meta["rows"])
        return False
    if meta.get("prompts") != digest:
        log.warning("%s was sampled from other prompts (an edited problem file, template or dataset); sampling it again",
                    part)
        return False
    return not meta.get("failed")


def chunk_summary(parts: list[Path], cfg: EngineConfig) -> dict:
    """Seconds, generated tokens and (server backend) requests, retries, errors, tokens and cost of all chunks."""
    metas = [json.loads(p.with_suffix(".json").read_text()) for p in parts if p.with_suffix(".json").is_file()]
    out = {"seconds": sum(m["seconds"] for m in metas), "tokens": sum(m.get("tokens", 0) for m in metas),
           "failed_requests": sum(e["requests"] for m in metas for e in (m.get("failed") or {}).values())}
    usage: dict = {}
    for m in metas:
        for key, value in (m.get("usage") or {}).items():
            usage[key] = usage.get(key, 0) + value
    if usage:
        if cfg.prices():
            usage["cost"] = round(Budget(cfg, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)).cost(), 4)
        out["usage"] = usage
    return out
