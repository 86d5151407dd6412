"""Plain SFT vs SFT + offline logit KD on the quickstart task, after `make quickstart` (or any quickstart run).

    .venv/bin/python benchmarks/kd_vs_sft.py --run runs/quickstart            # alpha 0.5, forward KL, T 1

Takes the run's kept traces, adds the teacher's top-20 log-probs with `seqdistill score` (one vLLM
prompt-log-probs pass; `generate.teacher_logprobs: true` would record the same during sampling), trains
the same LoRA student with `kd.mode: offline` and every other setting of the run's sft stage, and
evaluates it with the run's eval settings. Reports held-out pass@1, the KL from the teacher to each
student on the teacher's own held-out responses (full vocabulary), training tokens/s and bytes per
stored token. Results: benchmarks/results/kd_vs_sft.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def kl_on_teacher_responses(teacher_path: str, student_path: str, samples: Path, limit: int, prompt_cfg) -> float:
    """Mean KL(teacher || student) per response token, full vocabulary, on the teacher's held-out responses."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from seqdistill import kd_loss, prompts, store

    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    template = prompts.load_template(prompt_cfg.template)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float32)
    student = AutoModelForCausalLM.from_pretrained(student_path, dtype=torch.float32)
    rows = store.read_parquet([samples]).select(range(limit))
    total, count = 0.0, 0
    for row in rows:
        head = prompts.encode(tokenizer, prompts.render(template, row), prompt_cfg)  # the prompt eval gave
        ids = torch.tensor([head + tokenizer(row["response"], add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            t, s = kd_loss.full_distributions(student(ids).logits[0, len(head) - 1 : -1],
                                         teacher(ids).logits[0, len(head) - 1 : -1], 1.0)
        total += kd_loss.divergence(t, s, "forward_kl").sum().item()
        count += len(t)
    return total / count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/quickstart", help="the run directory of ...")
    p.add_argument("--recipe", default="pipelines/quickstart.yaml", help="... this recipe")
    p.add_argument("--set", dest="overrides", nargs="*", default=["kd.alpha=0.5"], help="kd settings for the KD student")
    p.add_argument("--kl-samples", type=int, default=200)
    p.add_argument("--out", default="benchmarks/results/kd_vs_sft")
    args = p.parse_args()

    from seqdistill import config as configlib
    from seqdistill import evaluate, models, pipeline, score, sft

    run = Path(args.run)
    cfg = pipeline.load(args.recipe, [f"run_dir={run}"])
    work = run / "kd"
    scored = score.run(configlib.load(score.ScoreConfig, None, [
        f"model={cfg.generate.model}", f"dataset={cfg.generate.output_dir}", f"output_dir={work / 'scored'}",
        f"engine.dtype={cfg.generate.engine.dtype}", f"engine.max_model_len={cfg.generate.engine.max_model_len}"]))
    raw = configlib.to_dict(cfg.sft)
    raw.update(dataset=str(work / "scored"), output_dir=str(work / "sft"), overwrite=False, resume=False)
    raw["kd"]["mode"] = "offline"
    for item in args.overrides:
        configlib.apply_override(raw, item)
    kd_sft = configlib.build(sft.SFTStageConfig, raw)
    kd_metrics = sft.run(kd_sft).metrics
    kd_eval = cfg.eval
    kd_eval.models = [evaluate.ModelEntry(str(work / "sft" / "merged"), name="student-after-kd")]
    kd_eval.output_dir, kd_eval.overwrite = str(work / "eval"), False
    kd_results = evaluate.run(kd_eval)

    base_results = json.loads((run / "eval" / "results.json").read_text())
    sft_metrics = json.loads((run / "sft" / "metrics.json").read_text())
    bench = kd_eval.benchmarks[0].name
    teacher_name = next(n for n in base_results if n.startswith("teacher"))
    teacher_samples = run / "eval" / teacher_name / bench / "samples.parquet"
    teacher = models.resolve(cfg.generate.model)
    result = {
        "run": os.path.relpath(run), "benchmark": bench, "kd": configlib.to_dict(kd_sft.kd),
        "storage": scored["teacher_logprobs"],
        "students": {
            "sft": {"pass@1": base_results["student-after"][bench]["pass@1"],
                    "pass@1_stderr": base_results["student-after"][bench]["pass@1_stderr"],
                    "kl_to_teacher": kl_on_teacher_responses(teacher, str(run / "sft" / "merged"), teacher_samples, args.kl_samples, cfg.eval.prompt),
                    "train_tokens_per_second": sft_metrics["train_tokens_per_second"], "train_seconds": sft_metrics["train_seconds"]},
            "sft+kd": {"pass@1": kd_results["student-after-kd"][bench]["pass@1"],
                       "pass@1_stderr": kd_results["student-after-kd"][bench]["pass@1_stderr"],
                       "kl_to_teacher": kl_on_teacher_responses(teacher, str(work / "sft" / "merged"), teacher_samples, args.kl_samples, cfg.eval.prompt),
                       "train_tokens_per_second": kd_metrics["train_tokens_per_second"], "train_seconds": kd_metrics["train_seconds"]},
        },
        "untouched": {"pass@1": base_results[teacher_name][bench]["pass@1"],
                      "kl_to_teacher": 0.0 if cfg.sft.student == cfg.generate.model else None},
    }
    lines = [f"# Plain SFT vs SFT + offline logit KD ({bench}, run {run})", "",
             f"KD: {json.dumps(result['kd'])}; storage {result['storage']['bytes_per_token']} bytes/token "
             f"(k={result['storage']['k']}, log-prob error <= {result['storage']['max_logprob_error_nats']} nats)", "",
             "| student | held-out pass@1 | KL(teacher || student), nats/token | training tokens/s | training s |",
             "| --- | --- | --- | --- | --- |"]
    for name, r in result["students"].items():
        lines.append(f"| {name} | {r['pass@1']:.3f} ± {r['pass@1_stderr']:.3f} | {r['kl_to_teacher']:.4f} | "
                     f"{r['train_tokens_per_second']} | {r['train_seconds']} |")
    lines.append(f"| untouched | {result['untouched']['pass@1']:.3f} | {result['untouched']['kl_to_teacher']} | | |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(result, indent=2))
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
