"""Near-duplicate problems in a real mix: GSM8K train + MAWPS + SVAMP, through seqdistill.sources.dedup.

    .venv/bin/python benchmarks/dedup.py                      # ../shared/benchmarks, thresholds 0.7 0.8 0.9 1.0
    .venv/bin/python benchmarks/dedup.py --benchmarks-dir DIR

The problems are loaded as `generate` loads them with `problems.mix` (ids prefixed mix0-, mix1-), then
`dedup.near_duplicates` runs at each threshold (the one `filters.near_duplicate_problems` runs): how many are
removed, within and across sources, examples of removed pairs, and seconds per 10k problems (best of 3 runs at
0.8). Results: benchmarks/results/dedup.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import time
from collections import Counter
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SOURCES = {"gsm8k-train": ("gsm8k/train.jsonl", "gsm8k"), "mawps": ("mawps/test.jsonl", "mawps"),
           "svamp": ("svamp/test.jsonl", "svamp")}


def machine() -> dict:
    from seqdistill import precision

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    return {"cpu": cpu, "cpu_flags": precision.describe_cpu(), "cores": len(os.sched_getaffinity(0))}


def load_mix(root: Path) -> tuple[list[dict], list[str]]:
    """The rows of the three sources in order, and the source name of each row."""
    from seqdistill.sources.problems import ProblemsConfig, ProblemSource, load

    first, *rest = [ProblemSource(source=str(root / path), preset=preset) for path, preset in SOURCES.values()]
    rows = load(ProblemsConfig(**vars(first), mix=rest))
    names = list(SOURCES)  # ids of mix entry K start with mixK-
    return rows, [names[int(r["id"][3]) + 1] if r["id"].startswith("mix") else names[0] for r in rows]


def numbers_only(a: str, b: str) -> bool:
    """The two texts differ, but only in their numbers (whitespace and case aside)."""
    norm = lambda t: " ".join(re.sub(r"\d+(\.\d+)?", "#", t).lower().split())  # noqa: E731
    return norm(a) == norm(b) and " ".join(a.split()).lower() != " ".join(b.split()).lower()


def main() -> None:
    from seqdistill.sources import dedup

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--benchmarks-dir", default="../shared/benchmarks")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.7, 0.8, 0.9, 1.0])
    args = p.parse_args()
    rows, source = load_mix(Path(args.benchmarks_dir))
    texts = [r["question"] for r in rows]
    sizes = Counter(source)
    results = []
    for threshold in args.thresholds:
        start = time.monotonic()
        found = dedup.near_duplicates(texts, threshold)
        seconds = time.monotonic() - start
        pairs = Counter(" / ".join(sorted({source[d.index], source[d.of]})) if source[d.index] != source[d.of]
                        else f"within {source[d.index]}" for d in found)
        by_kind: dict[tuple, list] = {}
        for d in found:
            by_kind.setdefault((source[d.of], source[d.index]), []).append(d)
        picks = []
        for ds in by_kind.values():  # per (kept source, removed source): its least and its most similar pair
            ends = sorted(ds, key=lambda d: d.similarity)
            picks += [ends[0]] + ([ends[-1]] if len(ends) > 1 else [])
        # same wording, other numbers: a different problem (another answer) that a threshold under 1 removes
        variants = [d for d in found if numbers_only(texts[d.of], texts[d.index])]
        picks += variants[:2]
        examples = [{"kept": rows[d.of]["id"], "removed": rows[d.index]["id"], "similarity": d.similarity,
                     "kept_text": texts[d.of], "removed_text": texts[d.index]} for d in picks]
        results.append({"threshold": threshold, "bands": list(dedup.bands(threshold)), "removed": len(found),
                        "numbers_differ": len(variants),
                        "by_pair": dict(pairs.most_common()), "seconds": round(seconds, 2), "examples": examples})
        print(json.dumps({k: v for k, v in results[-1].items() if k != "examples"}), flush=True)
    times = []
    for _ in range(3):
        start = time.monotonic()
        dedup.near_duplicates(texts, 0.8)
        times.append(time.monotonic() - start)
    out = {"date": datetime.date.today().isoformat(), "machine": machine(), "problems": len(texts),
           "sources": dict(sizes), "num_perm": dedup.NUM_PERM, "shingle_words": dedup.SHINGLE,
           "seconds_per_10k_at_0.8": round(min(times) * 10_000 / len(texts), 2), "results": results}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dedup.json").write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    (RESULTS / "dedup.md").write_text(markdown(out))
    print(markdown(out))


def markdown(out: dict) -> str:
    m = out["machine"]
    lines = [f"# Near-duplicate problems across sources, {out['date']}", "",
             "`.venv/bin/python benchmarks/dedup.py` (seqdistill.sources.dedup: MinHash over word 3-grams, "
             f"{out['num_perm']} permutations, LSH bands, exact Jaccard on the candidates).", "",
             f"Machine: {m['cpu']} ({m['cpu_flags']}), {m['cores']} cores (shared with other jobs). "
             f"Problems: {out['problems']} ({', '.join(f'{k} {v}' for k, v in out['sources'].items())}), in that order; "
             "the first occurrence is kept.", "",
             f"Time: **{out['seconds_per_10k_at_0.8']} s per 10k problems** at threshold 0.8 (best of 3; shingling, "
             "signatures and LSH, one process; the machine is shared, so runs vary up to 2x).", "",
             "| threshold | bands x rows | removed | of them, only the numbers differ | within / across sources | seconds |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in out["results"]:
        pairs = "; ".join(f"{k} {v}" for k, v in r["by_pair"].items())
        lines.append(f"| {r['threshold']} | {r['bands'][0]} x {r['bands'][1]} | {r['removed']} | {r['numbers_differ']} | "
                     f"{pairs} | {r['seconds']} |")
    across = sum(v for r in out["results"] for k, v in r["by_pair"].items() if not k.startswith("within"))
    if not across:
        lines += ["", f"No problem repeats one of another source at any threshold down to {min(r['threshold'] for r in out['results'])}: "
                  "every one removed repeats a problem of its own source."]
    at = next((r for r in out["results"] if r["threshold"] == 0.8), out["results"][0])
    lines += ["", f"Removed at {at['threshold']}: per kind of pair, its least similar one and its most similar one, then "
              "two whose texts differ only in their numbers (kept, then removed):", ""]
    for e in at["examples"]:
        lines += [f"- {e['similarity']}: `{e['kept']}` {e['kept_text']!r}", f"  `{e['removed']}` {e['removed_text']!r}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
