"""How far the LLM judge (answer.judge) agrees with a reasoning-gym task's own checker, on answers math-verify can't read.

    .venv/bin/python benchmarks/judge_agreement.py                 # Qwen2.5-Coder-0.5B, about 10 minutes on 2 cores
    .venv/bin/python benchmarks/judge_agreement.py --problems 8    # a quick check of the script

One `vllm serve` of the model (the module entry point, as ENVIRONMENT.md says) is both the model answering and the
judge. First a judged run, as a user runs it: `seqdistill eval` through the server on reasoning-gym tasks whose
answers are words (spell_backward, word_sorting), with `answer.judge.tasks` naming them, so every sample the task's
checker failed is put to the judge. Then every sample, right or wrong by the checker, is put to the same judge
(judge.ask, the prompt eval uses), and its verdicts are set against the checker's: agreement, and the confusion
matrix (a judge that calls a wrong answer right would let it into a training set). A 0.5B model rarely answers
these right, so each problem also gets two controls the checker scores too: its gold answer, and a near miss (the
word not reversed; the words in the other order). Writes
benchmarks/results/judge_agreement.{json,md}.
"""

from __future__ import annotations

import argparse
import collections
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from run import machine  # noqa: E402
from server import start_server, wait_for  # noqa: E402

TASKS = ["spell_backward", "word_sorting"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="embedded:Qwen2.5-Coder-0.5B-Instruct")
    p.add_argument("--problems", type=int, default=40, help="problems per task")
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/judge_agreement")
    args = p.parse_args()

    from seqdistill import config as configlib
    from seqdistill import evaluate, models, store
    from seqdistill.checking import judge

    path = models.resolve(args.model)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        url, log = f"http://127.0.0.1:{port}/v1", Path(tmp) / "server.log"
        proc = start_server(path, port, log, {"max_tokens": 1536, "kv_cache_gib": 2})  # a 2,048-token context
        try:
            startup = wait_for(url, proc, log)
            served = {"backend": "openai", "base_url": [url], "served_model": "teacher", "max_concurrency": 8}
            cfg = configlib.load(evaluate.EvalConfig, None, [
                f"output_dir={tmp}/eval", f"models=[{{model: '{path}', name: model, engine: {json.dumps(served)}}}]",
                "benchmarks=" + json.dumps([{"name": f"rg-{t}", "source": "reasoning-gym", "tasks": t, "split": "heldout",
                                             "num_problems": args.problems} for t in TASKS]),
                f"sampling.n={args.samples}", "sampling.max_tokens=256", "prompt.template=r1", "report_to=[none]",
                "answer.judge=" + json.dumps({"model": "teacher", "tasks": TASKS, "max_tokens": 512,
                                              "engine": {"base_url": [url], "max_concurrency": 8}})])
            t0 = time.perf_counter()
            results = evaluate.run(cfg)
            eval_seconds = time.perf_counter() - t0
            per_task, t0 = {}, time.perf_counter()
            for t in TASKS:
                samples = store.read_parquet([Path(tmp) / "eval" / "model" / f"rg-{t}" / "samples.parquet"]).to_list()
                checker = [r["correct"] and r["verdict"] != "judged" for r in samples]  # before the judge turned any
                verdicts, _ = judge.ask(cfg.answer, [(r["question"], r["gold"], r["response"]) for r in samples],
                                        Path(tmp) / f"all-{t}.jsonl")
                confusion = collections.Counter(f"checker {'right' if c else 'wrong'}, judge "
                                                f"{'undecided' if v is None else 'right' if v else 'wrong'}"
                                                for c, v in zip(checker, verdicts))
                decided = [(c, v) for c, v in zip(checker, verdicts) if v is not None]
                r = results["model"][f"rg-{t}"]
                per_task[t] = {
                    "samples": len(samples), "checker_right": sum(checker),
                    "judged_run": {"pass@1_with_judge": r["pass@1"], "judge": r.get("judge")},
                    "confusion": dict(sorted(confusion.items())),
                    "agreement": round(sum(c == v for c, v in decided) / max(1, len(decided)), 4),
                    "judge_undecided": sum(v is None for v in verdicts),
                    "false_right": sum(1 for c, v in decided if v and not c),  # a wrong answer let in
                    "false_wrong": sum(1 for c, v in decided if c and not v),
                    "examples": [{"question": s["question"][-120:], "gold": s["gold"], "answer": s["answer"],
                                  "checker": c, "judge": v} for s, c, v in zip(samples, checker, verdicts)
                                 if v is not None and v != c][:3],
                }
                per_task[t]["controls"] = controls(cfg, t, Path(tmp))
                print(t, json.dumps({k: v for k, v in per_task[t].items() if k != "examples"}), flush=True)
            judge_seconds = time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    out = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "model": args.model, "judge": args.model,
           "tasks": per_task, "server_startup_seconds": round(startup, 1), "eval_seconds": round(eval_seconds, 1),
           "judge_all_seconds": round(judge_seconds, 1), "wall_seconds": round(time.perf_counter() - start, 1),
           "settings": {"problems_per_task": args.problems, "samples": args.samples, "split": "heldout",
                        "prompt": "r1", "max_tokens": 256, "judge_prompt": judge.PROMPT_VERSION}}
    Path(args.out + ".json").write_text(json.dumps(out, indent=2))
    Path(args.out + ".md").write_text(markdown(out))
    print(markdown(out))


def near_miss(task: str, gold: str) -> str:
    """A plausible wrong answer: the word forwards (spell_backward), the words in the other order (word_sorting)."""
    return gold[::-1] if task == "spell_backward" else ", ".join(reversed(gold.split(", ")))


def controls(cfg, task: str, tmp: Path) -> dict:
    """The judge on each problem's gold answer and a near miss, written as a response, against the task's checker."""
    from seqdistill import evaluate
    from seqdistill.checking import judge, verify

    bench = next(b for b in cfg.benchmarks if b.name == f"rg-{task}")
    cases = [(row, f"The answer is \\boxed{{{answer}}}.") for row in evaluate.load_benchmark(bench)
             for answer in (row["answer"], near_miss(task, row["answer"]))]
    checker = [j.correct for j in verify.judge_many([text for _, text in cases], [row for row, _ in cases], cfg.answer, cfg.code)]
    verdicts, _ = judge.ask(cfg.answer, [(row["question"], row["answer"], text) for row, text in cases],
                            tmp / f"controls-{task}.jsonl")
    decided = [(c, v) for c, v in zip(checker, verdicts) if v is not None]
    return {"cases": len(cases), "checker_right": sum(checker),
            "agreement": round(sum(c == v for c, v in decided) / max(1, len(decided)), 4),
            "gold_called_wrong": sum(1 for c, v in decided if c and not v),
            "near_miss_called_right": sum(1 for c, v in decided if v and not c),
            "undecided": sum(v is None for v in verdicts)}


def markdown(out: dict) -> str:
    m = out["machine"]
    lines = [f"# The LLM judge against reasoning-gym's own checkers, {out['date']}", "",
             f"Machine: {m['cpu']}, CPU flags {m['cpu_flags']}, {m['cores']} cores, {m['ram_gb']} GiB, GPU: {m['gpu']}. "
             f"Model and judge: `{out['model']}` behind one `vllm serve` (prompt {out['settings']['judge_prompt']}); "
             f"{out['settings']['problems_per_task']} held-out problems per task, {out['settings']['samples']} samples each "
             f"(r1 prompt, temperature 0.6, max_tokens 256). Wall time {out['wall_seconds']} s (server start "
             f"{out['server_startup_seconds']} s, judged eval {out['eval_seconds']} s, every sample judged "
             f"{out['judge_all_seconds']} s).", "",
             "| task | samples | right by the checker | judged run: pass@1 with the judge | judge's verdicts: agreement "
             "(decided) | wrong answers the judge calls right | right answers it calls wrong | undecided |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for t, r in out["tasks"].items():
        lines.append(f"| {t} | {r['samples']} | {r['checker_right']} | {r['judged_run']['pass@1_with_judge']:.3f} "
                     f"({(r['judged_run']['judge'] or {}).get('judged_correct', 0)} turned right) | {r['agreement']:.3f} | "
                     f"{r['false_right']} | {r['false_wrong']} | {r['judge_undecided']} |")
    lines += ["", "Controls (each problem's gold answer and a near miss, written `The answer is \\boxed{...}.`, scored by "
              "the task's checker and by the judge):", "",
              "| task | cases | right by the checker | agreement | gold answers the judge calls wrong | near misses it calls "
              "right | undecided |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for t, r in out["tasks"].items():
        c = r["controls"]
        lines.append(f"| {t} | {c['cases']} | {c['checker_right']} | {c['agreement']:.3f} | {c['gold_called_wrong']} | "
                     f"{c['near_miss_called_right']} | {c['undecided']} |")
    lines += ["", "Confusion (checker, judge) per task: " + "; ".join(
        f"{t}: " + ", ".join(f"{k} {v}" for k, v in r["confusion"].items()) for t, r in out["tasks"].items()), ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
