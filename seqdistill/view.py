"""`seqdistill view DIR [-o FILE]`: one self-contained HTML page to browse a run's traces.

DIR is a `seqdistill run` directory (generate/, eval/), a `generate` output_dir (data/train*.parquet,
data/dropped*.parquet) or an `eval` output_dir (MODEL/BENCHMARK/samples.parquet). The page needs no
server and no network: CSS and JS are inline and the traces are embedded as JSON. It shows the teacher's
kept and dropped traces by drop reason, problem and verdict, the eval samples of each model side by
side per problem, a search box, and think blocks folded. The filters live in the URL fragment
(`view.html#reason=wrong_answer&q=apples`), so a view can be shared as a link.

Large runs: at most `max_traces` teacher traces and as many eval samples are embedded (every drop
reason keeps a share; eval keeps whole problems), and each text at most `max_chars` characters (its
head and its tail, where the answer is); the page says what was left out.
"""

from __future__ import annotations

import html
import json
import os
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from seqdistill import store
from seqdistill.config import ConfigError
from seqdistill.sources.filters import REASONS

MAX_TRACES = 2000  # teacher traces embedded in the page (and, separately, eval samples)
MAX_CHARS = 20000  # characters of one trace's think block or answer kept (head and tail)
TRACE_COLUMNS = ("problem_id", "problem_index", "sample_index", "question", "gold", "completion", "finish_reason",
                 "completion_tokens", "answer", "correct", "keep", "drop_reason", "verdict_detail", "verifier")
SAMPLE_COLUMNS = ("problem_id", "sample_index", "question", "gold", "response", "answer", "correct", "verdict",
                  "verdict_detail", "finish_reason", "response_tokens")


def write(path: str | Path, out: str | Path | None = None, max_traces: int = MAX_TRACES,
          max_chars: int = MAX_CHARS) -> Path:
    """Write the viewer page for the run in `path` to `out` (default: `path`/view.html)."""
    src = Path(path)
    if max_traces < 1 or max_chars < 100:
        raise ConfigError(f"--max-traces must be >= 1 and --max-chars >= 100, got {max_traces} and {max_chars}")
    gen, ev = locate(src)
    # the source as seen from the working directory: a page names no machine's absolute paths
    data = {"source": os.path.relpath(src.resolve()), "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "max_traces": max_traces, "max_chars": max_chars,
            "generate": traces(gen, max_traces, max_chars) if gen else None,
            "eval": eval_samples(ev, max_traces, max_chars) if ev else None}
    out = Path(out) if out else src / "view.html"
    title = f"seqdistill traces: {src.resolve().name}"
    page = (Path(__file__).parent / "templates" / "view.html").read_text(encoding="utf-8")  # the page, shipped as package data
    store.write_text(out, page.replace("__TITLE__", html.escape(title)).replace("__DATA__", embed(data)))
    return out


def locate(src: Path) -> tuple[Path | None, Path | None]:
    """(generate dir, eval dir) in a run dir, or the dir itself when it is one of them."""
    def is_generate(d: Path) -> bool:
        return any((d / "data").glob("train*.parquet")) or any((d / "data").glob("dropped*.parquet"))

    def is_eval(d: Path) -> bool:
        return any(d.glob("*/*/samples.parquet"))

    gen = next((d for d in (src / "generate", src) if d.is_dir() and is_generate(d)), None)
    ev = next((d for d in (src / "eval", src) if d.is_dir() and is_eval(d)), None)
    if gen is None and ev is None:
        raise ConfigError(f"{src} holds no traces to view (no generate/data/*.parquet or eval/MODEL/BENCHMARK/"
                          "samples.parquet); give a `seqdistill run` run_dir, or a generate or eval output_dir")
    return gen, ev


def read(paths: list[Path], columns: tuple[str, ...]) -> list[dict]:
    """Rows of Parquet files, only the named columns they have (never the teacher's log-probs)."""
    import pyarrow.parquet as pq

    rows = []
    for p in paths:
        names = pq.read_schema(p).names
        rows += pq.read_table(p, columns=[c for c in columns if c in names]).to_pylist()
    return rows


def think_tag(d: Path) -> str:
    config = store.saved_config(d).get("config") or {}
    return (config.get("answer") or {}).get("think_tag") or "think"


def split_think(text: str, tag: str) -> tuple[str | None, str | None]:
    """(think block, answer part); the answer is None when the block never closes."""
    open_, close = f"<{tag}>", f"</{tag}>"
    if close in text:
        head, body = text.rsplit(close, 1)
        return head.replace(open_, "", 1).strip("\n"), body.strip("\n")
    if open_ in text:
        return text.split(open_, 1)[1].strip("\n"), None
    return None, text


def clip(text: str | None, max_chars: int) -> tuple[str | None, int]:
    """(head and tail of `text` within max_chars, characters left out of the middle)."""
    if text is None or len(text) <= max_chars:
        return text, 0
    half, cut = max_chars // 2, len(text) - max_chars
    return f"{text[:half]}\n\n[... {cut:,} characters left out here ...]\n\n{text[-half:]}", cut


def content(text: str, tag: str, max_chars: int) -> dict:
    think, body = split_think(text or "", tag)
    (think, cut_think), (body, cut_body) = clip(think, max_chars), clip(body, max_chars)
    return {"think": think, "body": body, "cut": cut_think + cut_body}


def verdict(row: dict) -> str:
    return "correct" if row.get("correct") else "no answer" if row.get("answer") is None else "wrong"


def traces(gen: Path, max_traces: int, max_chars: int) -> dict:
    files = sorted((gen / "data").glob("train*.parquet")) + sorted((gen / "data").glob("dropped*.parquet"))
    rows = read(files, TRACE_COLUMNS)
    for r in rows:
        r["reason"] = "kept" if r["keep"] else r.get("drop_reason") or "dropped"
    totals = Counter(r["reason"] for r in rows)
    order = ["kept", *REASONS]
    reasons = sorted(totals, key=lambda k: (order.index(k) if k in order else len(order), k))
    # over the cap every reason keeps a share: round-robin over reasons, first problems first
    rank, seen = {}, Counter()
    for i, r in sorted(enumerate(rows), key=lambda x: (x[1]["problem_index"], x[1]["sample_index"])):
        rank[i], seen[r["reason"]] = seen[r["reason"]], seen[r["reason"]] + 1
    picked = sorted(sorted(range(len(rows)), key=lambda i: (rank[i], reasons.index(rows[i]["reason"])))[:max_traces],
                    key=lambda i: (rows[i]["problem_index"], rows[i]["sample_index"]))
    problems: dict[str, int] = {}
    plist, out = [], []
    tag = think_tag(gen)
    for i in picked:
        r = rows[i]
        if r["problem_id"] not in problems:
            problems[r["problem_id"]] = len(plist)
            plist.append({"id": r["problem_id"], "index": r["problem_index"], "question": r["question"],
                          "gold": r["gold"]})
        out.append({"p": problems[r["problem_id"]], "s": r["sample_index"], "reason": r["reason"],
                    "verdict": verdict(r), "answer": r.get("answer"), "detail": r.get("verdict_detail"),
                    "finish": r.get("finish_reason"), "tokens": r.get("completion_tokens"),
                    **content(r["completion"], tag, max_chars)})
    stats = gen / store.STATS_FILE
    teacher = read(files[:1], ("teacher",))[:1]
    return {"dir": str(gen), "teacher": teacher[0]["teacher"] if teacher else None, "reasons": reasons,
            "totals": dict(totals), "total": len(rows), "problems": plist, "traces": out,
            "funnel": store.read_json(stats).get("funnel") if stats.is_file() else None}


def eval_samples(ev: Path, max_samples: int, max_chars: int) -> dict:
    results = store.read_json(ev / store.RESULTS_FILE) if (ev / store.RESULTS_FILE).is_file() else {}
    found = sorted(p.parent for p in ev.glob("*/*/samples.parquet"))
    models = [m for m in results if any(d.parent.name == m for d in found)]
    models += sorted({d.parent.name for d in found} - set(models))
    tag, benches, budget, total, kept = think_tag(ev), [], max_samples, 0, 0
    for bench in sorted({d.name for d in found}):
        have = [m for m in models if (ev / m / bench / "samples.parquet").is_file()]
        per: dict[str, dict] = {}
        for j, m in enumerate(have):
            for r in read([ev / m / bench / "samples.parquet"], SAMPLE_COLUMNS):
                p = per.setdefault(r["problem_id"], {"id": r["problem_id"], "question": r["question"], "gold": r["gold"],
                                                     "samples": [[] for _ in have]})
                p["samples"][j].append({"s": r["sample_index"], "verdict": r.get("verdict") or verdict(r),
                                        "correct": bool(r.get("correct")), "answer": r.get("answer"),
                                        "detail": r.get("verdict_detail"), "finish": r.get("finish_reason"),
                                        "tokens": r.get("response_tokens"), **content(r["response"], tag, max_chars)})
        problems = []
        for p in per.values():  # whole problems only, so every model's column is complete
            n = sum(len(s) for s in p["samples"])
            total += n
            if n <= budget:
                budget -= n
                kept += n
                problems.append(p)
        scores = {m: {k: results[m][bench].get(k) for k in ("pass@1", "pass@1_stderr")}
                  for m in have if bench in results.get(m, {})}
        benches.append({"name": bench, "models": have, "problems": problems, "total_problems": len(per),
                        "scores": scores})
    return {"dir": str(ev), "benchmarks": benches, "total": total, "embedded": kept}


def embed(data: dict) -> str:
    """JSON that is safe inside <script type="application/json">: no `<` (so no `</script>` or `<!--`),
    `>` or `&` survives as such; JSON.parse restores them."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")

