"""`seqdistill sft` on a CUDA GPU: every training path run once and checked, then speed and GPU memory
against a plain TRL script.

    .venv/bin/seqdistill generate --config pipelines/generate-quickstart.yaml \
        --set problems.num_problems=48 teacher_logprobs=true output_dir=outputs/gpu-traces   # any machine
    python benchmarks/gpu_sft.py --traces outputs/gpu-traces                               # the GPU machine

The GPU machine needs seqdistill's training side only (torch, transformers, TRL, peft, datasets), not
vLLM. Models are random-weight Llamas with SmolLM2's real tokenizer, built here (nothing downloaded):
- checks, on a tiny student: LoRA with --merge and a validation split, full fine-tuning, offline KD on
  the teacher's stored top-k log-probs, online KD (JSD) from a tiny teacher; each through the real CLI,
  and each must run on cuda in bfloat16 with a finite, falling loss; the adapter's B matrices must be
  non-zero and the merged model must differ from the base and generate;
- figures, on a 16-layer 1024-wide Llama (231M parameters): the CPU suite's runner
  (`benchmarks/run.py --child`, one process per run, same batch, lr and LoRA settings) on the traces
  repeated to --examples rows, one epoch: seqdistill LoRA (default), LoRA without gradient
  checkpointing, full; plain TRL LoRA and full with TRL's defaults.
Writes benchmarks/results/gpu_sft.json and .md; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as suite  # noqa: E402  (benchmarks/run.py: the training runner shared with the CPU suite)


def build_llama(path: Path, tokenizer_dir: str, hidden: int, layers: int, intermediate: int, heads: int, seed: int) -> int:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 4),
                         head_dim=64, max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def sft_cli(out: Path, *settings: str) -> dict:
    """One `seqdistill sft` through the real entry point; its metrics, or the error."""
    cmd = [sys.executable, "-m", "seqdistill", "sft", "--set", f"output_dir={out}", "report_to=[none]", "logging_steps=1",
           "learning_rate=1e-3", "num_train_epochs=4", "max_length=512", *settings]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        return {"error": (proc.stdout + proc.stderr)[-3000:]}
    metrics = json.loads((out / "metrics.json").read_text())
    losses = [h["loss"] for h in metrics["log_history"] if "loss" in h]
    result = {k: metrics.get(k) for k in ("device", "dtype", "train_loss", "train_tokens_per_second", "peak_gpu_memory_mb")}
    result.update(first_loss=losses[0], last_loss=losses[-1])
    result["ok"] = (metrics["device"] == "cuda" and metrics["dtype"] == "bfloat16" and math.isfinite(metrics["train_loss"])
                    and losses[-1] < losses[0])
    return result


def check_lora(run: Path, base: str) -> dict:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = load_file(run / "model" / "adapter_model.safetensors")
    b_nonzero = all(bool(t.abs().sum() > 0) for k, t in adapter.items() if "lora_B" in k)
    merged = AutoModelForCausalLM.from_pretrained(run / "merged").cuda()
    original = AutoModelForCausalLM.from_pretrained(base).cuda()
    delta = max((a.float() - b.float()).abs().max().item()
                for (n, a), (_, b) in zip(merged.named_parameters(), original.named_parameters()) if "q_proj" in n)
    tokenizer = AutoTokenizer.from_pretrained(run / "merged")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True).to("cuda")
    with torch.no_grad():
        new = merged.generate(**ids, max_new_tokens=8, do_sample=False).shape[1] - ids["input_ids"].shape[1]
    return {"lora_B_nonzero": b_nonzero, "merged_q_proj_max_change": delta, "merged_generated_tokens": int(new),
            "ok": b_nonzero and delta > 0 and new > 0}


def child(tool: str, data: Path, method: str, model: str, *extra: str) -> dict:
    """A training run of the CPU suite's runner (benchmarks/run.py), in its own process; a failure is recorded."""
    try:
        return suite.train_in_child(tool, data, method, *extra, model=model)
    except RuntimeError as e:
        return {"tool": tool, "method": method, "settings": list(extra), "error": str(e)}


def markdown(result: dict) -> str:
    lines = [f"# seqdistill sft on {result['gpu']} ({result['date']})\n", "## Checks (tiny random-weight Llama, real CLI)\n",
             "| path | ok | device, dtype | loss first -> last | tok/s | peak GPU MB |", "| --- | --- | --- | --- | --- | --- |"]
    for name, c in result["checks"].items():
        if "error" in c:
            lines.append(f"| {name} | FAILED | | | | |")
        elif "device" in c:
            lines.append(f"| {name} | {c['ok']} | {c['device']}, {c['dtype']} | {c['first_loss']:.3f} -> {c['last_loss']:.3f} "
                         f"| {c['train_tokens_per_second']} | {c['peak_gpu_memory_mb']} |")
        else:
            lines.append(f"| {name} | {c['ok']} | {json.dumps({k: v for k, v in c.items() if k != 'ok'})} | | | |")
    trl = {r["method"]: r for r in result["runs"] if r["tool"] == "trl" and "error" not in r}
    lines += ["", f"## Figures ({result['model_params_m']}M-parameter Llama, {result['examples']} examples, 1 epoch, "
              "batch 8, bf16, one process each)\n",
              "| run | training tok/s | peak GPU MB | speed vs TRL | memory vs TRL |", "| --- | --- | --- | --- | --- |"]
    for r in result["runs"]:
        name = f"{r['tool']} {r['method']}" + (f" ({', '.join(r['settings'])})" if r["settings"] else "")
        if "error" in r:
            lines.append(f"| {name} | FAILED | | | |")
            continue
        base = trl.get(r["method"], {})
        mb, base_mb = r.get("peak_gpu_memory_mb"), base.get("peak_gpu_memory_mb")
        speed = f"{r['tokens_per_second'] / base['tokens_per_second']:.2f}" if base else ""
        lines.append(f"| {name} | {r['tokens_per_second']} | {mb} | {speed} | {f'{mb / base_mb:.2f}' if mb and base_mb else ''} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--traces", required=True, help="a generate output dir made with teacher_logprobs: true")
    p.add_argument("--tokenizer", help="tokenizer directory for the built models (default: the embedded SmolLM2's)")
    p.add_argument("--examples", type=int, default=512, help="rows the traces are repeated to for the figures")
    p.add_argument("--out", default=str(HERE / "results" / "gpu_sft"))
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets
    import torch

    from seqdistill import config as configlib
    from seqdistill import models

    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu_sft.py needs a CUDA GPU")
    tokenizer = args.tokenizer or models.resolve(models.DEFAULT_MODEL)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        student, teacher, big = tmp / "student", tmp / "teacher", tmp / "llama-231m"
        build_llama(student, tokenizer, 256, 2, 512, 4, seed=0)
        build_llama(teacher, tokenizer, 256, 2, 512, 4, seed=1)
        params = build_llama(big, tokenizer, 1024, 16, 2816, 16, seed=2)
        # the stored log-probs stay the generate teacher's; the tokenizer check is pointed at a local model
        # with the same tokenizer, so the machine needs no copy of the teacher
        table = datasets.Dataset.from_parquet(str(Path(args.traces) / "data" / "train.parquet"))
        table = table.remove_columns(["teacher"]).add_column("teacher", [str(teacher)] * len(table))
        (tmp / "traces" / "data").mkdir(parents=True)
        table.to_parquet(str(tmp / "traces" / "data" / "train.parquet"))
        data = [f"dataset={tmp / 'traces'}", f"student={student}"]
        checks = {"lora + merge + eval split": sft_cli(tmp / "lora", *data, "merge=true", "eval_fraction=0.2")}
        if "error" not in checks["lora + merge + eval split"]:
            checks["lora adapter and merged model"] = check_lora(tmp / "lora", str(student))
        checks["full"] = sft_cli(tmp / "full", *data, "method=full")
        checks["kd offline (top-k log-probs)"] = sft_cli(tmp / "kd-offline", *data, "kd.mode=offline", "kd.alpha=0.5")
        checks["kd online (jsd)"] = sft_cli(tmp / "kd-online", *data, "kd.mode=online", f"kd.teacher={teacher}",
                                            "kd.divergence=jsd")
        for name, c in checks.items():
            print(f"{'ok' if c.get('ok') else 'FAILED'}: {name} {json.dumps(c)[:3000]}", flush=True)

        repeated = tmp / "repeated.parquet"
        table.select([i % len(table) for i in range(args.examples)]).to_parquet(str(repeated))
        runs = [child("seqdistill", repeated, "lora", str(big)),
                child("seqdistill", repeated, "lora", str(big), "gradient_checkpointing=false"),
                child("trl", repeated, "lora", str(big)),
                child("seqdistill", repeated, "full", str(big)),
                child("trl", repeated, "full", str(big))]
    result = {"gpu": torch.cuda.get_device_name(0), "date": time.strftime("%Y-%m-%d"),
              "versions": configlib.run_info()["versions"], "model_params_m": round(params / 1e6, 1),
              "examples": args.examples, "checks": checks, "runs": runs, "wall_seconds": round(time.perf_counter() - start, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(result, indent=2))
    Path(args.out + ".md").write_text(markdown(result) + f"\nWhole benchmark: {result['wall_seconds']} s.\n")
    print(markdown(result))
    sys.exit(0 if all(c.get("ok") for c in checks.values()) and not any("error" in r for r in runs) else 1)


if __name__ == "__main__":
    main()
