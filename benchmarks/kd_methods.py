"""KD methods side by side on a smaller student built from the teacher, on a quickstart run's traces.

    .venv/bin/python benchmarks/kd_methods.py --run runs/quickstart        # the whole table (about 40 min on 2 CPU cores)
    .venv/bin/python benchmarks/kd_methods.py --run runs/quickstart --work /tmp/kdm --out /tmp/kdm/result \
        --max-steps 2 --problems 8 --kl-samples 8                          # a smoke run of every method

The teacher is the run's generate model (SmolLM2-135M-Instruct). The student is built from it with
`seqdistill student` (`--layers`, default every:2: 15 of its 30 decoder layers, 81M of 135M parameters, as
DistilBERT initialised its student from every other layer of BERT). Every method trains that student in
full (`method: full`: a cut model needs all its weights to heal) on the run's kept traces, with the run's
sft settings otherwise (epochs, batch, max_length, scheduler) and `learning_rate` 5e-4 (a cut model starts
far off: 16 steps of plain SFT took KL to the teacher from 11.2 to 5.60 nats/token at 1e-4, to 4.63 at 5e-4),
each in a process of its own, so its peak RSS (VmHWM) is its own:

| method | what is added to plain SFT |
| --- | --- |
| sft | nothing (kd.mode none) |
| logit_kd | online logit KD from the teacher: alpha 0.5, forward KL, T 1 |
| hidden_states | logit_kd + kd.hidden_states (weight 1, normalised MSE, auto layers: student block i onto teacher block 2i) |
| attention | logit_kd + kd.attention (weight 1, auto layers, KL of attention rows head by head) |
| relations | logit_kd + kd.relations (weight 25, RKD distance, as the RKD paper weighs it) |
| on_policy | logit_kd + kd.on_policy (fraction 0.5: the student samples half the batches' completions, up to 64 tokens) |

Each term is added to logit KD alone (not on top of each other), so a row minus the logit_kd row is that
term's effect. Each student, and the student before training (`untrained`), is then evaluated with the
run's eval settings on the recipe's first benchmark (its own eval directory each, so a rerun skips what is done); the teacher's row is the
run's own eval. Reported: held-out pass@1 ± s.e., KL(teacher || student) per token on the teacher's own
held-out responses (full vocabulary, `kd_vs_sft.divergence_on_teacher_responses`), training tokens/s, training
seconds and peak RSS. Writes OUT.json (every figure, settings, machine, versions, date) and OUT.md.

Resumable, so the table can be built in parts that each stay under 10 minutes on 2 cores: `--only sft`,
`--only logit_kd`, ... (a method trained before with the same settings is reused; changed settings train it
again and drop its old eval and KL), then one call without `--only` writes the whole table from what is done
(evals resume per student, KL values are kept in WORK/kl/). Run with other --problems or --eval-set, a
student's eval is redone.

`--set KEY=VALUE` changes a setting of every method's sft run; `--set METHOD:KEY=VALUE` of one method's
(e.g. `--set relations:kd.relations.kind=angle`). `--eval-set` changes the eval settings (e.g.
`--eval-set engine.extra={compilation_config: {mode: 0}}` skips vLLM's compile step at each engine start).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from kd_vs_sft import divergence_on_teacher_responses
from run import machine, peak_rss_mb

TRAINED = ("sft", "logit_kd", "hidden_states", "attention", "relations", "on_policy")
METHODS = ("untrained", *TRAINED)
FULL = ["method=full", "learning_rate=5e-4", "merge=false", "save_steps=100000", "report_to=[none]", "resume=false"]
LOGIT = ["kd.mode=online", "kd.alpha=0.5", "kd.divergence=forward_kl", "kd.temperature=1.0"]
TERMS = {"sft": [], "logit_kd": [],
         "hidden_states": ["kd.hidden_states.weight=1", "kd.hidden_states.loss=mse", "kd.hidden_states.normalize=true"],
         "attention": ["kd.attention.weight=1"],
         "relations": ["kd.relations.weight=25", "kd.relations.kind=distance"],
         "on_policy": ["kd.on_policy.fraction=0.5", "kd.on_policy.max_new_tokens=64", "kd.on_policy.temperature=1.0"]}


def sft_settings(method: str, base: dict, student: str, teacher: str, work: Path, overrides: list[str]) -> dict:
    """The sft config (as a dict) of one method: the run's sft stage, the student, full fine-tuning, its terms."""
    from seqdistill import config as configlib

    raw = json.loads(json.dumps(base))
    raw.pop("kd", None)
    items = [f"student={student}", f"output_dir={work / method}", *FULL, *(
        [] if method == "sft" else [*LOGIT, f"kd.teacher={teacher}"]), *TERMS[method]]
    for item in overrides:  # KEY=VALUE for every method, METHOD:KEY=VALUE for one
        key = item.split("=", 1)[0]
        if ":" in key:
            only, item = item.split(":", 1)
            if only not in TRAINED:
                raise SystemExit(f"--set {only}:...: {only} is not a trained method ({', '.join(TRAINED)})")
            if only != method:
                continue
        items.append(item)
    for item in items:
        configlib.apply_override(raw, item)
    return raw


def train_child(settings: dict) -> dict:
    """One sft run in this (fresh) process: its metrics and this process's peak RSS."""
    from seqdistill import config as configlib
    from seqdistill import sft

    metrics = sft.run(configlib.build(sft.SFTStageConfig, settings)).metrics
    keep = ("train_loss", "train_seconds", "train_tokens", "train_tokens_per_second", "global_step", "device", "dtype")
    terms = lambda entry: {k: round(v, 4) for k, v in entry.items() if k.endswith("_loss") and k != "train_loss"}  # noqa: E731
    history = metrics.get("log_history", [])
    return {**{k: metrics.get(k) for k in keep}, "peak_rss_mb": peak_rss_mb(),
            "term_losses": terms(history[-1]) if history else {},  # each term's mean over the run (ce, kd, features)
            "term_losses_by_step": [{"step": e["step"], **terms(e)} for e in history if "loss" in e]}


def train(method: str, settings: dict, work: Path) -> dict:
    """`train_child` in a process of its own; reused when that method's record holds the same settings."""
    record = work / f"{method}.json"
    if record.is_file() and json.loads(record.read_text())["settings"] == settings:
        print(f"{method}: trained before, reused ({record})", flush=True)
        return json.loads(record.read_text())
    log = work / f"{method}.log"
    print(f"{method}: training (log: {log})", flush=True)
    shutil.rmtree(work / "eval" / method, ignore_errors=True)  # what was measured on an earlier student of this name
    (work / "kl" / f"{method}.json").unlink(missing_ok=True)
    start = time.perf_counter()
    with open(log, "w") as stderr:  # overwrite: a stale run of this method with other settings is replaced
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps({**settings, "overwrite": True})],
                              stdout=subprocess.PIPE, stderr=stderr, text=True)
    if proc.returncode:
        raise SystemExit(f"{method} failed (exit {proc.returncode}):\n{log.read_text()[-3000:]}")
    result = {**json.loads(proc.stdout.strip().splitlines()[-1]), "wall_seconds": round(time.perf_counter() - start, 1),
              "settings": settings}
    record.write_text(json.dumps(result, indent=2))
    return result


def evaluate_model(name: str, model: str, eval_raw: dict, work: Path) -> dict:
    from seqdistill import config as configlib
    from seqdistill import evaluate

    raw = json.loads(json.dumps(eval_raw))
    raw.update(models=[{"model": model, "name": name}], output_dir=str(work / "eval" / name), report_to=["none"],
               compare=[], push_to_hub=None, benchmarks=raw["benchmarks"][:1])  # the recipe's first benchmark
    cfg = configlib.build(evaluate.EvalConfig, raw)
    cfg.overwrite = evaluate.output_layout(cfg).state(Path(cfg.output_dir), cfg) == "different"  # other eval settings
    start = time.perf_counter()
    results = evaluate.run(cfg)[name][cfg.benchmarks[0].name]
    return {"pass@1": results["pass@1"], "pass@1_stderr": results["pass@1_stderr"],
            "eval_seconds": round(time.perf_counter() - start, 1)}


def kl(name: str, teacher: str, model: str, samples: Path, limit: int, prompt_cfg, work: Path) -> float:
    """KL(teacher || student) on the teacher's responses, kept in WORK/kl/NAME.json until the student is retrained."""
    cache = work / "kl" / f"{name}.json"
    if cache.is_file() and json.loads(cache.read_text())["samples"] == limit:
        return json.loads(cache.read_text())["kl_to_teacher"]
    value = divergence_on_teacher_responses(teacher, model, samples, limit, prompt_cfg)["kl_to_teacher"]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"samples": limit, "kl_to_teacher": value}))
    return value


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# KD methods on a {result['student']['kept_layers']}-layer student cut from the teacher "
             f"({result['benchmark']}, {result['date']})", "",
             f"Teacher `{result['teacher']}` ({result['student']['source_layers']} layers, "
             f"{result['student']['source_parameters'] / 1e6:.1f}M parameters); student: its layers "
             f"{result['student']['kept']} ({result['student']['parameters'] / 1e6:.1f}M), trained in full on "
             f"{result['traces']} kept traces of run `{result['run']}`; eval {result['eval']}. "
             f"Machine: {m['cpu']} ({m.get('cpu_flags', 'flags not recorded')}), {m['cores']} cores, {m['ram_gb']} GiB{', ' + m['gpu'] if m['gpu'] else ''}.", "",
             "| student | held-out pass@1 | KL(teacher ‖ student), nats/token | training tokens/s | training s | "
             "peak RSS, MB | train loss, mean of the run |", "| --- | --- | --- | --- | --- | --- | --- |"]
    t = result["teacher_row"]
    lines.append(f"| teacher (run's eval) | {t['pass@1']:.3f} ± {t['pass@1_stderr']:.3f} | 0 | | | | |")
    for name, r in result["methods"].items():
        train = r.get("training", {})
        cells = [f"{r['pass@1']:.3f} ± {r['pass@1_stderr']:.3f}", f"{r['kl_to_teacher']:.4f}",
                 str(train.get("train_tokens_per_second", "")), str(train.get("train_seconds", "")),
                 str(train.get("peak_rss_mb", "")),
                 f"{train['train_loss']:.4f}" if train.get("train_loss") is not None else ""]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Settings of every trained student: {' '.join(result['common_settings'])}; per method: "
              + "; ".join(f"{k}: {' '.join(v) or '(none)'}" for k, v in result["method_settings"].items()) + ".",
              f"KL on the teacher's first {result['kl_samples']} held-out responses. Wall time {result['wall_minutes']} min."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/quickstart", help="a finished quickstart run directory (read only)")
    p.add_argument("--recipe", default="pipelines/quickstart.yaml", help="the recipe that run used")
    p.add_argument("--work", help="where students and their evals go (default: RUN/kd_methods)")
    p.add_argument("--layers", default="every:2", help="the student's layers of the teacher (seqdistill student)")
    p.add_argument("--only", nargs="+", choices=METHODS, metavar="METHOD", help=f"only these: {', '.join(METHODS)}")
    p.add_argument("--max-steps", type=int, help="training steps per method (default: the recipe's epochs)")
    p.add_argument("--problems", type=int, help="held-out problems per eval (default: the recipe's)")
    p.add_argument("--kl-samples", type=int, default=200, help="teacher responses the KL is measured on")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="[METHOD:]KEY=VALUE",
                   help="sft settings of every method (or of METHOD)")
    p.add_argument("--eval-set", nargs="+", default=[], metavar="KEY=VALUE", help="eval settings")
    p.add_argument("--out", default="benchmarks/results/kd_methods", help="OUT.json and OUT.md")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.child:
        print(json.dumps(train_child(json.loads(args.child))))
        return

    from seqdistill import config as configlib
    from seqdistill import models, pipeline, store, student

    started = time.perf_counter()
    run = Path(args.run)
    base_results = json.loads((run / "eval" / "results.json").read_text())  # the run must be finished
    cfg = pipeline.load(args.recipe, [f"run_dir={run}"])
    work = Path(args.work) if args.work else run / "kd_methods"
    work.mkdir(parents=True, exist_ok=True)
    teacher_ref = cfg.generate.model
    teacher = models.resolve(teacher_ref)
    student_cfg = {"model": teacher_ref, "layers": args.layers, "output_dir": str(work / "student")}
    info, saved = student.run(configlib.build(student.StudentConfig, student_cfg)), work / "student.json"
    if "parameters" not in info:  # built by an earlier run of this script: its sizes were saved then
        info = (json.loads(saved.read_text()) if saved.is_file() else
                student.run(configlib.build(student.StudentConfig, {**student_cfg, "overwrite": True})))
    saved.write_text(json.dumps(info, indent=2))

    base = configlib.to_dict(cfg.sft)
    base["dataset"] = cfg.sft.dataset or cfg.generate.output_dir
    if args.max_steps:
        args.overrides = [f"max_steps={args.max_steps}", *args.overrides]
    eval_raw = configlib.to_dict(cfg.eval)
    for item in args.eval_set:
        configlib.apply_override(eval_raw, item)
    if args.problems:
        eval_raw["benchmarks"][0]["num_problems"] = args.problems  # the recipe's first benchmark
    bench = eval_raw["benchmarks"][0]["name"]
    teacher_name = next(n for n in base_results if n.startswith("teacher"))
    teacher_samples = run / "eval" / teacher_name / bench / "samples.parquet"

    chosen = [m for m in METHODS if not args.only or m in args.only]
    rows = {}
    for method in chosen:  # train first: no vLLM engine has grown this process yet
        if method == "untrained":
            rows[method] = {"model": str(work / "student")}
            continue
        settings = sft_settings(method, base, str(work / "student"), teacher_ref, work, args.overrides)
        rows[method] = {"model": str(work / method / "model"), "training": train(method, settings, work)}
    for method, row in rows.items():
        print(f"{method}: eval and KL", flush=True)
        row.update(evaluate_model(method, row["model"], eval_raw, work))
        row["kl_to_teacher"] = kl(method, teacher, row["model"], teacher_samples, args.kl_samples, cfg.eval.prompt, work)

    traces = len(store.read_parquet([Path(base["dataset"]) / "data" / "train.parquet"]))
    e = eval_raw["benchmarks"][0]
    result = {
        "date": datetime.now(timezone.utc).date().isoformat(), "machine": machine(),
        "versions": configlib.run_info()["versions"], "git_commit": configlib.run_info()["git_commit"],
        "run": os.path.relpath(run), "benchmark": bench, "teacher": teacher_ref, "traces": traces,
        "eval": f"{e.get('num_problems')} problems x {eval_raw['sampling']['n']} samples at temperature "
                f"{eval_raw['sampling']['temperature']}",
        "student": {**info, "kept_layers": len(info["kept"])},
        "teacher_row": {k: base_results[teacher_name][bench][k] for k in ("pass@1", "pass@1_stderr")},
        "kl_samples": args.kl_samples,
        "common_settings": FULL + ([f"max_steps={args.max_steps}"] if args.max_steps else []),
        "method_settings": {m: ([] if m == "sft" else LOGIT) + TERMS[m] for m in chosen if m in TRAINED},
        "overrides": args.overrides, "eval_overrides": args.eval_set,
        "methods": rows,
        "wall_minutes": round((time.perf_counter() - started) / 60, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(result, indent=2))
    Path(args.out + ".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
