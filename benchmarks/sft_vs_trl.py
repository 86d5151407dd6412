"""Training speed and peak memory of `seqdistill sft` against a plain TRL `SFTTrainer` script.

    .venv/bin/python benchmarks/sft_vs_trl.py --dataset outputs/generate-quickstart
    .venv/bin/python benchmarks/sft_vs_trl.py                 # synthetic arithmetic traces

Same data (the `messages` traces), same student (SmolLM2-135M-Instruct), same LoRA (r 16, all-linear),
batch size, learning rate and one epoch. The plain script uses TRL's defaults for everything else.
Each side runs in its own process (peak RSS is per process), alternating. Tokens/s counts the
non-padding tokens of the training set over the training time. Results: benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LORA = dict(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
BATCH, LR = 8, 5e-4


def synthetic_traces(path: Path, n: int) -> None:
    from seqdistill import problems

    rows = []
    for p in problems.load(problems.ProblemsConfig(num_problems=n, max_operand=20)):
        rows.append({"messages": [{"role": "user", "content": p["question"] + "\nAnswer with the number at the end."},
                                  {"role": "assistant", "content": f"Let's work it out step by step. The answer is {p['answer']}."}]})
    path.write_text("\n".join(json.dumps(r) for r in rows))


def run_plain_trl(dataset: str, out: str) -> dict:
    """What a user would write with TRL alone."""
    import datasets
    import torch
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from seqdistill import models

    student = models.resolve(models.DEFAULT_MODEL)
    data = datasets.load_dataset("json", data_files=dataset, split="train")
    trainer = SFTTrainer(model=student, train_dataset=data, peft_config=LoraConfig(**LORA),
                         args=SFTConfig(output_dir=out, per_device_train_batch_size=BATCH, learning_rate=LR,
                                        num_train_epochs=1, report_to="none", save_strategy="no",
                                        use_cpu=not torch.cuda.is_available()))  # TRL refuses CPU without it
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    start = time.perf_counter()
    trainer.train()
    return {"seconds": time.perf_counter() - start, "tokens": tokens}


def run_seqdistill(dataset: str, out: str) -> dict:
    from seqdistill import config as configlib
    from seqdistill import sft

    cfg = configlib.load(sft.SFTStageConfig, None, [
        f"dataset={dataset}", f"output_dir={out}", f"per_device_train_batch_size={BATCH}", f"learning_rate={LR}",
        "num_train_epochs=1", "report_to=[none]", "lora.r=16", "lora.alpha=32", "save_steps=100000"])
    metrics = sft.run(cfg).metrics
    return {"seconds": metrics["train_seconds"], "tokens": metrics["train_tokens"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", help="a .jsonl of messages (default: synthetic arithmetic traces)")
    p.add_argument("--examples", type=int, default=160)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--tool", choices=["trl", "seqdistill"], help=argparse.SUPPRESS)  # child process
    p.add_argument("--out", default="benchmarks/results/sft_vs_trl.json")
    args = p.parse_args()

    if args.tool:  # child: one training run, result as JSON on the last line
        with tempfile.TemporaryDirectory() as tmp:
            result = (run_plain_trl if args.tool == "trl" else run_seqdistill)(args.dataset, f"{tmp}/out")
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as tmp:
        dataset = args.dataset
        if dataset is None:
            dataset = f"{tmp}/traces.jsonl"
            synthetic_traces(Path(dataset), args.examples)
        runs = []
        for _ in range(args.repeats):
            for tool in ("trl", "seqdistill"):
                proc = subprocess.run([sys.executable, __file__, "--tool", tool, "--dataset", dataset],
                                      capture_output=True, text=True, check=True)
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                result.update(tool=tool, tokens_per_second=round(result["tokens"] / result["seconds"], 1))
                runs.append(result)
                print(f"{tool:>10}: {result['tokens']} tokens in {result['seconds']:.1f} s = "
                      f"{result['tokens_per_second']} tok/s, peak RSS {result['peak_rss_mb']} MB", flush=True)

    def mean(tool, key):
        sel = [r[key] for r in runs if r["tool"] == tool]
        return sum(sel) / len(sel)

    summary = {
        "speed_ratio_seqdistill_over_trl": round(mean("seqdistill", "tokens_per_second") / mean("trl", "tokens_per_second"), 3),
        "memory_ratio_seqdistill_over_trl": round(mean("seqdistill", "peak_rss_mb") / mean("trl", "peak_rss_mb"), 3),
    }
    from seqdistill import config as configlib

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"runs": runs, **summary, "batch": BATCH, "lora": LORA,
                                          "versions": configlib.run_info()["versions"]}, indent=2))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
