"""A soak of `seqdistill generate` through the openai backend against a flaky local server, killed and resumed (issue 25).

    .venv/bin/python benchmarks/soak.py                    # about 10 minutes; results in benchmarks/results/soak.{json,md}
    .venv/bin/python benchmarks/soak.py --minutes 0.5 --kills 0.5 --out /tmp/soak/soak   # a smoke run

One OpenAI-compatible server on 127.0.0.1 (tests/fault_server.py, in a thread of this process) gives a seeded
share of the completion requests a fault: 429 with Retry-After: 1, 500, a timeout (no answer before
engine.timeout), a dropped connection (no status line), or a slow answer (well inside engine.timeout); the rest
it answers at once. Its answers are derived from the prompt and the request's seed, so a (problem, sample) gets
the same completion however often it is asked. It logs every response it fully sent, with its status, time and
(prompt, seed) key.

First a reference: `seqdistill generate` (the CLI, in a subprocess) against a fault-free server of the same
kind, uninterrupted. Then the soak: the same command against the flaky server, sized by `--rate` to last about
`--minutes`, SIGKILLed (its whole process group) when a seeded share of its requests has been answered (about
30% and 65% by default), and run again after each kill until a run finishes. After each kill the server's
requests still in flight are let finish, then the keys it answered during the killed run but that are neither
in a journal nor in a written chunk are the run's "lost in flight".

Checked, each recorded: the final rows (data/train.parquet + data/dropped.parquet, by problem_index,
sample_index, every column) equal the reference's; every (problem, sample) was answered with 200 exactly once
plus once for each kill at which it was lost in flight, and no kill lost more than engine.max_concurrency; no
file left behind (no temporary file of an atomic write, no journal, no set-aside chunk, every chunk beside its
sidecar and every sidecar beside its chunk, every sidecar's `failed` empty); the last run exits 0 with
failed_requests 0. The figures: wall time, requests the server received, faults by kind, retries, answers,
resent after a kill, rows. tests/test_soak.py runs the same function for about 30 s with one kill.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "tests"))  # the fault-injecting server the API tests use

from fault_server import FaultServer  # noqa: E402

MODEL = "fake-teacher"
# share of the completion requests given each fault; the rest are answered after `delay`
FAULTS = {"429": 0.03, "500": 0.01, "timeout": 0.01, "drop": 0.01, "slow": 0.06}
SIZE = {"n": 4, "chunk_size": 16, "max_tokens": 64, "concurrency": 8, "timeout": 4.0, "max_retries": 20,
        "retry_backoff": 0.05, "delay": 0.05, "slow": 1.0, "hang": 5.0}
RATE = 13.0  # answers a second through the flaky server at SIZE (measured: each 500 or drop stalls the one replica >= 2 s)
STARTUP = 3.0  # seconds a run spends on start-up, wind-down and the drain after its kill (about)
TEMP = re.compile(r".*\.tmp\d*(-[0-9a-f]{8})?$")  # store.temp_path's `.NAME.tmpPID-HOST`, and any other temporary name


class FlakyServer(FaultServer):
    """FaultServer with faults drawn at random (seeded) for every completion request, and a log of the responses
    fully sent: (monotonic time, status, (prompt, seed))."""

    def __init__(self, seed: int, faults: dict[str, float], slow: float, **kwargs):
        self.rng, self.rates, self.slow_s = random.Random(seed), dict(faults), slow
        self.injected: Counter = Counter()
        self.sent: list[tuple[float, int, tuple]] = []
        self.local = threading.local()
        self.client_gone = 0  # connections the client closed or reset under the server (dropped, timed out, killed)
        super().__init__(**kwargs)
        self.faults = Draw(self)
        self.httpd.handle_error = self.gone  # instead of a traceback on stderr

    def gone(self, request, client_address) -> None:
        with self.lock:
            self.client_gone += 1

    @property
    def delay(self) -> float:  # read once by each answered request: slow if its draw said so
        slow, self.local.slow = getattr(self.local, "slow", False), False
        return self.slow_s if slow else self.base_delay

    @delay.setter
    def delay(self, value: float) -> None:
        self.base_delay = value

    def draw(self) -> str:
        """The fault of the next completion request (called under the server's lock)."""
        u, kind = self.rng.random(), "ok"
        for name, rate in self.rates.items():
            if u < rate:
                kind = name
                break
            u -= rate
        self.injected[kind] += 1
        self.local.slow = kind == "slow"
        return {"timeout": "hang"}.get(kind, kind)  # "slow" and "ok" are answered; the delay property tells them apart

    def handler(self):
        server, base = self, super().handler()

        class Logged(base):
            def do_GET(self):
                self.key = None
                super().do_GET()

            def complete(self, body: dict):
                chat = self.path.endswith("/chat/completions")
                prompt = body["messages"][-1]["content"] if chat and body.get("messages") else json.dumps(body.get("prompt"))
                self.key = (prompt, body.get("seed"))
                super().complete(body)

            def send(self, status: int, body, headers: dict | None = None):
                super().send(status, body, headers)  # raises when the client has gone: not sent
                with server.lock:
                    server.sent.append((time.monotonic(), status, getattr(self, "key", None)))

        return Logged

    def drain(self, limit: float) -> None:
        """Wait (at most `limit` s) until no request is being answered: those of a killed client finish or fail."""
        deadline = time.monotonic() + limit
        while self.inflight and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)

    def answers(self, since: float = 0.0, until: float = float("inf")) -> list[tuple]:
        with self.lock:
            return [key for t, status, key in self.sent if status == 200 and key is not None and since <= t <= until]


class Draw(list):
    """FaultServer.faults that never runs out: each pop draws the next request's fault."""

    def __init__(self, server: FlakyServer):
        super().__init__()
        self.server = server

    def __bool__(self) -> bool:
        return True

    def pop(self, index: int = -1) -> str:
        return self.server.draw()


def settings(url: str, out: Path, problems: int, size: dict) -> list[str]:
    return [f"model={MODEL}", f"output_dir={out}", f"problems.num_problems={problems}", f"sampling.n={size['n']}",
            f"sampling.max_tokens={size['max_tokens']}", f"chunk_size={size['chunk_size']}", "prompt.template=number",
            "answer.extraction=last_number", "engine.backend=openai", f"engine.base_url={url}",
            f"engine.timeout={size['timeout']}", f"engine.max_retries={size['max_retries']}",
            f"engine.retry_backoff={size['retry_backoff']}", f"engine.max_concurrency={size['concurrency']}"]


def command(url: str, out: Path, problems: int, size: dict) -> list[str]:
    return [sys.executable, "-m", "seqdistill", "generate", "--set", *settings(url, out, problems, size)]


def request_keys(url: str, out: Path, problems: int, size: dict) -> dict[tuple, str]:
    """(prompt, seed) of every request the run sends -> its journal key PROBLEM/SAMPLE (the bodies generate builds)."""
    from seqdistill import config as configlib
    from seqdistill import generate
    from seqdistill.engines import engine, prompts
    from seqdistill.generate import GenerateConfig

    cfg = configlib.load(GenerateConfig, None, settings(url, out, problems, size))
    rows = generate.select_problems(cfg)
    template = prompts.load_template(cfg.prompt.template)
    batch = engine.make_prompts(cfg.model, cfg.engine, cfg.prompt, [prompts.render(template, r) for r in rows],
                                [r["_index"] for r in rows])
    eng, req = engine.OpenAIEngine(cfg.engine.served_model or cfg.model, cfg.engine), engine.Request(cfg.sampling)
    keys = {}
    for p in batch:
        for j in range(cfg.sampling.n):
            body = eng.body(p, j, req)[1]
            keys[(body["messages"][-1]["content"], body["seed"])] = f"{p.key}/{j}"
    return keys


def journaled(out: Path) -> set[str]:
    """PROBLEM/SAMPLE keys answered so far on disk: rows of written chunks, and ok answers in journals."""
    import pyarrow.parquet as pq

    keys = {f"{r['problem_index']}/{r['sample_index']}" for part in out.rglob("chunk-*.parquet")
            for r in pq.read_table(part, columns=["problem_index", "sample_index"]).to_pylist()}
    for journal in out.rglob("*.journal.jsonl"):
        for line in journal.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line torn by the kill
                continue
            if record.get("ok"):
                keys.add(record["key"])
    return keys


def final_rows(out: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(out / "data" / name) for name in ("train.parquet", "dropped.parquet")
              if (out / "data" / name).is_file()]
    rows = pa.concat_tables(tables, promote_options="permissive").to_pylist() if tables else []
    return sorted(rows, key=lambda r: (r["problem_index"], r["sample_index"]))


def left_behind(out: Path) -> dict:
    """What a finished run must not leave: temporary files, journals, set-aside chunks, chunks without their
    sidecar (or the reverse), sidecars with failures."""
    files = [p for p in out.rglob("*") if p.is_file()]
    chunks = {p.with_suffix("") for p in files if re.fullmatch(r"chunk-\d+\.parquet", p.name)}
    sidecars = {p.with_suffix("") for p in files if re.fullmatch(r"chunk-\d+\.json", p.name)}
    failed = [str(p.relative_to(out)) for p in files if re.fullmatch(r"chunk-\d+\.json", p.name)
              and json.loads(p.read_text()).get("failed")]
    return {"temporary": sorted(str(p.relative_to(out)) for p in files if TEMP.fullmatch(p.name)),
            "journals": sorted(str(p.relative_to(out)) for p in files if p.name.endswith(".journal.jsonl")),
            "set_aside": sorted(str(p.relative_to(out)) for p in files if p.name.endswith(".bad")),
            "chunk_without_sidecar": sorted(str(p.relative_to(out)) for p in chunks - sidecars),
            "sidecar_without_chunk": sorted(str(p.relative_to(out)) for p in sidecars - chunks),
            "sidecar_with_failures": sorted(failed), "chunks": len(chunks)}


def launch(cmd: list[str], log) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)


def soak(work: Path, minutes: float = 10.0, kills: tuple[float, ...] = (0.30, 0.65), seed: int = 0,
         rate: float = RATE, problems: int | None = None, faults: dict | None = None, size: dict | None = None,
         say=print, after_kill=None) -> dict:
    """Reference run, then the killed-and-resumed soak; every figure and check as one dict (see the module doc).
    `after_kill(out)`, when given, runs after each kill's accounting, before the rerun (to show a check can fail)."""
    size, faults = {**SIZE, **(size or {})}, {**FAULTS, **(faults or {})}
    if problems is None:  # what `rate` answers get through in the time left after each run's start-up
        seconds = max(10.0, minutes * 60 - STARTUP * (len(kills) + 1))
        problems = max(2 * size["chunk_size"], round(rate * seconds / size["n"]))
    rng = random.Random(seed)
    at = sorted(min(0.95, max(0.05, k + rng.uniform(-0.03, 0.03))) for k in kills)  # shares answered at each kill
    t0 = time.monotonic()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ref_out, out = work / "reference", work / "soak"

    say(f"reference: {problems} problems x {size['n']} samples against a fault-free server")
    with FaultServer(model=MODEL) as clean:
        start = time.monotonic()
        with open(work / "reference.log", "w") as log:
            ref_rc = launch(command(clean.url, ref_out, problems, size), log).wait()
        reference = {"rc": ref_rc, "seconds": round(time.monotonic() - start, 1), "requests": clean.requests}
    if ref_rc:
        raise RuntimeError(f"the reference run failed ({ref_rc}); see {work / 'reference.log'}")

    attempts, lost = [], []
    with FlakyServer(seed, faults, size["slow"], model=MODEL, delay=size["delay"], hang=size["hang"]) as server:
        keys = request_keys(server.url, out, problems, size)
        total = len(keys)
        cmd = command(server.url, out, problems, size)
        say(f"soak: {total} requests, kills when {', '.join(f'{a:.0%}' for a in at)} are answered; faults {faults}")
        begin = time.monotonic()
        for i in range(len(at) + 1):
            start = time.monotonic()
            with open(work / f"soak-{i}.log", "w") as log:
                proc = launch(cmd, log)
                attempt = {"run": i, "killed": False}
                if i < len(at):
                    target = round(at[i] * total)
                    while proc.poll() is None and len(server.answered) < target:
                        time.sleep(0.02)
                    if proc.poll() is None:
                        os.killpg(proc.pid, signal.SIGKILL)
                        attempt["killed"] = True
                        attempt["answered_at_kill"] = len(server.answered)
                attempt["rc"] = proc.wait()
            attempt["seconds"] = round(time.monotonic() - start, 1)
            with server.lock:
                times = [t for t, status, _ in server.sent if status == 200 and t >= start]
            if times:  # start-up (to the first answer), and answers a second from there
                attempt["first_answer_s"] = round(times[0] - start, 1)
                attempt["answers"] = len(times)
                attempt["answers_per_s"] = round(len(times) / max(1e-3, times[-1] - times[0]), 1)
            if attempt["killed"]:
                server.drain(size["hang"] + 2)  # a killed client's requests still being answered
                on_disk = journaled(out)
                answered = {keys.get(k, "?") for k in server.answers(start)}
                lost.append(sorted(answered - on_disk))
                attempt["lost_in_flight"] = len(lost[-1])
                if after_kill:
                    after_kill(out)
            attempts.append(attempt)
            say(f"run {i}: {attempt}")
            if not attempt["killed"]:
                break
        wall = time.monotonic() - begin
        with server.lock:
            sent, injected, requests = list(server.sent), dict(server.injected), server.requests
            max_inflight, client_gone = server.max_inflight, server.client_gone

    # ---------------------------------------------------------------- checks
    answers = Counter(keys.get(k, "?") for _, status, k in sent if status == 200 and k is not None)
    lost_count = Counter(k for keys_lost in lost for k in keys_lost)
    over = {k: n for k, n in answers.items() if n != 1 + lost_count[k]}
    resent = sum(answers.values()) - len(answers)
    rows, ref_rows = final_rows(out), final_rows(ref_out)
    columns = sorted(rows[0]) if rows else []
    differing = [(r["problem_index"], r["sample_index"], c) for r, s in zip(rows, ref_rows) for c in columns
                 if r.get(c) != s.get(c)]
    stats = json.loads((out / "stats.json").read_text()) if (out / "stats.json").is_file() else {}
    leftover = left_behind(out)
    last = attempts[-1]
    checks = {
        "every_kill_landed": sum(a["killed"] for a in attempts) == len(at),
        "last_run_finished": not last["killed"] and last["rc"] == 0 and stats.get("failed_requests") == 0,
        "rows_identical_to_reference": len(rows) == len(ref_rows) == total and not differing,
        "every_request_answered": set(answers) == set(keys.values()) and "?" not in answers,
        "answered_once_but_lost_in_flight": not over,
        "lost_in_flight_within_concurrency": all(len(x) <= size["concurrency"] for x in lost),
        "resent_within_concurrency_per_kill": resent <= size["concurrency"] * len(lost),
        "no_file_left_behind": not any(v for k, v in leftover.items() if k != "chunks"),
        "every_chunk_written_without_failures": not leftover["sidecar_with_failures"]
                                                and leftover["chunks"] == -(-problems // size["chunk_size"]),
    }
    usage = stats.get("requests", {})
    return {
        "date": datetime.date.today().isoformat(), "machine": machine(),
        "command": " ".join(["seqdistill", "generate", "--set",
                             *settings("http://127.0.0.1:PORT/v1", Path("OUT"), problems, size)]),
        "planned_minutes": minutes, "seed": seed, "rate": rate, "problems": problems, "samples": size["n"], "size": size,
        "fault_rates": faults, "kill_shares": [round(a, 3) for a in at],
        "reference": reference,
        "total_seconds": round(time.monotonic() - t0, 1),
        "soak": {"wall_seconds": round(wall, 1), "runs": attempts, "requests_received": requests,
                 "faults_injected": injected, "responses_by_status": dict(Counter(status for _, status, _ in sent)),
                 "answers": sum(answers.values()), "distinct_answered": len(answers),
                 "resent_after_kill": resent, "lost_in_flight": [len(x) for x in lost],
                 "max_inflight_at_server": max_inflight, "connections_closed_by_client": client_gone,
                 "client_retries_journaled": usage.get("retries"), "client_errors_journaled": usage.get("errors"),
                 "rows": len(rows), "kept": (stats.get("funnel") or {}).get("kept"),
                 "drop_reasons": dict(Counter(r.get("drop_reason") for r in rows if r.get("drop_reason")))},
        "compared_columns": columns, "differing": differing[:10], "over_answered": dict(list(over.items())[:10]),
        "left_behind": leftover, "checks": checks, "passed": all(checks.values()),
    }


def machine() -> dict:
    from seqdistill import precision

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cpu_flags": precision.describe_cpu(), "cores": len(os.sched_getaffinity(0)),
            "ram_gb": round(ram, 1), "python": platform.python_version()}


def markdown(r: dict, argv: str) -> str:
    s, m = r["soak"], r["machine"]
    runs = "\n".join(f"| {a['run']} | {a['seconds']} | {a.get('first_answer_s', '')} | {a.get('answers', 0)} | "
                     f"{a.get('answers_per_s', '')} | {'SIGKILL' if a['killed'] else 'exit ' + str(a['rc'])} | "
                     f"{a.get('answered_at_kill', '')} | {a.get('lost_in_flight', '')} |" for a in s["runs"])
    faults = ", ".join(f"{k} {v}" for k, v in sorted(s["faults_injected"].items()))
    checks = "\n".join(f"| {k} | {'yes' if v else '**NO**'} |" for k, v in r["checks"].items())
    return (
        f"# Soak: generate through the openai backend against a flaky server, killed and resumed ({r['date']})\n\n"
        f"Machine: {m['cpu']}, {m['cores']} cores, CPU flags: {m['cpu_flags']}. Command: `{argv}`.\n\n"
        f"`{r['command']}` (PORT: the server's, OUT: the run's), {r['problems']} problems x {r['samples']} samples = "
        f"{r['problems'] * r['samples']} requests, planned {r['planned_minutes']} min. Fault shares: "
        f"{', '.join(f'{k} {v:.0%}' for k, v in r['fault_rates'].items())} (429 with Retry-After: 1; timeout: no answer "
        f"for {r['size']['hang']} s against engine.timeout {r['size']['timeout']} s; slow: {r['size']['slow']} s). "
        f"Kills at {', '.join(f'{a:.1%}' for a in r['kill_shares'])} of the requests answered.\n\n"
        f"Reference (fault-free server, uninterrupted): {r['reference']['seconds']} s, {r['reference']['requests']} requests.\n\n"
        "| run | seconds | first answer after (s) | answers | answers/s | ended | answered (distinct, all runs) at kill | "
        f"lost in flight |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n{runs}\n\n"
        f"Soak wall time **{s['wall_seconds']} s** (with the reference and the checks: {r['total_seconds']} s); "
        f"the server received {s['requests_received']} completion requests; "
        f"faults drawn: {faults}; responses by status: {s['responses_by_status']} (404: each run's one /tokenize, "
        f"which this server lacks); {s['answers']} answers (200) for "
        f"{s['distinct_answered']} requests: **{s['resent_after_kill']} resent after a kill** (lost in flight: "
        f"{s['lost_in_flight']}, at most max_concurrency {r['size']['concurrency']} a kill); retries journaled by the "
        f"client: {s['client_retries_journaled']}; rows {s['rows']} (kept {s['kept']}, dropped by reason "
        f"{s['drop_reasons']}); server's most requests in flight at once: {s['max_inflight_at_server']} (timed-out "
        f"requests still sleeping there included); connections the client closed or reset under the server: "
        f"{s['connections_closed_by_client']}.\n\n"
        f"| check | passed |\n| --- | --- |\n{checks}\n\n"
        f"Compared columns: {', '.join(r['compared_columns'])}. Left behind: "
        f"{json.dumps({k: v for k, v in r['left_behind'].items() if k != 'chunks'})} ({r['left_behind']['chunks']} chunks).\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="planned wall time of the soak (sizes the run)")
    p.add_argument("--kills", type=float, nargs="*", default=[0.30, 0.65], help="shares of requests answered at each SIGKILL")
    p.add_argument("--seed", type=int, default=0, help="faults and kill jitter")
    p.add_argument("--rate", type=float, default=RATE, help="answers a second the flaky server gets through (sizes the run)")
    p.add_argument("--problems", type=int, help="instead of sizing by --minutes and --rate")
    p.add_argument("--work", default="runs/soak")
    p.add_argument("--out", default=str(RESULTS / "soak"))
    args = p.parse_args()
    argv = " ".join([".venv/bin/python", "benchmarks/soak.py", *sys.argv[1:]])
    result = soak(Path(args.work), args.minutes, tuple(args.kills), args.seed, args.rate, args.problems)
    result["argv"] = argv
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(result, indent=2))
    Path(args.out + ".md").write_text(markdown(result, argv))
    print(Path(args.out + ".md").read_text())
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
