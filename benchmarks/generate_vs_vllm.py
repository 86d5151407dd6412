"""Throughput of `seqdistill generate` against a bare `vllm.LLM.generate` on the same workload.

    .venv/bin/python benchmarks/generate_vs_vllm.py                 # 200 problems x 8 samples
    .venv/bin/python benchmarks/generate_vs_vllm.py --problems 50 --repeats 1

Both sides share one engine (SmolLM2-135M-Instruct, embedded), prompts, sampling settings and
engine seed, and run alternately, so the ratio measures what the pipeline adds around vLLM
(chunking, filtering, verification, writing Parquet). Results go to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--problems", type=int, default=200)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--repeats", type=int, default=1, help="alternating bare/seqdistill pairs")
    p.add_argument("--out", default="benchmarks/results/generate_vs_vllm.json")
    args = p.parse_args()

    from seqdistill import config as configlib
    from seqdistill import generate, models, prompts
    from seqdistill.generate import GenerateConfig

    cfg = configlib.load(GenerateConfig, "pipelines/generate-quickstart.yaml",
                         [f"problems.num_problems={args.problems}", f"sampling.n={args.n}"])
    path = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(path)
    rows = generate.select_problems(cfg)
    template = prompts.load_template(cfg.prompt.template)
    token_ids = [prompts.encode(tokenizer, prompts.render(template, r), cfg.prompt) for r in rows]
    start = time.perf_counter()
    llm = models.load_vllm(path, cfg.engine)
    startup = time.perf_counter() - start

    runs = []
    for rep in range(args.repeats):
        # bare vLLM: one call with every prompt, as vLLM's offline-inference example does
        llm.reset_prefix_cache()
        llm.collective_rpc("reseed", args=(rep,))
        start = time.perf_counter()
        outputs = llm.generate([{"prompt_token_ids": t} for t in token_ids], cfg.sampling.params(), use_tqdm=False)
        seconds = time.perf_counter() - start
        tokens = sum(len(o.token_ids) for r in outputs for o in r.outputs)
        runs.append({"tool": "bare vllm.LLM.generate", "seconds": seconds, "tokens": tokens})
        # seqdistill generate: the whole stage, filtering and writing included
        with tempfile.TemporaryDirectory() as tmp:
            run_cfg = configlib.load(GenerateConfig, "pipelines/generate-quickstart.yaml", [
                f"problems.num_problems={args.problems}", f"sampling.n={args.n}", f"output_dir={tmp}/out",
                f"engine.seed={rep}"])
            start = time.perf_counter()
            stats = generate.run(run_cfg, llm=llm)
            seconds = time.perf_counter() - start
        runs.append({"tool": "seqdistill generate", "seconds": seconds, "tokens": stats["generated_tokens"],
                     "funnel": stats["funnel"], "pass@1": stats["pass@1"], "pass@n": stats["pass@n"],
                     "drop_reasons": stats["drop_reasons"]})
        for r in runs[-2:]:
            print(f"{r['tool']:>24}: {r['tokens']} tokens in {r['seconds']:.1f} s = {r['tokens'] / r['seconds']:.1f} tok/s")

    def rate(tool):
        sel = [r for r in runs if r["tool"] == tool]
        return sum(r["tokens"] for r in sel) / sum(r["seconds"] for r in sel)

    ratio = rate("seqdistill generate") / rate("bare vllm.LLM.generate")
    result = {
        "workload": {"problems": args.problems, "n": args.n, "max_tokens": cfg.sampling.max_tokens,
                     "temperature": cfg.sampling.temperature, "model": cfg.model},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": _cores(), "python": platform.python_version()},
        "engine_startup_seconds": round(startup, 1),
        "runs": runs,
        "throughput_ratio_seqdistill_over_bare": round(ratio, 3),
        "versions": configlib.run_info()["versions"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"seqdistill / bare vLLM throughput: {ratio:.3f}  (target >= 0.95)  -> {args.out}")


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
