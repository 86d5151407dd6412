"""Code verification throughput: programs actually run per second in the sandbox.

    .venv/bin/python benchmarks/code_throughput.py              # workers = cores
    .venv/bin/python benchmarks/code_throughput.py --workers 1

Three workloads, each timed on its own through `code.verify_many` (the path generate and eval use):
HumanEval's 164 reference solutions and 164 broken copies (test programs: two sandboxes per run, the
program and its tests), and 164 stdin programs (one sandbox per case). A sample with no code runs
nothing and is not counted. Results: benchmarks/results/code_throughput.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
RESULTS = Path(__file__).resolve().parent / "results"

BREAK = "\n_original = {e}\ndef {e}(*args, **kwargs):\n    value = _original(*args, **kwargs)\n    return [value]\n"
STDIN = {"kind": "stdin", "cases": [{"input": "3 4\n", "output": "7"}]}


def fenced(program: str) -> str:
    return f"```python\n{program}\n```"


def workloads() -> dict[str, list[tuple[str, dict | str]]]:
    from seqdistill.sources import problems

    rows = problems.load(problems.ProblemsConfig(source="", preset="humaneval"))
    return {
        "humaneval references (test programs)": [(fenced(r["prompt"] + r["canonical_solution"]), r["tests"]) for r in rows],
        "humaneval broken copies (test programs)": [
            (fenced(r["prompt"] + r["canonical_solution"] + BREAK.format(e=r["entry_point"])), r["tests"]) for r in rows],
        "stdin programs (one case each)": [(fenced("a, b = map(int, input().split())\nprint(a + b)"), STDIN)] * len(rows),
    }


def main() -> None:
    from run import machine

    from seqdistill.checking import code, sandbox

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = p.parse_args()
    cfg = code.CodeConfig(timeout=6, workers=args.workers)
    records = []
    for name, items in workloads().items():
        start = time.monotonic()
        verdicts = code.verify_many(items, cfg)
        seconds = time.monotonic() - start
        ran = sum(v.status != "no_code" for v in verdicts)
        records.append({"workload": name, "programs": ran, "passed": sum(v.passed for v in verdicts),
                        "seconds": round(seconds, 2), "programs_per_s": round(ran / seconds, 2)})
        print(json.dumps(records[-1]), flush=True)
    m = machine()
    out = {"date": datetime.date.today().isoformat(), "machine": m, "workers": args.workers,
           "isolation": sandbox.describe(sandbox.isolation(cfg.isolation)), "results": records}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "code_throughput.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [f"# Code verification throughput, {out['date']}", "",
             f"Machine: {m['cpu']} ({m['cpu_flags']}), {m['cores']} cores, {m['ram_gb']} GiB; {args.workers} workers; "
             f"sandbox: {out['isolation']}.", "",
             "| workload | programs run | passed | seconds | programs/s |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['workload']} | {r['programs']} | {r['passed']} | {r['seconds']} | {r['programs_per_s']} |" for r in records]
    (RESULTS / "code_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
