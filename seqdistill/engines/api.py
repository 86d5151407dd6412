"""The OpenAI-compatible backend: any `vllm serve`, SGLang or hosted API, one replica or a fleet.

One request per (problem, sample), with a seed derived from both, so resumes and retries are
exact (`samples_per_request` above 1: one request for several samples of a problem, the API's `n`, its prompt
billed once, with its first sample's seed; each sample is still journaled on its own). Answers are journaled
as they arrive (one JSON line each, flushed to the OS), so a run
killed at any moment, SIGKILL included, sends no answered request again. Requests are spread over
the replicas in `base_url`; a replica that fails is skipped until its back-off has passed. 429,
5xx, timeouts, dropped connections and malformed answers are retried with exponential back-off and
jitter (`Retry-After` wins); 401/403/404 stop the run with one line (nothing retried would
succeed), and a 400 for one request (a content filter, a prompt too long) records that request as
failed. The API key, and the values of `headers`, are read from the environment variables the config
names and never written. The chunks' requests flow through one event loop (`sample_chunks`): the next chunk's requests
start while a chunk's stragglers finish, and each chunk is still handed back whole, in order.
Before the first request the run's size and cost are estimated (`plan`); `max_cost` / `max_tokens_total`
refuse a run whose lower estimate is over them and stop one that reaches them (`Budget`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import hashlib
import json
import logging
import os
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from seqdistill.config import ConfigError
from seqdistill.engines.sampling import Completion, EngineConfig, Output, Prompt, Request, chunk_seed, prompts_digest
from seqdistill.engines.topk import LOGPROB_FLOOR

log = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
# chunks sent past the oldest one not yet written: room for its stragglers, with at most this many + 1 chunks' answers
# held in memory however slowly the caller writes (verifies) them
LOOKAHEAD = 2


class Retry(Exception):
    """A failure worth another try; `after` is the server's Retry-After, `down` marks the replica unhealthy."""

    def __init__(self, message: str, after: float | None = None, down: bool = False):
        super().__init__(message)
        self.after, self.down = after, down


class Refused(Exception):
    """A 4xx for this one request (a content filter, a prompt too long): not retried, recorded as failed."""


class OpenAIEngine:
    def __init__(self, model: str, cfg: EngineConfig):
        self.model, self.cfg = model, cfg
        self.key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        if cfg.api_key_env and not self.key:
            raise ConfigError(f"engine.api_key_env names {cfg.api_key_env}, which is not set: export {cfg.api_key_env}=...")
        for name, env in cfg.headers.items():
            if not os.environ.get(env):
                raise ConfigError(f"engine.headers.{name} names {env}, which is not set: export {env}=...")
        self.replicas = [{"url": str(u).rstrip("/"), "down_until": 0.0, "fails": 0, "inflight": 0} for u in cfg.base_url]
        self.usage: collections.Counter = collections.Counter()
        self.pace = {"next": 0.0, "window": collections.deque(), "lock": None}
        self.budget: Budget | None = None  # set by `plan`

    def start_chunk(self, *key) -> None:
        pass  # every request carries its own seed (see `body`)

    def headers(self) -> dict:
        """The key as a bearer token, and engine.headers with their values read from the environment now."""
        own = {name: os.environ[env] for name, env in self.cfg.headers.items()}
        return ({"Authorization": f"Bearer {self.key}"} if self.key else {}) | own

    def key_hint(self) -> str:
        return f"the key in ${self.cfg.api_key_env}" if self.cfg.api_key_env else "no key (set engine.api_key_env)"

    # ------------------------------------------------------------ before any sampling request

    def check(self, prompts: dict[str, list[Prompt]], max_tokens: int) -> None:
        """Every replica reachable, the key accepted, the model served, and (vLLM) the context long enough."""
        import httpx

        problems, served = [], {}
        with httpx.Client(timeout=min(self.cfg.timeout, 30.0), headers=self.headers()) as client:
            for r in self.replicas:
                url = f"{r['url']}/models"
                try:
                    resp = client.get(url)
                except httpx.HTTPError as e:
                    problems.append(f"cannot reach {url} ({type(e).__name__}: {e}); is the server running there?")
                    continue
                if resp.status_code in (401, 403):
                    raise ConfigError(f"{url} refused {self.key_hint()} ({resp.status_code}); check the key and "
                                      "that it may use this model")
                if resp.status_code != 200:
                    problems.append(f"{url} answered {resp.status_code}: {resp.text[:200]}")
                    continue
                try:
                    entries = {m["id"]: m for m in resp.json()["data"]}
                except (ValueError, KeyError, TypeError):
                    problems.append(f"{url} did not answer with an OpenAI model list; is base_url the /v1 root?")
                    continue
                if self.model not in entries:
                    raise ConfigError(f"model {self.model!r} is not served at {r['url']}; it serves: "
                                      f"{', '.join(entries) or 'nothing'} (set engine.served_model or the stage's model)")
                served[r["url"]] = entries[self.model]
            if not served:
                raise ConfigError("; ".join(problems))
            for p in problems:
                log.warning("%s; requests go to the other replicas until it answers", p)
            url, entry = next(iter(served.items()))
            if entry.get("max_model_len"):
                longest = max(self.prompt_length(client, url, longest_of(group)) for group in prompts.values() if group)
                if longest + max_tokens > entry["max_model_len"]:
                    raise ConfigError(f"the longest prompt ({longest} tokens) + sampling.max_tokens ({max_tokens}) exceeds "
                                      f"the server's context ({entry['max_model_len']}); lower sampling.max_tokens or "
                                      "start the server with a larger --max-model-len")

    def prompt_length(self, client, url: str, p: Prompt) -> int:
        if p.token_ids is not None:
            return len(p.token_ids)
        resp = client.post(f"{url.removesuffix('/v1')}/tokenize", json={"model": self.model, "messages": p.messages})
        return resp.json().get("count", 0) if resp.status_code == 200 else 0  # not vLLM: the server will say

    def plan(self, jobs: list[tuple], req: Request, journals: list[Path], earlier: list[dict]) -> None:
        """Before the first request: log the estimate, refuse a run whose lower end is over a limit, and set the
        budget the requests spend (`sample_chunks`, `sample`). `jobs` are the chunks to sample (k, seed key, prompts), `journals` theirs,
        `earlier` the usage of the finished chunks (what earlier runs spent)."""
        spent = Budget(self.cfg, sum(u.get("prompt_tokens", 0) for u in earlier),
                       sum(u.get("completion_tokens", 0) for u in earlier))
        answered = sum(u.get("answers", u.get("requests", 0) - u.get("errors", 0)) for u in earlier)
        left, sends = [], []  # the samples to ask for, and the prompt of each request that asks for them
        for (_, _, batch), journal in zip(jobs, journals):
            _, records, todo = self.pending(batch, req, journal)
            for r in records.values():
                if r.get("ok"):
                    spent.add(r)
                    answered += 1
            left += [p for p, _ in todo]
            sends += [p for p, _ in self.grouped(todo)]
        chat = any(p.token_ids is None for p in left)
        # chat prompts are rendered by the server: about 4 characters a token, template not counted; once a request
        prompt = sum(len(p.token_ids) if p.token_ids is not None else
                     -(-sum(len(str(m.get("content") or "")) for m in p.messages) // 4) for p in sends)
        mean = spent.completion_tokens / answered if answered else 1  # a finished answer has at least one token
        low = Budget(self.cfg, spent.prompt_tokens + prompt, spent.completion_tokens + round(len(left) * mean))
        bound = 1 if req.prompt_logprobs_k else req.sampling.max_tokens  # score asks for one token
        high = Budget(self.cfg, spent.prompt_tokens + prompt, spent.completion_tokens + len(left) * bound)
        asked = f"{len(sends)} requests ({len(left)} samples)" if len(sends) < len(left) else f"{len(left)} requests"
        line = (f"estimate: {asked} for {len({p.key for p in left})} prompts, ~{prompt} prompt tokens "
                f"({'characters/4' if chat else 'token ids counted'}), completion between "
                f"{low.completion_tokens - spent.completion_tokens} and {high.completion_tokens - spent.completion_tokens} "
                f"tokens (from {f'the mean {mean:.0f} of {answered} answers so far' if answered else '1'} to {bound} "
                f"each)")
        if spent.priced():
            line += f", total cost between {money(low.cost())} and {money(high.cost())}"
        if answered:
            line += f"; spent so far {spent.spent()}"
        if spent.limits():
            line += f"; limit {spent.limits()}"
        log.info("%s", line)
        over = left and low.beyond(strict=True)
        if over:
            raise ConfigError(f"{line}: even the lower estimate is over {over}; raise it, or sample fewer problems or "
                              "samples (problems.num_problems, sampling.n)")
        self.budget = spent if spent.limits() else None

    # ------------------------------------------------------------ sampling

    def pending(self, prompts: list[Prompt], req: Request, journal: Path | None) -> tuple[str, dict, list]:
        """(journal fingerprint, journaled answers, (prompt, sample) requests still to send) of a chunk."""
        fp = f"{self.fingerprint(req)}-{prompts_digest(prompts)}"  # answers of these very prompts, these settings
        records = read_journal(journal, fp) if journal else {}
        todo = [(p, j) for p in prompts for j in range(req.sampling.n) if not records.get(f"{p.key}/{j}", {}).get("ok")]
        return fp, records, todo

    def fingerprint(self, req: Request) -> str:
        what = [self.model, asdict(req.sampling), req.logprobs_k, req.prompt_logprobs_k, self.cfg.api,
                self.cfg.extra_body, self.cfg.seed]
        if self.cfg.samples_per_request > 1:  # other seeds, other samples (1 keeps the fingerprints it always had)
            what.append(["samples_per_request", self.cfg.samples_per_request])
        return hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def grouped(self, todo: list[tuple[Prompt, int]]) -> list[tuple[Prompt, list[int]]]:
        """The requests that ask for `todo`'s (prompt, sample)s: (prompt, its samples), up to samples_per_request
        of a prompt's samples each (`todo` lists a prompt's samples together, in order)."""
        most, groups = self.cfg.samples_per_request, []
        for p, j in todo:
            if groups and groups[-1][0] is p and len(groups[-1][1]) < most:
                groups[-1][1].append(j)
            else:
                groups.append((p, [j]))
        return groups

    def sample(self, prompts: list[Prompt], req: Request, journal: Path | None = None) -> list[Output]:
        """One chunk's outputs (the batch backend's unit; the chunk loop gives a plain server `sample_chunks`)."""
        fp, records, todo = self.pending(prompts, req, journal)
        log_resumed(len(prompts) * req.sampling.n, len(todo))
        if todo:
            asyncio.run(self.send_all(todo, req, journal, fp, records))
        self.stop_if_spent()
        outputs, self.usage = outputs_of(prompts, records, req.sampling.n)
        return outputs

    def send(self, todo: list[tuple[Prompt, int]], req: Request, journal: Path, fp: str) -> dict:
        """(prompt, sample) requests whose answer `journal` does not hold under `fp` yet, sent and journaled as each
        arrives; returns every record of `fp` in it by PROMPT/SAMPLE key. Unlike a chunk's, the fingerprint is the
        caller's, so an answer is reused by any later call with the same `fp` (the LLM judge's cache)."""
        records = read_journal(journal, fp)
        todo = [(p, j) for p, j in todo if not records.get(f"{p.key}/{j}", {}).get("ok")]
        if todo:
            asyncio.run(self.send_all(todo, req, journal, fp, records))
        return records

    def usage_of(self, outputs) -> dict:
        return dict(self.usage)

    def stop_if_spent(self) -> None:
        if self.budget and self.budget.held:  # the answers are journaled: a rerun sends only the rest
            raise ConfigError(f"{self.budget.beyond(strict=False)} reached: {self.budget.spent()} spent, the requests "
                              "in flight finished and every answer is kept; raise the limit and rerun the same "
                              "command to continue")

    def sample_chunks(self, jobs: list[tuple], req: Request, journals: list[Path]):
        """(k, outputs, seconds, usage) per job (k, seed key, prompts), in job order, each as its last answer is in.

        All the chunks' requests go through one event loop, in a thread of its own, under one max_concurrency limit
        and in chunk order: a chunk's stragglers hold a few slots while the next chunk's requests take the rest, so
        the server never drains at a chunk boundary, nor while the caller writes a chunk. `seconds` share the wall
        time out: from the previous chunk's last answer (or the start) to this one's."""
        from tqdm.auto import tqdm

        chunks = [Chunk(k, batch, journal, *self.pending(batch, req, journal))
                  for (k, _, batch), journal in zip(jobs, journals)]
        log_resumed(sum(len(c.prompts) for c in chunks) * req.sampling.n, sum(len(c.todo) for c in chunks))
        bar = tqdm(total=sum(len(self.grouped(c.todo)) for c in chunks), desc="requests", unit="req")
        loop, failed = asyncio.new_event_loop(), []
        main = loop.create_task(self.send_chunks(chunks, req, bar))

        def run() -> None:
            try:
                loop.run_until_complete(main)
            except BaseException as e:  # a refused key, a wrong URL; or cancelled, the caller having stopped
                failed.append(e)
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()
                for c in chunks:
                    c.done.set()  # no chunk is waited for that will not come

        thread = threading.Thread(target=run, name="seqdistill-requests", daemon=True)
        thread.start()
        last = time.perf_counter()
        try:
            for c in chunks:
                c.done.wait()
                if not c.complete:
                    thread.join()
                    raise failed[0]
                if c.held:  # a spending limit stopped the sending: the requests in flight finish, then the run
                    thread.join()
                    self.stop_if_spent()
                outputs, usage = outputs_of(c.prompts, c.records, req.sampling.n)
                seconds, last = max(0.0, c.done_at - last), max(last, c.done_at)
                yield c.k, outputs, seconds, usage
                c.records = {}  # written: its answers need not be held
                with contextlib.suppress(RuntimeError):  # the loop has ended: every request is in
                    loop.call_soon_threadsafe(c.written.set)
        finally:
            if thread.is_alive():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(main.cancel)
            thread.join()
            bar.close()

    async def send_all(self, todo, req: Request, journal: Path | None, fp: str, records: dict) -> None:
        """One chunk's requests (`sample`; the batch backend sends them its own way)."""
        from tqdm.auto import tqdm

        bar = tqdm(total=len(self.grouped(todo)), desc="requests", unit="req")
        try:
            await self.send_chunks([Chunk(0, [], journal, fp, records, todo)], req, bar)
        finally:
            bar.close()

    async def send_chunks(self, chunks: list[Chunk], req: Request, bar) -> None:
        """Send the chunks' requests in order with at most max_concurrency in flight over all of them, journaling
        each answer as it arrives; a chunk is sent only once the one LOOKAHEAD before it is written. A request that
        stops the run (a refused key) cancels the others; a reached spending limit stops the sending."""
        import httpx

        gate = asyncio.Semaphore(self.cfg.max_concurrency)
        self.pace["lock"] = asyncio.Lock()  # one per event loop; the pacing itself spans chunks
        limits = httpx.Limits(max_connections=self.cfg.max_concurrency, max_keepalive_connections=self.cfg.max_concurrency)
        sender, tasks, failed = asyncio.current_task(), set(), []  # tasks: the requests in flight
        try:
            async with httpx.AsyncClient(timeout=self.cfg.timeout, headers=self.headers(), limits=limits) as client:
                async def one(c: Chunk, p: Prompt, js: list[int]):
                    try:
                        records = await self.request_samples(client, p, js, req)
                    except Exception as e:  # what stops one request here stops them all (sender raises it)
                        failed.append(e)
                        sender.cancel()
                        return
                    finally:
                        gate.release()
                    for j, record in zip(js, records):  # one record a sample: resume and outputs_of see no groups
                        record.update(key=f"{p.key}/{j}", fp=c.fp)
                        c.records[record["key"]] = record
                        if self.budget and record["ok"]:
                            self.budget.add(record)
                        if c.sink:
                            c.sink.write(json.dumps(record) + "\n")
                    if c.sink:
                        c.sink.flush()  # in the OS's hands: survives a SIGKILL of this process
                    bar.update()
                    c.left -= 1
                    c.finish()

                try:
                    for i, c in enumerate(chunks):
                        if i > LOOKAHEAD:
                            await chunks[i - LOOKAHEAD - 1].written.wait()
                        c.open()
                        groups = self.grouped(c.todo)
                        for sent, (p, js) in enumerate(groups):
                            await gate.acquire()
                            if self.budget and self.budget.beyond(strict=False):
                                gate.release()
                                c.held = len(groups) - sent  # not sent; those in flight finish
                                self.budget.held += c.held
                                break
                            c.left += 1
                            task = asyncio.ensure_future(one(c, p, js))
                            tasks.add(task)
                            task.add_done_callback(tasks.discard)
                        c.issued = True
                        c.finish()
                        if c.held:
                            break
                    await asyncio.gather(*tasks)
                except BaseException:
                    for t in list(tasks):
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    if failed:
                        raise failed[0] from None
                    raise
        finally:
            for c in chunks:
                c.close()

    async def request(self, client, p: Prompt, j: int, req: Request) -> dict:
        """One (problem, sample) request with retries: a journal record, ok or with its last error."""
        return (await self.request_samples(client, p, [j], req))[0]

    async def request_samples(self, client, p: Prompt, js: list[int], req: Request) -> list[dict]:
        """One request for samples `js` of a problem, with retries: a journal record a sample, all ok or all with
        the last error. The request's retries, errors and prompt tokens are on the first record; the others name
        it (`with`), so the usage counts each request, and the prompt billed, once."""
        path, body = self.body(p, js[0], req, len(js))
        first = f"{p.key}/{js[0]}"

        def each(record: dict, records: list[dict] | None = None) -> list[dict]:
            records = records or [{} for _ in js]
            return [record | r if i == 0 else {**record, "retries": 0, "errors": 0, **r, "with": first}
                    for i, r in enumerate(records)]

        errors = 0
        for attempt in range(self.cfg.max_retries + 1):
            await self.throttle()
            replica = await self.pick()
            replica["inflight"] += 1
            try:
                resp = await client.post(f"{replica['url']}{path}", json=body)
                data = self.answer(resp)
                try:
                    records = self.parse_samples(data, req, len(js))
                except ConfigError:  # a server that can't give what the run needs (log-probs as text): no retry helps
                    raise
                except (KeyError, TypeError, IndexError, AttributeError, ValueError) as e:
                    raise Retry(f"a malformed answer ({type(e).__name__}: {e})") from e
                replica["fails"] = 0
                self.window_add(sum(r["prompt_tokens"] + r["completion_tokens"] for r in records))
                return each({"ok": True, "retries": attempt, "errors": errors}, records)
            except Retry as e:
                error, after, down = str(e), e.after, e.down
            except Refused as e:  # this request will not pass however often it is sent: recorded, the run goes on
                return each({"ok": False, "refused": True, "retries": attempt, "errors": errors + 1, "error": str(e)})
            except Exception as e:
                import httpx

                if not isinstance(e, (httpx.TimeoutException, httpx.TransportError, httpx.DecodingError)):
                    raise
                error, after, down = f"{type(e).__name__}: {e or 'no detail'}", None, not isinstance(e, httpx.TimeoutException)
            finally:
                replica["inflight"] -= 1
            errors += 1
            delay = after if after is not None else self.cfg.retry_backoff * 2 ** attempt * random.uniform(0.5, 1.5)
            if down:
                replica["fails"] += 1
                replica["down_until"] = time.monotonic() + min(300.0, max(delay, min(30.0, 2.0 ** replica["fails"])))
            if attempt < self.cfg.max_retries:
                log.debug("request %s: %s; retrying in %.1f s", first, error, delay)
                await asyncio.sleep(min(delay, 300.0))
        return each({"ok": False, "retries": self.cfg.max_retries, "errors": errors, "error": error})

    def body(self, p: Prompt, j: int, req: Request, n: int = 1) -> tuple[str, dict]:
        """The request for `n` samples of `p` from sample `j` on, with sample j's seed."""
        s = req.sampling
        limit = self.cfg.max_tokens_field  # max_completion_tokens for APIs that refuse max_tokens
        body = {"model": self.model, "n": n, "temperature": s.temperature, "top_p": s.top_p, limit: s.max_tokens,
                "seed": chunk_seed(self.cfg.seed, p.key, j) & 0x7FFFFFFF}
        if s.stop:
            body["stop"] = s.stop
        if req.prompt_logprobs_k or self.cfg.api == "completions":
            path = "/completions"
            body["prompt"] = p.token_ids
            if req.prompt_logprobs_k:
                body.update({"prompt_logprobs": req.prompt_logprobs_k, limit: 1, "temperature": 0.0})
            if req.logprobs_k:
                body.update(logprobs=req.logprobs_k, return_tokens_as_token_ids=True)
        else:
            path = "/chat/completions"
            body["messages"] = p.messages
            if req.logprobs_k:
                body.update(logprobs=True, top_logprobs=req.logprobs_k, return_tokens_as_token_ids=True)
        return path, body | self.cfg.extra_body

    def answer(self, resp) -> dict:
        """The JSON of a successful response; a Retry for what may pass, a ConfigError for what won't."""
        status = resp.status_code
        if status in (408, 429) or status >= 500:
            raise Retry(f"HTTP {status}: {resp.text[:200]}", after=retry_after(resp), down=status >= 500)
        if status in (401, 403):
            raise ConfigError(f"the server refused {self.key_hint()} ({status}); check the key")
        if status == 404:
            raise ConfigError(f"{resp.request.url} answered 404 ({resp.text[:200]}); check base_url (the /v1 root) "
                              "and the served model name")
        if status >= 400:
            text = resp.text[:300]
            hint = ("; lower sampling.max_tokens or raise the server's --max-model-len" if "context" in text.lower()
                    or "max_model_len" in text or "maximum" in text.lower() else "")
            raise Refused(f"the server refused the request ({status}): {' '.join(text.split())}{hint}")
        try:
            data = resp.json()
        except ValueError as e:
            raise Retry(f"malformed JSON in a {status} answer: {resp.text[:100]!r}") from e
        if not isinstance(data, dict) or not data.get("choices"):
            raise Retry("an answer with no choices")
        return data

    def parse(self, data: dict, req: Request) -> dict:
        """The journal record of an answer to a request for one sample."""
        return self.parse_samples(data, req, 1)[0]

    def parse_samples(self, data: dict, req: Request, n: int) -> list[dict]:
        """The records of an answer to a request for `n` samples, its choices in order of their index; fewer choices
        than asked is a malformed answer (retried). The prompt tokens go on the first record (billed once); the
        completion tokens, when the server sums them over the choices, are shared out by each choice's length (its
        log-prob tokens, else its characters), so the records add up to what the server counted."""
        choices, usage = data["choices"], data.get("usage") or {}
        if len(choices) < n:
            raise Retry(f"an answer with {len(choices)} choices to a request for {n}" + (
                "; if the server ignores `n`, set engine.samples_per_request: 1" if n > 1 else ""))
        if n > 1:
            choices = sorted(choices, key=lambda c: c.get("index") or 0)[:n]
        records = [self.parse_choice(c, data, req) for c in choices[:n]]
        total = usage.get("completion_tokens")
        counted = [len(r["topk"]["sampled"]) if r["topk"] else None for r in records]
        if total is None:
            shares = [c or 0 for c in counted]
        elif n == 1:
            shares = [total]
        else:
            shares = share(total, counted if None not in counted else [len(r["text"]) for r in records])
        for i, (r, tokens) in enumerate(zip(records, shares)):
            r.update(prompt_tokens=(usage.get("prompt_tokens") or 0) if i == 0 else 0, completion_tokens=tokens or 0)
        return records

    def parse_choice(self, choice: dict, data: dict, req: Request) -> dict:
        topk = prompt_topk = None
        if "message" in choice:  # chat
            msg = choice["message"] or {}
            text = msg.get("content") or ""
            reasoning = msg.get("reasoning_content") or msg.get("reasoning")  # DeepSeek's API | vLLM's parsers
            if reasoning:
                text = f"<{req.think_tag}>\n{reasoning.strip()}\n</{req.think_tag}>\n\n{text.lstrip()}"
            if req.logprobs_k:
                content = (choice.get("logprobs") or {}).get("content") or []
                topk = {"k": req.logprobs_k, "sampled": [token_id(t["token"]) for t in content],
                        "pos": [[[token_id(c["token"]), c["logprob"]] for c in t.get("top_logprobs") or []] for t in content]}
        elif "text" in choice:  # completions
            text = choice["text"] or ""
            if req.logprobs_k:
                lp = choice.get("logprobs") or {}
                topk = {"k": req.logprobs_k, "sampled": [token_id(t) for t in lp.get("tokens") or []],
                        "pos": [[[token_id(t), v] for t, v in (d or {}).items()] for d in lp.get("top_logprobs") or []]}
            if req.prompt_logprobs_k:
                prompt_topk = choice.get("prompt_logprobs") or data.get("prompt_logprobs")
                if prompt_topk is None:
                    raise ConfigError("the server returned no prompt_logprobs: scoring through the openai backend needs "
                                      "a vLLM server (its completions API takes prompt_logprobs)")
                prompt_topk = [[[int(t), v["logprob"]] for t, v in (d or {}).items() if 1 <= v.get("rank", 1) <= req.prompt_logprobs_k]
                               for d in prompt_topk]
        else:
            raise Retry("an answer whose choice has neither message nor text")
        return {"text": text, "finish_reason": str(choice.get("finish_reason") or "stop"),
                "topk": topk, "prompt_topk": prompt_topk and {"k": req.prompt_logprobs_k, "pos": prompt_topk}}

    # ------------------------------------------------------------ replicas and limits

    async def pick(self) -> dict:
        """The healthy replica with the fewest requests in flight; waits when every replica is backing off."""
        while True:
            now = time.monotonic()
            healthy = [r for r in self.replicas if r["down_until"] <= now]
            if healthy:
                return min(healthy, key=lambda r: r["inflight"])
            await asyncio.sleep(min(r["down_until"] for r in self.replicas) - now)

    async def throttle(self) -> None:
        rpm, tpm = self.cfg.requests_per_minute, self.cfg.tokens_per_minute
        if not rpm and not tpm:
            return
        async with self.pace["lock"]:
            if rpm:
                now = time.monotonic()
                wait = self.pace["next"] - now
                self.pace["next"] = max(now, self.pace["next"]) + 60.0 / rpm
                if wait > 0:
                    await asyncio.sleep(wait)
            window = self.pace["window"]
            while tpm and window and sum(n for _, n in window) >= tpm:
                await asyncio.sleep(max(0.0, window[0][0] + 60.0 - time.monotonic()))
                while window and window[0][0] + 60.0 <= time.monotonic():
                    window.popleft()

    def window_add(self, tokens: int) -> None:
        if self.cfg.tokens_per_minute:
            self.pace["window"].append((time.monotonic(), tokens))


@dataclass(eq=False)
class Chunk:
    """One chunk's requests on their way: its answers so far, what is left, and when its last answer is in."""

    k: int
    prompts: list[Prompt]
    journal: Path | None
    fp: str  # the journal fingerprint of these prompts and settings
    records: dict  # key -> journal record
    todo: list  # (prompt, sample) requests to send
    left: int = 0  # sent, not yet answered
    issued: bool = False  # every request sent, or the rest held back by a spending limit
    held: int = 0  # requests not sent because a spending limit was reached
    sink: object = None  # the open journal
    done: threading.Event = field(default_factory=threading.Event)  # set in the request loop's thread
    done_at: float = 0.0
    written: asyncio.Event = field(default_factory=asyncio.Event)  # set in the loop's thread at the caller's request (call_soon_threadsafe)

    @property
    def complete(self) -> bool:
        return self.issued and not self.left

    def open(self) -> None:
        if self.journal and self.todo:
            self.sink = open_journal(self.journal)

    def finish(self) -> None:
        if self.complete and not self.done.is_set():
            self.close()  # before the caller may remove the journal
            self.done_at = time.perf_counter()
            self.done.set()

    def close(self) -> None:
        if self.sink:
            os.fsync(self.sink.fileno())
            self.sink.close()
            self.sink = None


def outputs_of(prompts: list[Prompt], records: dict, n: int) -> tuple[list[Output], dict]:
    """A chunk's outputs and usage from its journal records: this run's answers and a killed run's."""
    outputs = []
    for p in prompts:
        recs = [records.get(f"{p.key}/{j}", {"ok": False, "error": "not sent"}) for j in range(n)]
        failed = [r for r in recs if not r.get("ok")]
        requests = max(bool(failed), sum("with" not in r for r in failed))  # a request's samples fail once
        completions = [Completion(r["text"], r["finish_reason"], r["completion_tokens"], topk_arrays(r.get("topk")))
                       for r in recs if r.get("ok")]
        outputs.append(Output(completions, max((r.get("prompt_tokens", 0) for r in recs), default=0),
                              topk_arrays(recs[0].get("prompt_topk"), p.token_ids, p.score_from),
                              failed[0]["error"] if failed else None, requests))
    usage: collections.Counter = collections.Counter()
    shared, answered = False, 0
    for r in (records.get(f"{p.key}/{j}") for p in prompts for j in range(n)):
        if r:
            usage["requests"] += r.get("errors", 0) + bool(r.get("ok") and "with" not in r)
            usage["retries"] += r.get("retries", 0)
            usage["errors"] += r.get("errors", 0)
            usage["prompt_tokens"] += r.get("prompt_tokens", 0) if r.get("ok") else 0
            usage["completion_tokens"] += r.get("completion_tokens", 0) if r.get("ok") else 0
            shared = shared or "with" in r
            answered += bool(r.get("ok"))
    if shared:  # samples asked for together: the answers, apart from the requests (`plan`'s mean answer)
        usage["answers"] = answered
    return outputs, dict(usage)


def share(total: int, weights: list[int]) -> list[int]:
    """`total` shared out in proportion to `weights` (evenly when they are all 0), summing to it exactly."""
    if not any(weights):
        weights = [1] * len(weights)
    exact = [total * w / sum(weights) for w in weights]
    parts = [int(x) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: parts[i] - exact[i])[: total - sum(parts)]:
        parts[i] += 1
    return parts


def log_resumed(total: int, left: int) -> None:
    if left < total:
        log.info("%d of %d requests already answered (journal); sending %d", total - left, total, left)


class Budget:
    """Tokens answered requests used (their usage) against engine.max_cost and engine.max_tokens_total."""

    def __init__(self, cfg: EngineConfig, prompt_tokens: int = 0, completion_tokens: int = 0):
        self.cfg, self.prompt_tokens, self.completion_tokens = cfg, prompt_tokens, completion_tokens
        self.held = 0  # requests not sent because a limit was reached

    def add(self, record: dict) -> None:
        self.prompt_tokens += record.get("prompt_tokens", 0)
        self.completion_tokens += record.get("completion_tokens", 0)

    def priced(self) -> bool:
        return self.cfg.prices() is not None

    def cost(self) -> float:
        price_in, price_out = self.cfg.prices() or (0.0, 0.0)
        return (self.prompt_tokens * price_in + self.completion_tokens * price_out) / 1e6

    def spent(self) -> str:
        tokens = f"{self.prompt_tokens} prompt + {self.completion_tokens} completion tokens"
        return f"{money(self.cost())} ({tokens})" if self.priced() else tokens

    def limits(self) -> str:
        c = self.cfg
        return ", ".join(([f"engine.max_cost {money(c.max_cost)}"] if c.max_cost is not None else [])
                         + ([f"engine.max_tokens_total {c.max_tokens_total}"] if c.max_tokens_total is not None else []))

    def beyond(self, strict: bool) -> str:
        """The limit these totals pass (strict) or reach, as a setting and its value; '' when none."""
        c, tokens = self.cfg, self.prompt_tokens + self.completion_tokens
        if c.max_cost is not None and (self.cost() > c.max_cost if strict else self.cost() >= c.max_cost):
            return f"engine.max_cost {money(c.max_cost)}"
        if c.max_tokens_total is not None and (tokens > c.max_tokens_total if strict else tokens >= c.max_tokens_total):
            return f"engine.max_tokens_total {c.max_tokens_total}"
        return ""


def money(x: float) -> str:
    return f"${x:.4f}"


def longest_of(prompts: list[Prompt]) -> Prompt:
    """The longest prompt by tokens (or, for chat prompts, by characters: one /tokenize call)."""
    if prompts[0].token_ids is not None:
        return max(prompts, key=lambda p: len(p.token_ids))
    return max(prompts, key=lambda p: len(json.dumps(p.messages)))


def token_id(token: str) -> int:
    """vLLM's `token_id:123` (return_tokens_as_token_ids); other servers send text, which can't be mapped."""
    if isinstance(token, int) or str(token).lstrip("-").isdigit():
        return int(token)
    if not str(token).startswith("token_id:"):
        raise ConfigError("the server returned log-prob tokens as text, not ids: teacher log-probs through the openai "
                          "backend need a vLLM server (return_tokens_as_token_ids)")
    return int(token.split(":", 1)[1])


def topk_arrays(stored, tokens: list[int] | None = None, first: int = 0):
    """Journal form -> what topk.encode takes: (ids [T,k], log-probs [T,k], token ids [T]), from position `first`.

    Prompt log-probs carry no sampled ids (`tokens`, the scored sequence, gives them); position 0 has none."""
    if not stored:
        return None
    import numpy as np

    k, positions = stored["k"], stored["pos"][first:]
    sampled = stored.get("sampled", tokens)[first : first + len(positions)]
    ids = np.zeros((len(positions), k), np.int64)
    lps = np.full((len(positions), k), LOGPROB_FLOOR, np.float32)
    for i, pairs in enumerate(positions):
        for r, (t, v) in enumerate(sorted(pairs, key=lambda tv: -tv[1])[:k]):
            ids[i, r], lps[i, r] = t, max(v, LOGPROB_FLOOR)
    return ids, lps, np.asarray(sampled, np.int64)


def retry_after(resp) -> float | None:
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def read_journal(path: Path, fp: str) -> dict:
    """Answered requests of this very config; a torn last line (killed mid-write) is skipped."""
    records = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("fp") == fp and (r.get("ok") or r["key"] not in records):
                records[r["key"]] = r
    return records


def open_journal(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    sink = open(path, "a")
    if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        sink.write("\n")  # a killed write left half a line: start on a fresh one
    return sink
