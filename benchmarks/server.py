"""The sampling layer's overhead, measured against bare clients on the same engine.

    python benchmarks/server.py                # both comparisons, SmolLM2-135M, results in benchmarks/results/
    python benchmarks/server.py --only server  # or: --only inprocess

server: one `vllm serve` (the module entry point, as ENVIRONMENT.md says) answers, in turn, a bare
asyncio script with the `openai` client (one request per sample, the same seeds and concurrency)
and `seqdistill generate` with `engine.backend: openai` (journal, retries, filters, Parquet
included). inprocess: one `vllm.LLM` answers a bare `llm.generate` and `seqdistill generate`.
Generated tokens per second of the whole call; runs alternate, and the ratio is of the medians.
Targets: >= 0.95 each. Nothing else may run on the machine meanwhile.
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
SIZE = {"problems": 48, "n": 8, "max_tokens": 64, "concurrency": 32, "repeats": 3}


def generate_cfg(model: str, out: str, *extra: str):
    from seqdistill import config as configlib
    from seqdistill.generate import GenerateConfig

    return configlib.load(GenerateConfig, None, [
        f"model={model}", f"output_dir={out}", f"problems.num_problems={SIZE['problems']}", f"sampling.n={SIZE['n']}",
        f"sampling.max_tokens={SIZE['max_tokens']}", "sampling.temperature=0.8", "prompt.template=number",
        "answer.extraction=last_number", "chunk_size=1000", *extra])


def user_messages(cfg) -> list[list[dict]]:
    from seqdistill import generate, prompts

    template = prompts.load_template(cfg.prompt.template)
    return [prompts.messages(prompts.render(template, row), cfg.prompt) for row in generate.select_problems(cfg)]


async def bare_client(url: str, model: str, messages: list[list[dict]], cfg) -> int:
    """What a user would write: AsyncOpenAI, a semaphore, one request per sample."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    gate = asyncio.Semaphore(SIZE["concurrency"])

    async def one(msgs, seed):
        async with gate:
            r = await client.chat.completions.create(model=model, messages=msgs, n=1, temperature=cfg.sampling.temperature,
                                                     top_p=cfg.sampling.top_p, max_tokens=cfg.sampling.max_tokens, seed=seed)
            return r.usage.completion_tokens

    tokens = await asyncio.gather(*[one(m, i * 100 + j) for i, m in enumerate(messages) for j in range(cfg.sampling.n)])
    await client.close()
    return sum(tokens)


def start_server(path: str, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", path, "--served-model-name", "teacher",
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "bfloat16", "--max-model-len", "1024",
           "--kv-cache-memory-bytes", str(2 << 30)]
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


def server_side(path: str, tmp: Path) -> dict:
    from seqdistill import generate

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp.mkdir(parents=True, exist_ok=True)
    url, log = f"http://127.0.0.1:{port}/v1", tmp / "server.log"
    proc = start_server(path, port, log)
    out = {"server_startup_seconds": round(wait_for(url, proc, log), 1), "runs": []}
    try:
        served = ["engine.backend=openai", f"engine.base_url={url}", "engine.served_model=teacher",
                  f"engine.max_concurrency={SIZE['concurrency']}"]
        cfg = generate_cfg(path, str(tmp / "warm"), *served)
        messages = user_messages(cfg)
        asyncio.run(bare_client(url, "teacher", messages[:8], cfg))  # warm-up: shapes and caches
        for rep in range(SIZE["repeats"]):
            start = time.perf_counter()
            tokens = asyncio.run(bare_client(url, "teacher", messages, cfg))
            out["runs"].append({"tool": "bare AsyncOpenAI", "seconds": time.perf_counter() - start, "tokens": tokens})
            start = time.perf_counter()
            stats = generate.run(generate_cfg(path, str(tmp / f"gen-{rep}"), *served))
            out["runs"].append({"tool": "seqdistill generate (openai backend)", "seconds": time.perf_counter() - start,
                                "tokens": stats["generated_tokens"], "requests": stats["requests"]})
            print(json.dumps(out["runs"][-2:]), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return summarize(out)


def inprocess_side(path: str, tmp: Path) -> dict:
    from vllm import SamplingParams

    from seqdistill import engine, generate, models, prompts

    cfg = generate_cfg(path, str(tmp / "warm"))
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
        stats = generate.run(generate_cfg(path, str(tmp / f"gen-{rep}")), llm=llm)
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
    p.add_argument("--only", choices=["server", "inprocess"])
    p.add_argument("--model", default="embedded:SmolLM2-135M-Instruct")
    args = p.parse_args()
    from seqdistill import models, precision

    path = models.resolve(args.model)
    result = {"machine": f"{platform.machine()} ({precision.describe_cpu()}), {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
              "model": args.model, "size": SIZE}
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "server"):
            result["server"] = server_side(path, Path(tmp) / "server")
        if args.only in (None, "inprocess"):
            result["inprocess"] = inprocess_side(path, Path(tmp) / "inprocess")
    RESULTS.mkdir(exist_ok=True)
    name = "server" if args.only is None else f"server-{args.only}"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v.get("ratio") for k, v in result.items() if isinstance(v, dict) and "ratio" in v}))


if __name__ == "__main__":
    main()
