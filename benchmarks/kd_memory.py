"""Peak memory and speed of offline logit KD against plain sft on the same traces (issue 26: KD at no more
than 1.1x plain sft's memory).

    .venv/bin/python benchmarks/kd_memory.py --dataset runs/teacher-qwen-coder/generate --max-steps 10

Adds the teacher's top-20 log-probs to the traces with `seqdistill score` (a same-tokenizer teacher: the
student itself by default), then trains the same LoRA student twice, each in a fresh process, one after the
other: plain sft, and sft with `kd.mode: offline`. Compares each run's peak RSS (metrics.json: the main
process's ru_maxrss) and training tokens/s. Results: benchmarks/results/kd_memory.json and .md, with the CPU's
flags. Run it alone: anything beside it changes both figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

SEQDISTILL = [sys.executable, "-m", "seqdistill"]


def sft(dataset: str, out: Path, student: str, max_steps: int, kd: bool) -> dict:
    settings = [f"student={student}", f"dataset={dataset}", f"output_dir={out}", "method=lora", f"max_steps={max_steps}",
                "per_device_train_batch_size=8", "max_length=640", "logging_steps=5", "report_to=[none]", "overwrite=true"]
    if kd:
        settings += ["kd.mode=offline", "kd.alpha=0.5"]
    subprocess.run([*SEQDISTILL, "sft", "--set", *settings], check=True)
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="a generate output_dir (its kept traces)")
    p.add_argument("--teacher", default="embedded:SmolLM2-135M-Instruct", help="same tokenizer as the student")
    p.add_argument("--student", default="embedded:SmolLM2-135M-Instruct")
    p.add_argument("--max-steps", type=int, default=10)
    p.add_argument("--work", default="runs/kd-memory")
    p.add_argument("--out", default="benchmarks/results/kd_memory")
    args = p.parse_args()

    from seqdistill import precision

    work = Path(args.work)
    scored = work / "scored"
    subprocess.run([*SEQDISTILL, "score", "--set", f"model={args.teacher}", f"dataset={args.dataset}",
                    f"output_dir={scored}", "overwrite=true"], check=True)
    runs = {name: sft(str(scored), work / name, args.student, args.max_steps, kd=name == "sft+kd")
            for name in ("sft", "sft+kd")}
    keep = ("peak_rss_mb", "train_tokens_per_second", "train_seconds", "global_step", "dtype", "train_loss")
    result = {"date": datetime.date.today().isoformat(), "cpu_flags": precision.describe_cpu(),
              "dataset": args.dataset, "teacher": args.teacher, "student": args.student, "max_steps": args.max_steps,
              "runs": {name: {k: m[k] for k in keep} for name, m in runs.items()}}
    plain, kd = result["runs"]["sft"], result["runs"]["sft+kd"]
    result["memory_ratio"] = round(kd["peak_rss_mb"] / plain["peak_rss_mb"], 3)
    result["speed_ratio"] = round(kd["train_tokens_per_second"] / plain["train_tokens_per_second"], 3)
    Path(args.out + ".json").write_text(json.dumps(result, indent=2))
    rows = "\n".join(f"| {name} | {m['peak_rss_mb']:.0f} | {m['train_tokens_per_second']:.1f} | {m['train_seconds']:.0f} | "
                     f"{m['global_step']} | {m['dtype']} |" for name, m in result["runs"].items())
    Path(args.out + ".md").write_text(
        f"# Offline logit KD against plain sft: memory and speed ({result['date']}, CPU flags: {result['cpu_flags']})\n\n"
        f"LoRA on `{args.student}`, {args.max_steps} steps of batch 8 on the kept traces of `{args.dataset}`; KD: "
        f"top-20 log-probs of `{args.teacher}` (`seqdistill score`), `kd.mode: offline`, alpha 0.5. One process "
        "each, one after the other, nothing else running.\n\n"
        "| run | peak RSS (MB) | training tok/s | training s | steps | dtype |\n| --- | --- | --- | --- | --- | --- |\n"
        f"{rows}\n\nKD / plain: memory **{result['memory_ratio']}x**, speed {result['speed_ratio']}x.\n")
    print(Path(args.out + ".md").read_text())


if __name__ == "__main__":
    main()
