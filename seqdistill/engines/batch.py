"""The batch backend (`engine.batch: true`): each chunk's requests sent through an OpenAI-style batch API
(`/v1/files` + `/v1/batches`), answered within 24 hours at the batch price (`engine.batch_discount`).

A chunk's requests, the very bodies the openai backend sends (seeds included), go up as one JSONL file, one line per
(problem, sample) with its journal key as `custom_id`; a batch is created on it and polled with back-off until it
ends, and its answers are journaled exactly as the openai backend journals them, so the chunk is written the same way.
The batch is recorded in chunk-K.batch.json before the first poll: a killed run polls that batch again instead of
submitting the chunk twice (one killed between creating the batch and recording it finds the batch by its input
file). Requests an expired or partly failed batch left unanswered go into a new batch of only them, up to
`max_retries` times; a 4xx for one request is recorded as failed and not resubmitted, as the openai backend does.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import os
import random
from pathlib import Path

from seqdistill import store
from seqdistill.config import ConfigError
from seqdistill.engines.api import OpenAIEngine, Retry, open_journal, retry_after
from seqdistill.engines.sampling import Prompt, Request

log = logging.getLogger(__name__)
ENDED = ("completed", "failed", "expired", "cancelled")
WINDOW = "24h"  # the one completion window OpenAI's batch API takes
LONGEST_POLL = 600.0  # seconds: status checks back off up to this


class BatchEngine(OpenAIEngine):
    """The openai backend with each chunk's requests delivered as batches (its `sample`, journal and plan are kept)."""

    async def send_all(self, todo, req: Request, journal: Path | None, fp: str, records: dict) -> None:
        import httpx
        from tqdm.auto import tqdm

        where = journal.with_name(journal.name.replace(".journal.jsonl", ".batch.json")) if journal else None
        errors, refused = collections.Counter(), set()
        sink = open_journal(journal) if journal else None
        bar = tqdm(total=len(todo), desc="batch requests", unit="req")
        try:
            async with httpx.AsyncClient(timeout=self.cfg.timeout, headers=self.headers()) as client:
                for _ in range(self.cfg.max_retries + 1):
                    left = [(p, j) for p, j in todo if not records.get(f"{p.key}/{j}", {}).get("ok")
                            and f"{p.key}/{j}" not in refused]
                    batch = await self.resume(client, where, fp)
                    if batch is None:
                        if not left:
                            break
                        if self.budget and self.budget.beyond(strict=False):
                            self.budget.held += len(left)  # not submitted; sample() says which limit
                            break
                        batch = await self.submit(client, left, req, where, fp)
                    batch = await self.wait(client, batch, bar, len(todo) - len(left))
                    answers = await self.results(client, batch)
                    for p, j in left:
                        key = f"{p.key}/{j}"
                        record, final = self.record(answers.get(key), req, batch)
                        errors[key] += not record["ok"]
                        record.update(retries=errors[key] - (not record["ok"]), errors=errors[key], key=key, fp=fp)
                        records[key] = record
                        if final and not record["ok"]:
                            refused.add(key)
                        if self.budget and record["ok"]:
                            self.budget.add(record)
                        if sink:
                            sink.write(json.dumps(record) + "\n")
                    if sink:
                        sink.flush()
                        os.fsync(sink.fileno())  # the answers are safe: the batch need not be polled again
                    if where:
                        where.unlink(missing_ok=True)
                    bar.n = sum(1 for p, j in todo if records.get(f"{p.key}/{j}", {}).get("ok"))
                    bar.refresh()
                    if batch["status"] in ("failed", "cancelled"):
                        raise ConfigError(f"batch {batch['id']} {batch['status']}{ended_why(batch)}; its answers are "
                                          "kept, rerun the same command to submit the requests left")
        finally:
            bar.close()
            if sink:
                sink.close()

    # ------------------------------------------------------------ one batch

    async def submit(self, client, left: list[tuple[Prompt, int]], req: Request, where: Path | None, fp: str) -> dict:
        """Upload the requests as JSONL and create a batch on them; recorded at each step, before it is polled."""
        lines = []
        for p, j in left:
            path, body = self.body(p, j, req)
            lines.append(json.dumps({"custom_id": f"{p.key}/{j}", "method": "POST", "url": f"/v1{path}", "body": body}))
        endpoint = f"/v1{self.body(*left[0], req)[0]}"
        name = where.with_suffix(".jsonl").name if where else "requests.jsonl"
        upload = await self.call(client, "POST", "/files", data={"purpose": "batch"},
                                 files={"file": (name, ("\n".join(lines) + "\n").encode(), "application/jsonl")})
        record = {"fp": fp, "base_url": self.replicas[0]["url"], "endpoint": endpoint, "input_file_id": upload.json()["id"]}
        self.write_record(where, record)  # a run killed while creating the batch finds it by this file
        batch = await self.create(client, record)
        self.write_record(where, record | {"batch_id": batch["id"], "requests": len(left)})
        log.info("batch %s submitted: %d requests", batch["id"], len(left))
        return batch

    async def resume(self, client, where: Path | None, fp: str) -> dict | None:
        """The batch a killed run submitted for this chunk; None when there is none for these settings."""
        if not (where and where.is_file()):
            return None
        record = store.read_json(where, "remove it to submit the chunk's requests again")
        if record.get("fp") != fp or record.get("base_url") != self.replicas[0]["url"]:
            log.warning("%s records a batch for other settings or another server; submitting the chunk anew", where)
            where.unlink()
            return None
        if "batch_id" in record:
            log.info("resuming batch %s (recorded in %s)", record["batch_id"], where.name)
            return (await self.call(client, "GET", f"/batches/{record['batch_id']}")).json()
        batch = await self.find(client, record["input_file_id"]) or await self.create(client, record)
        self.write_record(where, record | {"batch_id": batch["id"]})
        return batch

    async def create(self, client, record: dict) -> dict:
        """POST /batches; after an answer that never came, the batch it may have created is looked for first."""
        for attempt in range(self.cfg.max_retries + 1):
            if attempt and (batch := await self.find(client, record["input_file_id"])):
                return batch
            try:
                resp = await self.call_once(client, "POST", "/batches", json={
                    "input_file_id": record["input_file_id"], "endpoint": record["endpoint"], "completion_window": WINDOW})
                return resp.json()
            except Retry as e:
                await self.back_off(attempt, e, "POST /batches")
        raise ConfigError(f"POST {self.replicas[0]['url']}/batches failed {self.cfg.max_retries + 1} times; rerun the "
                          "same command to try again (its input file is recorded)")

    async def find(self, client, input_file_id: str) -> dict | None:
        """The batch created on this input file, among the newest 100 (where one created moments ago is)."""
        batches = (await self.call(client, "GET", "/batches", params={"limit": 100})).json().get("data") or []
        return next((b for b in batches if b.get("input_file_id") == input_file_id), None)

    async def wait(self, client, batch: dict, bar, done_before: int) -> dict:
        """Poll until the batch ends: the first check after engine.batch_poll seconds, each wait doubling."""
        status = None
        for i in itertools.count():
            if batch["status"] != status:
                status = batch["status"]
                log.info("batch %s: %s", batch["id"], status)
            counts = batch.get("request_counts") or {}
            bar.n = done_before + (counts.get("completed") or 0)
            bar.refresh()
            if status in ENDED:
                return batch
            await asyncio.sleep(min(self.cfg.batch_poll * 2 ** min(i, 20), max(self.cfg.batch_poll, LONGEST_POLL)))
            batch = (await self.call(client, "GET", f"/batches/{batch['id']}")).json()

    async def results(self, client, batch: dict) -> dict[str, dict]:
        """custom_id -> its line in the batch's output and error files (a line that does not parse is no answer)."""
        lines = {}
        for name in ("output_file_id", "error_file_id"):
            if batch.get(name):
                for line in (await self.call(client, "GET", f"/files/{batch[name]}/content")).text.splitlines():
                    try:
                        item = json.loads(line)
                        lines[item["custom_id"]] = item
                    except (ValueError, KeyError, TypeError):
                        continue
        return lines

    def record(self, item: dict | None, req: Request, batch: dict) -> tuple[dict, bool]:
        """A request's journal record from its line of an ended batch, and whether it is final (answered, or refused
        by a 4xx that no resubmission would pass)."""
        if item is None:
            return {"ok": False, "error": f"batch {batch['id']} {batch['status']} without answering it"}, False
        response = item.get("response") or {}
        status = response.get("status_code") or 0
        if status == 200 and not item.get("error"):
            try:
                return {"ok": True, **self.parse(response.get("body") or {}, req)}, True
            except ConfigError:  # the API can't give what the run needs: resubmitting would pay again for nothing
                raise
            except (Retry, KeyError, TypeError, IndexError, AttributeError, ValueError) as e:
                return {"ok": False, "error": f"a malformed answer ({type(e).__name__}: {e})"}, False
        body = response.get("body")
        detail = (item.get("error") or {}).get("message")
        if not detail and isinstance(body, dict) and isinstance(body.get("error"), dict):
            detail = body["error"].get("message")
        detail = detail or json.dumps(body)[:200]
        if 400 <= status < 500 and status not in (408, 429):
            return {"ok": False, "error": f"the server refused the request ({status}): {detail}"}, True
        return {"ok": False, "error": f"HTTP {status or 'error'}: {detail}"}, False

    def write_record(self, where: Path | None, record: dict) -> None:
        if where:
            store.write_text(where, json.dumps(record))

    # ------------------------------------------------------------ calls to the batch API

    async def call(self, client, method: str, path: str, **kwargs):
        """One batch-API call, retried as the openai backend retries a request."""
        for attempt in range(self.cfg.max_retries + 1):
            try:
                return await self.call_once(client, method, path, **kwargs)
            except Retry as e:
                await self.back_off(attempt, e, f"{method} {path}")
        raise ConfigError(f"{method} {self.replicas[0]['url']}{path} failed {self.cfg.max_retries + 1} times; rerun "
                          "the same command to continue (a submitted batch is recorded and polled again)")

    async def call_once(self, client, method: str, path: str, **kwargs):
        """The response of a call that succeeded; Retry for what may pass, ConfigError for what won't."""
        import httpx

        url = f"{self.replicas[0]['url']}{path}"
        try:
            resp = await client.request(method, url, **kwargs)
        except (httpx.TimeoutException, httpx.TransportError) as e:
            raise Retry(f"{type(e).__name__}: {e or 'no detail'}") from e
        status = resp.status_code
        if status in (408, 429) or status >= 500:
            raise Retry(f"HTTP {status}: {resp.text[:200]}", after=retry_after(resp))
        if status in (401, 403):
            raise ConfigError(f"{url} refused {self.key_hint()} ({status}); check the key and that it may use the batch API")
        if status >= 400:
            hint = "; does this server have a batch API? (vllm serve has none: set engine.batch: false)" if status == 404 else ""
            raise ConfigError(f"{method} {url} answered {status}: {' '.join(resp.text[:300].split())}{hint}")
        return resp

    async def back_off(self, attempt: int, e: Retry, what: str) -> None:
        if attempt < self.cfg.max_retries:
            delay = e.after if e.after is not None else self.cfg.retry_backoff * 2 ** attempt * random.uniform(0.5, 1.5)
            log.debug("%s: %s; retrying in %.1f s", what, e, delay)
            await asyncio.sleep(min(delay, 300.0))


def ended_why(batch: dict) -> str:
    """A failed batch's reasons (the server refused its input file), as one clause."""
    data = (batch.get("errors") or {}).get("data") or []
    return f" ({'; '.join(str(e.get('message')) for e in data[:3])})" if data else ""
