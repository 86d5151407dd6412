"""Every performance figure of seqdistill, measured side by side with the tools a user would pick instead.

    .venv/bin/python benchmarks/run.py            # default sizes: about 15 minutes on 2 CPU cores
    .venv/bin/python benchmarks/run.py --full     # GPU sizes (800 problems, 1,000 training examples)

One vLLM engine (the teacher, SmolLM2-135M-Instruct unless --model) serves every generation-side
measurement, alternating tools on the same prompts and settings: bare `vllm.LLM.generate` vs
`seqdistill generate` vs transformers `generate`; the filter chain alone on thousands of saved samples;
bare vLLM vs `seqdistill eval`; generate's wall time at several problem counts and samples per problem;
the cost of recording top-k log-probs. Training runs each in a fresh process (peak RSS is per process):
plain TRL `SFTTrainer` (TRL's defaults) vs `seqdistill sft`, LoRA and full, plus offline logit KD,
and sft wall time at several dataset sizes. Writes benchmarks/results/RESULTS.json and RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {
    "default": dict(problems=24, n=8, max_tokens=64, hf_problems=4, eval_problems=24, eval_n=4, scale_problems=[12, 48],
                    scale_n=[4], filter_samples=5000, train_examples=48, sft_examples=[24, 96], repeats=1),
    "full": dict(problems=200, n=8, max_tokens=1024, hf_problems=16, eval_problems=500, eval_n=4,
                 scale_problems=[50, 800], scale_n=[4, 16], filter_samples=50000, train_examples=1000,
                 sft_examples=[250, 4000], repeats=2),
    "smoke": dict(problems=4, n=2, max_tokens=16, hf_problems=1, eval_problems=4, eval_n=2, scale_problems=[2],
                  scale_n=[1], filter_samples=100, train_examples=8, sft_examples=[4], repeats=1),  # checks the script
}
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
BATCH, LR = 8, 5e-4
TARGETS = {"generate_over_bare_vllm": ">= 0.95", "filter_share_of_generate": "< 0.02",
           "sft_speed_over_trl": ">= 1.0", "sft_memory_over_trl": "<= 1.0", "kd_bytes_per_token": "<= 64"}


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork + exec, so a
    child started by the (large) vLLM parent would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def generate_cfg(model: str, size: dict, out: str, *overrides):
    from seqdistill import config as configlib
    from seqdistill.generate import GenerateConfig

    return configlib.load(GenerateConfig, "pipelines/generate-quickstart.yaml", [
        f"model={model}", f"output_dir={out}", f"problems.num_problems={size['problems']}", f"sampling.n={size['n']}",
        f"sampling.max_tokens={size['max_tokens']}", *overrides])


# ---------------------------------------------------------------- generation side (one engine)


def engine_side(model: str, size: dict, tmp: Path, benchmarks_dir: Path | None) -> dict:
    from seqdistill import generate, models, store
    from seqdistill.engines import engine, prompts

    cfg = generate_cfg(model, size, str(tmp / "gen"))
    path = models.resolve(model)
    tokenizer = models.load_tokenizer(path)
    rows = generate.select_problems(cfg)
    template = prompts.load_template(cfg.prompt.template)
    token_ids = [prompts.encode(tokenizer, prompts.render(template, r), cfg.prompt) for r in rows]
    start = time.perf_counter()
    llm = engine.load_vllm(path, cfg.engine)
    out = {"engine_startup_seconds": round(time.perf_counter() - start, 1), "generate": [], "scaling": []}

    for rep in range(size["repeats"]):  # alternating: bare, then seqdistill, same seed
        engine.VLLMEngine(llm, cfg.engine).start_chunk(cfg.engine.seed, cfg.shard_index, cfg.num_shards, 0)  # generate's chunk 0
        start = time.perf_counter()
        outputs = llm.generate([{"prompt_token_ids": t} for t in token_ids], bare_params(cfg.sampling), use_tqdm=False)
        seconds = time.perf_counter() - start
        tokens = sum(len(o.token_ids) for r in outputs for o in r.outputs)
        out["generate"].append({"tool": "bare vllm.LLM.generate", "seconds": round(seconds, 2), "tokens": tokens})
        run_cfg = generate_cfg(model, size, str(tmp / f"gen-{rep}"))
        start = time.perf_counter()
        stats = generate.run(run_cfg, llm=llm)
        out["generate"].append({"tool": "seqdistill generate", "seconds": round(time.perf_counter() - start, 2),
                                "tokens": stats["generated_tokens"], "pass@1": stats["pass@1"], "funnel": stats["funnel"]})
        log(out["generate"][-2:])
    samples = store.read_parquet(sorted((tmp / "gen-0").glob("samples/*/chunk-*.parquet")))

    # the filter chain alone, on thousands of saved samples
    out["filtering"] = filtering(run_cfg, samples, size["filter_samples"], out["generate"])

    # the cost of recording top-k log-probs: the same run (same seed, same samples) with and without
    for problems, n in [(p, size["n"]) for p in size["scale_problems"]] + [(size["problems"], k) for k in size["scale_n"]]:
        scale_cfg = generate_cfg(model, size, str(tmp / f"scale-{problems}-{n}"), f"problems.num_problems={problems}",
                                 f"sampling.n={n}")
        start = time.perf_counter()
        stats = generate.run(scale_cfg, llm=llm)
        out["scaling"].append({"problems": problems, "n": n, "seconds": round(time.perf_counter() - start, 2),
                               "tokens": stats["generated_tokens"]})
        log(out["scaling"][-1:])
    kd_cfg = generate_cfg(model, size, str(tmp / "gen-kd"), "teacher_logprobs=true", "logprobs_k=20")
    start = time.perf_counter()
    stats = generate.run(kd_cfg, llm=llm)
    out["logprobs"] = {"seconds": round(time.perf_counter() - start, 2), "tokens": stats["generated_tokens"],
                       "storage_kept": stats.get("teacher_logprobs"),
                       "seconds_without": out["generate"][1]["seconds"], "tokens_without": out["generate"][1]["tokens"]}
    kd_samples = store.read_parquet(sorted((tmp / "gen-kd").glob("samples/*/chunk-*.parquet")))
    from seqdistill.engines import topk

    out["logprobs"]["storage_all_samples"] = topk.storage_stats(kd_samples, 20, models.vocab_size(path))
    train = kd_samples.select([i % len(kd_samples) for i in range(size["train_examples"])])
    train.select_columns(["messages", "problem_id", "teacher", "prefill", "teacher_topk"]).to_parquet(str(tmp / "traces.parquet"))
    log([out["logprobs"]])

    out["eval"] = eval_side(model, size, tmp, llm, benchmarks_dir)
    engine.release_vllm(llm)
    out["transformers"] = transformers_generate(path, cfg, token_ids[: size["hf_problems"]])
    return out


def bare_params(s):
    """vLLM SamplingParams written out by hand, as a user of bare vLLM would."""
    from vllm import SamplingParams

    return SamplingParams(n=s.n, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, min_p=s.min_p,
                          max_tokens=s.max_tokens, stop=s.stop or None, repetition_penalty=s.repetition_penalty)


def filtering(cfg, samples, count: int, generate_runs: list[dict]) -> dict:
    from seqdistill.sources import filters

    rows = [dict(samples[i % len(samples)]) for i in range(count)]
    groups: dict = {}
    for i, r in enumerate(rows):
        groups.setdefault((r["problem_id"], i // len(samples)), []).append(r)
    start = time.perf_counter()
    for group in groups.values():
        filters.apply(group, group[0]["gold"], cfg.filters, cfg.answer, False)
    seconds = time.perf_counter() - start
    rate = count / seconds
    run = next(r for r in generate_runs if r["tool"] == "seqdistill generate")
    generated = run["funnel"]["generated"]
    return {"samples": count, "seconds": round(seconds, 3), "samples_per_second": round(rate, 1),
            "share_of_generate": round(generated / rate / run["seconds"], 5)}


def eval_side(model: str, size: dict, tmp: Path, llm, benchmarks_dir: Path | None) -> dict:
    from seqdistill import config as configlib
    from seqdistill import evaluate, models
    from seqdistill.engines import prompts
    from seqdistill.evaluate import EvalConfig
    from seqdistill.sources import problems

    mawps = benchmarks_dir / "mawps" / "test.jsonl" if benchmarks_dir else None
    bench = (f"{{name: mawps, source: {mawps}, num_problems: {size['eval_problems']}}}" if mawps and mawps.is_file()
             else f"{{name: embedded-heldout, num_problems: {size['eval_problems']}}}")
    cfg = configlib.load(EvalConfig, None, [
        f"models=[{{model: '{model}', name: m}}]", f"benchmarks=[{bench}]", f"output_dir={tmp / 'eval'}",
        "prompt.template=number", "answer.extraction=last_number", f"sampling.n={size['eval_n']}",
        f"sampling.max_tokens={size['max_tokens']}", "pass_k=[1]"])
    rows = problems.load(cfg.benchmarks[0].problems_config())
    tokenizer = models.load_tokenizer(models.resolve(model))
    template = prompts.load_template(cfg.prompt.template)
    ids = [prompts.encode(tokenizer, prompts.render(template, r), cfg.prompt) for r in rows]
    llm.collective_rpc("reseed", args=(cfg.engine.seed,))
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": t} for t in ids], bare_params(cfg.sampling), use_tqdm=False)
    bare = {"tool": "bare vllm.LLM.generate", "seconds": round(time.perf_counter() - start, 2),
            "tokens": sum(len(o.token_ids) for r in outputs for o in r.outputs)}
    start = time.perf_counter()
    results = evaluate.run(cfg, llms={model: llm})
    ours = {"tool": "seqdistill eval", "seconds": round(time.perf_counter() - start, 2),
            "tokens": round(results["m"][cfg.benchmarks[0].name]["mean_response_tokens"] * len(rows) * size["eval_n"])}
    runs = [bare, ours]
    for r in runs:
        r["problems_per_second"] = round(len(rows) / r["seconds"], 2)
        r["tokens_per_second"] = round(r["tokens"] / r["seconds"], 1)
    log(runs)
    return {"benchmark": cfg.benchmarks[0].name, "problems": len(rows), "n": size["eval_n"], "runs": runs}


def transformers_generate(path: str, cfg, token_ids: list[list[int]]) -> dict:
    """What a user would write with transformers alone: one left-padded batch, sampling, n per prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    from seqdistill import precision

    # bf16 where the CPU computes it natively (ENVIRONMENT.md: 76 vs 47 tok/s in fp32 there), float32 elsewhere
    dtype = torch.bfloat16 if torch.cuda.is_available() else getattr(torch, precision.cpu_dtype("auto"))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to("cuda" if torch.cuda.is_available() else "cpu")
    batch = tokenizer.pad({"input_ids": token_ids}, return_tensors="pt").to(model.device)
    s = cfg.sampling
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**batch, do_sample=True, temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_tokens,
                             num_return_sequences=s.n, pad_token_id=tokenizer.pad_token_id)
    seconds = time.perf_counter() - start
    new = out[:, batch["input_ids"].shape[1]:]
    ends = [tokenizer.pad_token_id, *([model.generation_config.eos_token_id] if isinstance(model.generation_config.eos_token_id, int)
                                       else model.generation_config.eos_token_id or [])]
    tokens = sum(next((i + 1 for i, t in enumerate(row.tolist()) if t in ends), len(row)) for row in new)
    result = {"tool": "transformers generate", "prompts": len(token_ids), "n": s.n, "dtype": str(dtype),
              "seconds": round(seconds, 2), "tokens": tokens}
    log([result])
    return result


# ---------------------------------------------------------------- training side (a process each)


def train_child(tool: str, dataset: str, method: str, out: str, extra: list[str], model: str | None = None) -> dict:
    """One training run in this (fresh) process; `model`: the student (default: the embedded SmolLM2)."""
    from seqdistill import models
    from seqdistill.sft import peak_gpu_memory

    model = model or models.DEFAULT_MODEL
    if tool == "trl":
        import datasets
        import torch
        from peft import LoraConfig
        from trl import SFTConfig, SFTTrainer

        data = datasets.load_dataset("parquet", data_files=dataset, split="train").select_columns(["messages"])
        trainer = SFTTrainer(model=models.resolve(model), train_dataset=data,
                             peft_config=LoraConfig(**LORA) if method == "lora" else None,
                             args=SFTConfig(output_dir=out, per_device_train_batch_size=BATCH, learning_rate=LR,
                                            num_train_epochs=1, report_to="none", save_strategy="no",
                                            use_cpu=not torch.cuda.is_available()))  # TRL refuses CPU without it
        tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
        start = time.perf_counter()
        trainer.train()
        return {"seconds": round(time.perf_counter() - start, 2), "tokens": tokens,
                **peak_gpu_memory("cuda" if torch.cuda.is_available() else "cpu")}
    from seqdistill import config as configlib
    from seqdistill import sft

    cfg = configlib.load(sft.SFTStageConfig, None, [
        f"student={model}", f"dataset={dataset}", f"output_dir={out}", f"method={method}",
        f"per_device_train_batch_size={BATCH}", f"learning_rate={LR}", "num_train_epochs=1", "report_to=[none]",
        "save_steps=100000", "max_length=1024", *extra])
    metrics = sft.run(cfg).metrics
    return {"seconds": metrics["train_seconds"], "tokens": metrics["train_tokens"], "dtype": metrics["dtype"],
            **peak_gpu_memory(metrics["device"])}


def train_in_child(tool: str, data, method: str, *extra: str, model: str | None = None) -> dict:
    """`train_child` in a fresh process (so peak memory is this run's own); its figures plus tokens/s."""
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps([tool, str(data), method, list(extra), model])],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{tool} {method} {extra} failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r.update(tool=tool, method=method, settings=list(extra), tokens_per_second=round(r["tokens"] / r["seconds"], 1))
    log([r])
    return r


def training_side(dataset: Path, size: dict, tmp: Path) -> dict:
    def child(tool, method, *extra, data=dataset):
        return train_in_child(tool, data, method, *extra)

    runs = []
    for _ in range(size["repeats"]):
        for method in ("lora", "full"):
            runs += [child("trl", method), child("seqdistill", method)]
        runs.append(child("seqdistill", "lora", "dtype=bfloat16"))  # TRL's defaults: bf16 + gradient checkpointing
        runs.append(child("seqdistill", "lora", "gradient_checkpointing=false"))  # what checkpointing saves
        runs.append(child("seqdistill", "lora", "kd.mode=offline"))
    import datasets

    full = datasets.load_dataset("parquet", data_files=str(dataset), split="train")
    scaling = []
    for n in size["sft_examples"]:
        part = tmp / f"traces-{n}.parquet"
        full.select([i % len(full) for i in range(n)]).to_parquet(str(part))
        scaling.append({"examples": n, **child("seqdistill", "lora", data=part)})
    return {"examples": len(full), "runs": runs, "scaling": scaling}


# ---------------------------------------------------------------- report


def summarize(result: dict) -> dict:
    gen, train = result["generation"], result["training"]

    def rate(runs, tool, **match):
        sel = [r for r in runs if r["tool"] == tool and all(r.get(k) == v for k, v in match.items())]
        return sum(r["tokens"] for r in sel) / sum(r["seconds"] for r in sel)

    def rss(tool, method, settings=()):
        sel = [r["peak_rss_mb"] for r in train["runs"] if r["tool"] == tool and r["method"] == method
               and r["settings"] == list(settings)]
        return sum(sel) / len(sel)

    s = {
        "generate_over_bare_vllm": rate(gen["generate"], "seqdistill generate") / rate(gen["generate"], "bare vllm.LLM.generate"),
        "transformers_over_bare_vllm": rate([gen["transformers"]], "transformers generate") / rate(gen["generate"], "bare vllm.LLM.generate"),
        "filter_share_of_generate": gen["filtering"]["share_of_generate"],
        "eval_over_bare_vllm": rate(gen["eval"]["runs"], "seqdistill eval") / rate(gen["eval"]["runs"], "bare vllm.LLM.generate"),
        "logprobs_time_overhead": gen["logprobs"]["seconds"] / gen["logprobs"]["seconds_without"] - 1,
        "kd_bytes_per_token": gen["logprobs"]["storage_all_samples"]["bytes_per_token"],
        "kd_speed_over_sft": rate(train["runs"], "seqdistill", method="lora", settings=["kd.mode=offline"])
        / rate(train["runs"], "seqdistill", method="lora", settings=[]),
    }
    for method in ("lora", "full"):
        s[f"sft_speed_over_trl_{method}"] = rate(train["runs"], "seqdistill", method=method, settings=[]) / rate(train["runs"], "trl", method=method)
        s[f"sft_memory_over_trl_{method}"] = rss("seqdistill", method) / rss("trl", method)
    s["sft_no_gc_speed_over_trl_lora"] = rate(train["runs"], "seqdistill", method="lora", settings=["gradient_checkpointing=false"]) / rate(train["runs"], "trl", method="lora")
    s["sft_no_gc_memory_over_trl_lora"] = rss("seqdistill", "lora", ["gradient_checkpointing=false"]) / rss("trl", "lora")
    s["sft_bf16_speed_over_trl_lora"] = rate(train["runs"], "seqdistill", method="lora", settings=["dtype=bfloat16"]) / rate(train["runs"], "trl", method="lora")
    s["sft_bf16_memory_over_trl_lora"] = rss("seqdistill", "lora", ["dtype=bfloat16"]) / rss("trl", "lora")
    return {k: round(v, 4) for k, v in s.items()}


def markdown(result: dict) -> str:
    m, s, gen, train = result["machine"], result["summary"], result["generation"], result["training"]
    lines = [f"# seqdistill benchmarks ({result['size']} sizes), {result['date']}", "",
             f"Machine: {m['cpu']} ({m.get('cpu_flags', 'flags not recorded')}), {m['cores']} cores, {m['ram_gb']} GiB RAM, GPU: {m['gpu'] or 'none'}; "
             f"model {result['model']}; " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()), "",
             "| measure | seqdistill | alternative | ratio | target |", "| --- | --- | --- | --- | --- |"]

    def tps(runs, tool, **match):
        sel = [r for r in runs if r["tool"] == tool and all(r.get(k) == v for k, v in match.items())]
        return f"{sum(r['tokens'] for r in sel) / sum(r['seconds'] for r in sel):.1f} tok/s"

    def mb(tool, method, settings=()):
        sel = [r["peak_rss_mb"] for r in train["runs"] if r["tool"] == tool and r["method"] == method and r["settings"] == list(settings)]
        return f"{sum(sel) / len(sel):.0f} MB"

    rows = [
        ("generate: generated tokens/s", tps(gen["generate"], "seqdistill generate"), "bare vLLM " + tps(gen["generate"], "bare vllm.LLM.generate"),
         s["generate_over_bare_vllm"], TARGETS["generate_over_bare_vllm"]),
        ("generate: transformers `generate` (bf16)", "", tps([gen["transformers"]], "transformers generate"), s["transformers_over_bare_vllm"], "(vs bare vLLM)"),
        ("filter chain: samples/s, share of generate wall time", f"{gen['filtering']['samples_per_second']} samples/s", "",
         s["filter_share_of_generate"], TARGETS["filter_share_of_generate"]),
        ("eval: generated tokens/s", tps(gen["eval"]["runs"], "seqdistill eval"), "bare vLLM " + tps(gen["eval"]["runs"], "bare vllm.LLM.generate"),
         s["eval_over_bare_vllm"], ""),
    ]
    for method in ("lora", "full"):
        rows.append((f"sft {method}: training tokens/s", tps(train["runs"], "seqdistill", method=method, settings=[]),
                     "TRL " + tps(train["runs"], "trl", method=method), s[f"sft_speed_over_trl_{method}"], TARGETS["sft_speed_over_trl"]))
        rows.append((f"sft {method}: peak RSS", mb("seqdistill", method), "TRL " + mb("trl", method),
                     s[f"sft_memory_over_trl_{method}"], TARGETS["sft_memory_over_trl"]))
    rows += [
        ("sft lora, dtype=bfloat16 (TRL's defaults: bf16 + checkpointing): tokens/s", tps(train["runs"], "seqdistill", method="lora", settings=["dtype=bfloat16"]),
         "TRL " + tps(train["runs"], "trl", method="lora"), s["sft_bf16_speed_over_trl_lora"], ""),
        ("sft lora, dtype=bfloat16: peak RSS", mb("seqdistill", "lora", ["dtype=bfloat16"]), "TRL " + mb("trl", "lora"),
         s["sft_bf16_memory_over_trl_lora"], ""),
        ("sft lora, gradient_checkpointing=false: tokens/s, peak RSS",
         tps(train["runs"], "seqdistill", method="lora", settings=["gradient_checkpointing=false"]) + ", "
         + mb("seqdistill", "lora", ["gradient_checkpointing=false"]), "TRL " + tps(train["runs"], "trl", method="lora") + ", "
         + mb("trl", "lora"), f"{s['sft_no_gc_speed_over_trl_lora']} speed, {s['sft_no_gc_memory_over_trl_lora']} memory", ""),
        ("logit KD (offline, lora): training tokens/s", tps(train["runs"], "seqdistill", method="lora", settings=["kd.mode=offline"]),
         "plain sft " + tps(train["runs"], "seqdistill", method="lora", settings=[]), s["kd_speed_over_sft"], ""),
        ("logit KD: bytes/token stored (k=20)", f"{s['kd_bytes_per_token']}", "DistillKit 114-300", "", TARGETS["kd_bytes_per_token"]),
        ("recording top-k log-probs: generate wall time", f"{gen['logprobs']['seconds']} s", f"without {gen['logprobs']['seconds_without']} s",
         round(1 + s["logprobs_time_overhead"], 3), ""),
    ]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
    lines += ["", "Scaling (generate, one shared engine; sft, LoRA, one process each):", "",
              "| stage | problems or examples | samples/problem | seconds | tokens |", "| --- | --- | --- | --- | --- |"]
    base = next(r for r in gen["generate"] if r["tool"] == "seqdistill generate")
    points = [{"problems": result["sizes"]["problems"], "n": result["sizes"]["n"], **base}] + gen["scaling"]
    lines += [f"| generate | {p['problems']} | {p['n']} | {p['seconds']} | {p['tokens']} |"
              for p in sorted(points, key=lambda p: (p["n"], p["problems"]))]
    main = next(r for r in train["runs"] if r["tool"] == "seqdistill" and r["method"] == "lora" and not r["settings"])
    sft_points = sorted([{"examples": train["examples"], **main}] + train["scaling"], key=lambda p: p["examples"])
    lines += [f"| sft | {p['examples']} | | {p['seconds']} | {p['tokens']} |" for p in sft_points]
    lines += ["", f"Engine start-up: {gen['engine_startup_seconds']} s (not in any figure above). "
              f"Eval: {gen['eval']['benchmark']}, {gen['eval']['problems']} problems x {gen['eval']['n']}.", ""]
    return "\n".join(lines)


def log(records: list[dict]) -> None:
    for r in records:
        print("  " + json.dumps({k: v for k, v in r.items() if k not in ("funnel", "storage_kept", "storage_all_samples")}), flush=True)


def machine() -> dict:
    import torch

    from seqdistill import precision

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cpu_flags": precision.describe_cpu(), "cores": len(os.sched_getaffinity(0)), "ram_gb": round(ram, 1),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="GPU sizes")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="embedded:SmolLM2-135M-Instruct", help="teacher for the generation side")
    p.add_argument("--benchmarks-dir", default="../shared/benchmarks", help="where mawps/test.jsonl is (eval side)")
    p.add_argument("--out", default="benchmarks/results/RESULTS")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        tool, dataset, method, extra, model = json.loads(args.child)
        with tempfile.TemporaryDirectory() as tmp:
            result = train_child(tool, dataset, method, f"{tmp}/out", extra, model)
        print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))
        return

    from seqdistill import config as configlib

    size_name = "full" if args.full else "smoke" if args.smoke else "default"
    size = SIZES[size_name]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bench_dir = Path(args.benchmarks_dir) if Path(args.benchmarks_dir).is_dir() else None
        print("generation side (one vLLM engine) ...", flush=True)
        generation = engine_side(args.model, size, tmp, bench_dir)
        print("training side (one process per run) ...", flush=True)
        training = training_side(tmp / "traces.parquet", size, tmp)
    result = {"size": size_name, "sizes": size, "date": time.strftime("%Y-%m-%d"), "model": args.model,
              "machine": machine(), "versions": configlib.run_info()["versions"], "generation": generation,
              "training": training, "wall_seconds": round(time.perf_counter() - start, 1)}
    result["summary"] = summarize(result)
    result["targets"] = TARGETS
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(result, indent=2))
    Path(args.out + ".md").write_text(markdown(result) + f"\nWhole benchmark: {result['wall_seconds']} s.\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
