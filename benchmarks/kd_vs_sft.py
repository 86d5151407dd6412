"""Plain SFT vs SFT + offline logit KD on a run's traces, after `make quickstart` (or any `seqdistill run`).

    .venv/bin/python benchmarks/kd_vs_sft.py --run runs/quickstart            # alpha 0.5, forward KL, T 1
    .venv/bin/python benchmarks/kd_vs_sft.py --run runs/teacher-qwen-coder --recipe pipelines/teacher-qwen-coder.yaml \
        --set kd.alpha=0.5 kd.cross_tokenizer=hybrid --teacher-samples TEACHER_EVAL/teacher/svamp/samples.parquet \
        --kl-samples 100 --work runs/teacher-qwen-coder/kd-hybrid --out benchmarks/results/kd_xtok_hybrid   # across tokenizers

Takes the run's kept traces, adds the teacher's top-20 log-probs with `seqdistill score` (one vLLM
prompt-log-probs pass; `generate.teacher_logprobs: true` would record the same during sampling), trains
the same LoRA student with `kd.mode: offline` and every other setting of the run's sft stage, and
evaluates it with the run's eval settings (every benchmark; paired differences against the untouched and the
SFT student). Reports pass@1, the divergences from the teacher to each student on the teacher's own held-out
responses (KL over the tokens both vocabularies share and ULD, on aligned tokens: seqdistill.training.xtok; with one
tokenizer the full-vocabulary KL), training tokens/s, peak RSS and bytes per stored token.
Results: benchmarks/results/kd_vs_sft.json and .md (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from run import machine  # noqa: E402  (benchmarks/run.py: CPU, its flags, cores, RAM, GPU)


def divergence_on_teacher_responses(teacher_path: str, student_path: str, samples: Path, limit: int, prompt_cfg) -> dict:
    """Teacher vs student on the teacher's own held-out responses, per aligned response token (seqdistill.training.xtok:
    both models predict it after the same text; every token when they share a tokenizer). `kl_to_teacher`:
    KL(teacher || student) over the tokens both vocabularies hold with the same bytes, each side renormalised
    there (with one tokenizer: the full vocabulary, nothing renormalised); `uld_to_teacher`: the ULD distance
    over the full vocabularies; `shared_mass`: the teacher's mean probability on the shared tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from seqdistill import store
    from seqdistill.engines import prompts
    from seqdistill.training import kd_loss, xtok

    teacher_tok, student_tok = AutoTokenizer.from_pretrained(teacher_path), AutoTokenizer.from_pretrained(student_path)
    aligner = xtok.Aligner(student_tok, teacher_tok)
    t_shared = torch.as_tensor((aligner.to_student >= 0).nonzero()[0])  # the shared vocabulary: xtok.id_map
    s_shared = torch.as_tensor(aligner.to_student[t_shared.numpy()])
    template = prompts.load_template(prompt_cfg.template)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float32)
    student = AutoModelForCausalLM.from_pretrained(student_path, dtype=torch.float32)
    rows = store.read_parquet([samples]).select(range(limit))
    kl, uld, mass, count = 0.0, 0.0, 0.0, 0
    for row in rows:
        text = row["response"]
        logits = []
        for model, tok, pieces in ((teacher, teacher_tok, aligner.teacher_pieces), (student, student_tok, aligner.student_pieces)):
            head = prompts.encode(tok, prompts.render(template, row), prompt_cfg)  # the prompt eval gave
            body = tok(text, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                out = model(torch.tensor([head + body])).logits[0, len(head) - 1 : -1, : len(pieces)].float()
            logits.append((body, out))
        (t_body, t_logits), (s_body, s_logits) = logits
        t_idx, s_idx = aligner.pairs(t_body, s_body, text)
        p = torch.softmax(t_logits[torch.as_tensor(t_idx)], -1)
        q = torch.softmax(s_logits[torch.as_tensor(s_idx)], -1)
        p_shared, q_shared = p[:, t_shared], q[:, s_shared]
        mass += p_shared.sum().item()
        p_shared, q_shared = (x / x.sum(-1, keepdim=True) for x in (p_shared, q_shared))
        kl += kd_loss.kl(p_shared.clamp(min=1e-30).log(), q_shared.clamp(min=1e-30).log()).sum().item()
        uld += kd_loss.uld(p, q).sum().item()
        count += len(t_idx)
    return {"kl_to_teacher": kl / count, "uld_to_teacher": uld / count, "shared_mass": mass / count, "aligned_tokens": count}


def verdicts(eval_dir: Path, model: str, bench: str) -> list[list[bool]]:
    """One list of verdicts per problem, in problem order."""
    import pandas as pd

    frame = pd.read_parquet(eval_dir / model / bench / "samples.parquet").sort_values(["problem_id", "sample_index"])
    return [list(group["correct"]) for _, group in frame.groupby("problem_id", sort=True)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/quickstart", help="the run directory of ...")
    p.add_argument("--recipe", default="pipelines/quickstart.yaml", help="... this recipe")
    p.add_argument("--set", dest="overrides", nargs="*", default=["kd.alpha=0.5"], help="kd settings for the KD student")
    p.add_argument("--teacher-samples", help="the teacher's own held-out responses for the divergences (samples.parquet; "
                   "default: those of the run's eval model named teacher*)")
    p.add_argument("--kl-samples", type=int, default=200)
    p.add_argument("--work", help="where the KD student's scored data, training and eval go (default: RUN/kd)")
    p.add_argument("--out", default="benchmarks/results/kd_vs_sft")
    args = p.parse_args()

    from seqdistill import config as configlib
    from seqdistill import evaluate, metrics, models, pipeline, score, sft

    run = Path(args.run)
    cfg = pipeline.load(args.recipe, [f"run_dir={run}"])
    work = Path(args.work) if args.work else run / "kd"
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
    kd_eval.compare, kd_eval.output_dir, kd_eval.overwrite = [], str(work / "eval"), False
    kd_results = evaluate.run(kd_eval)

    base_results = json.loads((run / "eval" / "results.json").read_text())
    sft_metrics = json.loads((run / "sft" / "metrics.json").read_text())
    benches = [b.name for b in kd_eval.benchmarks]
    teacher_name = next((n for n in base_results if n.startswith("teacher")), None)
    teacher_samples = Path(args.teacher_samples) if args.teacher_samples else run / "eval" / teacher_name / benches[0] / "samples.parquet"
    teacher = models.resolve(cfg.generate.model)
    before = "student-before" if "student-before" in base_results else teacher_name
    dirs = {before: run / "eval", "student-after": run / "eval", "student-after-kd": work / "eval"}
    paired = {bench: {f"{m} - {b}": metrics.paired(verdicts(dirs[b], b, bench), verdicts(dirs[m], m, bench))
                      for m, b in (("student-after", before), ("student-after-kd", before), ("student-after-kd", "student-after"))}
              for bench in benches}
    cache_file = run / "divergences.json"  # per (student, teacher responses, count): the same students recur across KD runs
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}

    def divergences(student: str) -> dict:
        key = f"{os.path.relpath(student)}|{os.path.relpath(teacher_samples)}|{args.kl_samples}"
        if key not in cache:
            cache[key] = divergence_on_teacher_responses(teacher, student, teacher_samples, args.kl_samples, cfg.eval.prompt)
            cache_file.write_text(json.dumps(cache, indent=2))
        return cache[key]

    students = {"sft": (base_results["student-after"], str(run / "sft" / "merged"), sft_metrics),
                "sft+kd": (kd_results["student-after-kd"], str(work / "sft" / "merged"), kd_metrics)}
    result = {
        "run": os.path.relpath(run), "benchmarks": benches, "kd": configlib.to_dict(kd_sft.kd),
        "date": time.strftime("%Y-%m-%d"), "machine": machine(),
        "storage": scored["teacher_logprobs"], "teacher": cfg.generate.model, "student": cfg.sft.student,
        "divergence_samples": os.path.relpath(teacher_samples),
        "students": {name: {"pass@1": {b: r[b]["pass@1"] for b in benches}, "pass@1_stderr": {b: r[b]["pass@1_stderr"] for b in benches},
                            **divergences(path),
                            "train_tokens_per_second": m["train_tokens_per_second"], "train_seconds": m["train_seconds"],
                            "peak_rss_mb": m.get("peak_rss_mb")}
                     for name, (r, path, m) in students.items()},
        "untouched": {"pass@1": {b: base_results[before][b]["pass@1"] for b in benches},
                      **divergences(models.resolve(cfg.sft.student))},
        "paired": paired,
    }
    lines = [f"# Plain SFT vs SFT + offline logit KD ({', '.join(benches)}, run {result['run']})", "",
             f"{result['date']}, {result['machine']['cpu']} ({result['machine']['cores']} cores, CPU flags "
             f"{result['machine']['cpu_flags']}). Teacher {result['teacher']}, student {result['student']}. KD: {json.dumps(result['kd'])}; storage "
             f"{result['storage']['bytes_per_token']} bytes/token (k={result['storage']['k']}, log-prob error <= "
             f"{result['storage']['max_logprob_error_nats']} nats)", "",
             "| student | " + " | ".join(f"{b} pass@1" for b in benches) + " | KL(teacher || student), nats/token | "
             "ULD to teacher | training tokens/s | training s | peak RSS MB |",
             "| --- |" + " --- |" * (len(benches) + 5)]
    for name, r in {**result["students"], "untouched": result["untouched"]}.items():
        scores = " | ".join(f"{r['pass@1'][b]:.3f}" + (f" ± {r['pass@1_stderr'][b]:.3f}" if "pass@1_stderr" in r else "") for b in benches)
        lines.append(f"| {name} | {scores} | {r['kl_to_teacher']:.4f} | {r['uld_to_teacher']:.4f} | "
                     f"{r.get('train_tokens_per_second', '')} | {r.get('train_seconds', '')} | {r.get('peak_rss_mb') or ''} |")
    lines += ["", f"Divergences on {args.kl_samples} of the teacher's own responses ({result['divergence_samples']}), at "
              f"{result['students']['sft']['aligned_tokens']} aligned tokens; the teacher's mean mass on tokens both "
              f"vocabularies share: {result['untouched']['shared_mass']:.3f}.", "",
              "| benchmark | pair | Δ pass@1 ± paired s.e. | gained | lost | problems |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {b} | {pair} | {c['delta_pass@1']:+.3f} ± {c['delta_pass@1_stderr']:.3f} | {c['gained']} | {c['lost']} | {c['problems']} |"
              for b, per in paired.items() for pair, c in per.items()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(result, indent=2))
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
