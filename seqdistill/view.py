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
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from seqdistill import store
from seqdistill.config import ConfigError

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
    data = {"source": str(src.resolve()), "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "max_traces": max_traces, "max_chars": max_chars,
            "generate": traces(gen, max_traces, max_chars) if gen else None,
            "eval": eval_samples(ev, max_traces, max_chars) if ev else None}
    out = Path(out) if out else src / "view.html"
    title = f"seqdistill traces: {src.resolve().name}"
    store.write_text(out, PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", embed(data)))
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
    from seqdistill.filters import REASONS

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
    stats = gen / "stats.json"
    teacher = read(files[:1], ("teacher",))[:1]
    return {"dir": str(gen), "teacher": teacher[0]["teacher"] if teacher else None, "reasons": reasons,
            "totals": dict(totals), "total": len(rows), "problems": plist, "traces": out,
            "funnel": store.read_json(stats).get("funnel") if stats.is_file() else None}


def eval_samples(ev: Path, max_samples: int, max_chars: int) -> dict:
    results = store.read_json(ev / "results.json") if (ev / "results.json").is_file() else {}
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


PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
:root {
  --bg: #f6f7f9; --card: #fff; --line: #e3e6eb; --text: #1c2430; --muted: #667085; --accent: #3b5bdb;
  --ok: #1f8a4c; --ok-bg: #e6f4ec; --bad: #c2372f; --bad-bg: #fbeaea; --warn: #a4620a; --warn-bg: #fdf1dc;
  --grey-bg: #eef0f3; --mono: ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace;
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--text);
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background: #161b26; color: #e8ebf0; padding: 14px 28px 0; }
header h1 { margin: 0; font-size: 18px; font-weight: 600; letter-spacing: .2px; }
header h1 .brand { color: #8ea2ff; }
header h1 #run-name { color: #a3acba; font-weight: 400; margin-left: 6px; }
header .meta { color: #a3acba; font-size: 12.5px; margin-top: 2px; word-break: break-all; }
.funnel { display: flex; flex-wrap: wrap; gap: 4px; align-items: center; margin-top: 10px; font-size: 12.5px; }
.funnel span.stage { background: #242b3a; border-radius: 12px; padding: 2px 10px; color: #d5dae3; }
.funnel span.stage b { color: #fff; font-weight: 600; }
.funnel span.arrow { color: #6b7588; }
nav.tabs { display: flex; gap: 4px; margin-top: 12px; }
nav.tabs button { background: none; border: 0; color: #a3acba; padding: 9px 14px; font: inherit; font-weight: 500;
  cursor: pointer; border-bottom: 2px solid transparent; }
nav.tabs button.active { color: #fff; border-bottom-color: #8ea2ff; }
main { max-width: 1280px; margin: 0 auto; padding: 18px 28px 60px; }
.toolbar { display: flex; flex-wrap: wrap; gap: 10px; align-items: center; }
.toolbar input[type=search] { flex: 1 1 320px; min-width: 220px; padding: 8px 12px; border: 1px solid var(--line);
  border-radius: 8px; font: inherit; background: #fff; }
.toolbar select { padding: 7px 10px; border: 1px solid var(--line); border-radius: 8px; font: inherit; background: #fff;
  max-width: 340px; }
.toolbar input:focus, .toolbar select:focus { outline: 2px solid #c5d0fa; border-color: var(--accent); }
.chips { display: flex; flex-wrap: wrap; gap: 6px; margin: 12px 0 4px; }
.chip { border: 1px solid var(--line); background: #fff; border-radius: 999px; padding: 3px 11px; cursor: pointer;
  font: inherit; font-size: 13px; color: var(--text); }
.chip .n { color: var(--muted); margin-left: 4px; font-variant-numeric: tabular-nums; }
.chip.active { background: var(--text); color: #fff; border-color: var(--text); }
.chip.active .n { color: #c9cfd8; }
.chip .dot { display: inline-block; width: 8px; height: 8px; border-radius: 50%; margin-right: 6px; }
#count, #eval-count { color: var(--muted); margin: 8px 0 14px; font-size: 13px; }
.note { background: var(--warn-bg); color: #6d4306; border: 1px solid #f3d9a8; border-radius: 8px; padding: 8px 12px;
  margin: 0 0 12px; font-size: 13px; }
.problem { background: var(--card); border: 1px solid var(--line); border-radius: 10px; margin-bottom: 14px;
  overflow: hidden; }
.problem > .head { padding: 12px 16px; border-bottom: 1px solid var(--line); background: #fbfcfd; }
.problem > .head .title { display: flex; flex-wrap: wrap; gap: 8px; align-items: baseline; font-size: 12.5px;
  color: var(--muted); }
.problem > .head .title a { color: var(--accent); text-decoration: none; font-family: var(--mono); cursor: pointer; }
.problem > .head .q { margin-top: 4px; font-size: 14.5px; white-space: pre-wrap; }
.gold { font-family: var(--mono); background: var(--grey-bg); border-radius: 4px; padding: 0 6px; color: var(--text); }
.trace { padding: 10px 16px 12px; border-top: 1px solid #f0f2f5; }
.trace:first-of-type { border-top: 0; }
.trace .line { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; font-size: 12.5px; color: var(--muted); }
.badge { border-radius: 5px; padding: 1px 8px; font-size: 12px; font-weight: 600; }
.badge.kept, .badge.correct, .badge.passed { background: var(--ok-bg); color: var(--ok); }
.badge.drop { background: var(--bad-bg); color: var(--bad); }
.badge.soft { background: var(--warn-bg); color: var(--warn); }
.badge.neutral { background: var(--grey-bg); color: #475467; }
.answer { font-family: var(--mono); color: var(--text); }
.answer.ok { color: var(--ok); } .answer.bad { color: var(--bad); }
details.think { margin-top: 8px; border-left: 3px solid #d6dbe4; padding-left: 10px; }
details.think summary { cursor: pointer; color: var(--muted); font-size: 12.5px; user-select: none; }
details.think[open] summary { margin-bottom: 4px; }
pre { margin: 6px 0 0; white-space: pre-wrap; word-break: break-word; font: 12.5px/1.55 var(--mono); color: #273142; }
details.think pre { color: #4a5568; }
pre.body { background: #f8f9fb; border: 1px solid #eef0f4; border-radius: 6px; padding: 8px 10px; }
.unclosed { color: var(--bad); font-size: 12.5px; margin-top: 6px; }
mark { background: #ffe58a; color: inherit; border-radius: 2px; }
.more { display: block; margin: 6px auto 0; padding: 8px 18px; border-radius: 8px; border: 1px solid var(--line);
  background: #fff; cursor: pointer; font: inherit; }
.grid { display: grid; gap: 0; }
.grid > .col { border-left: 1px solid var(--line); min-width: 0; }
.grid > .col:first-child { border-left: 0; }
.col > .colhead { padding: 8px 16px; font-weight: 600; font-size: 13px; background: #fbfcfd; border-bottom: 1px solid var(--line);
  display: flex; justify-content: space-between; gap: 8px; }
.col > .colhead .score { font-weight: 500; color: var(--muted); font-variant-numeric: tabular-nums; }
table.scores { border-collapse: collapse; background: #fff; border: 1px solid var(--line); border-radius: 8px;
  margin: 12px 0 4px; font-size: 13px; }
table.scores th, table.scores td { padding: 6px 14px; border-bottom: 1px solid var(--line); text-align: left; }
table.scores td.num { font-variant-numeric: tabular-nums; text-align: right; }
.empty { color: var(--muted); padding: 30px; text-align: center; background: #fff; border: 1px dashed var(--line);
  border-radius: 10px; }
[hidden] { display: none !important; }
</style>
</head>
<body>
<header>
  <h1><span class="brand">seqdistill</span> trace viewer <span id="run-name"></span></h1>
  <div class="meta" id="meta"></div>
  <div class="funnel" id="funnel"></div>
  <nav class="tabs" id="tabs"></nav>
</header>
<main>
  <section id="tab-traces" hidden>
    <div class="toolbar">
      <input type="search" id="q" placeholder="Search questions, traces and answers" autocomplete="off">
      <select id="problem"><option value="">All problems</option></select>
      <select id="verdict">
        <option value="">Any verdict</option><option value="correct">correct</option>
        <option value="wrong">wrong answer</option><option value="no answer">no answer</option>
      </select>
    </div>
    <div class="chips" id="reasons"></div>
    <div class="note" id="omitted" hidden></div>
    <p id="count"></p>
    <div id="list"></div>
  </section>
  <section id="tab-eval" hidden>
    <div class="toolbar">
      <input type="search" id="eq" placeholder="Search questions and responses" autocomplete="off">
      <select id="bench"></select>
      <select id="show">
        <option value="">All problems</option><option value="differ">Models differ</option>
        <option value="gained">Last model right more often</option><option value="lost">Last model right less often</option>
        <option value="none">No model right</option>
      </select>
    </div>
    <div id="scores"></div>
    <div class="note" id="eval-omitted" hidden></div>
    <p id="eval-count"></p>
    <div id="eval-list"></div>
  </section>
</main>
<script type="application/json" id="seqdistill-data">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("seqdistill-data").textContent);
const PAGE = 100;  // cards rendered at once; "show more" adds the next ones
const GEN = DATA.generate, EV = DATA.eval;
const DEFAULTS = {tab: GEN ? "traces" : "eval", reason: "", verdict: "", problem: "", q: "", bench: "", show: "", eq: ""};
const state = {...DEFAULTS};
let limit = PAGE, evalLimit = PAGE;
const $ = (id) => document.getElementById(id);
const fmt = (n) => Number(n).toLocaleString("en-US");

// Every string from the data goes into the page as text (textContent), never as HTML.
function el(tag, attrs, ...kids) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined && kid !== false)
    node.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  return node;
}

// A text with the search term marked: text nodes and <mark> elements only.
function marked(text, term) {
  const frag = document.createDocumentFragment();
  if (!term) { frag.append(text); return frag; }
  const low = text.toLowerCase();
  let at = 0, i;
  while ((i = low.indexOf(term, at)) !== -1) {
    frag.append(text.slice(at, i), el("mark", {text: text.slice(i, i + term.length)}));
    at = i + term.length;
  }
  frag.append(text.slice(at));
  return frag;
}

function readHash() {
  const h = new URLSearchParams(location.hash.slice(1));
  for (const k of Object.keys(state)) state[k] = h.has(k) ? h.get(k) : DEFAULTS[k];
  if (state.tab === "eval" && !EV) state.tab = "traces";
  if (state.tab === "traces" && !GEN) state.tab = "eval";
}
function writeHash() {
  const h = new URLSearchParams();
  for (const [k, v] of Object.entries(state)) if (v && v !== DEFAULTS[k]) h.set(k, v);
  try { history.replaceState(null, "", "#" + h.toString()); } catch (e) { /* some file:// setups refuse */ }
}

function reasonBadge(reason) {
  const soft = ["over_limit", "duplicate", "near_duplicate", "too_easy"];
  const cls = reason === "kept" ? "kept" : soft.includes(reason) ? "soft" : "drop";
  return el("span", {class: "badge " + cls, text: reason});
}
function verdictBadge(v) {
  const cls = v === "correct" || v === "passed" ? "correct" : v === "no answer" || v === "no_answer" ? "neutral" : "drop";
  return el("span", {class: "badge " + cls, text: v.replace(/_/g, " ")});
}

// think block folded, the answer part open; search hits in a folded block unfold it
function textBlocks(t, term) {
  const out = [];
  if (t.think !== null && t.think !== undefined) {
    const hit = term && t.think.toLowerCase().includes(term);
    out.push(el("details", {class: "think", open: hit ? "" : null},
      el("summary", {text: `Thinking (${fmt(t.think.length)} characters)`}), el("pre", {}, marked(t.think, term))));
  }
  if (t.body === null || t.body === undefined) out.push(el("div", {class: "unclosed", text: "The think block never closes: no answer."}));
  else out.push(el("pre", {class: "body"}, marked(t.body, term)));
  if (t.cut) out.push(el("div", {class: "unclosed", text: `${fmt(t.cut)} characters of this trace are left out of the page (see --max-chars).`}));
  return out;
}
function haystack(obj, ...extra) {
  if (obj._hay === undefined) obj._hay = [obj.think || "", obj.body || "", obj.answer || "", ...extra].join("\n").toLowerCase();
  return obj._hay;
}

function header() {
  $("run-name").textContent = DATA.source.split("/").filter(Boolean).pop() || DATA.source;
  const parts = [DATA.source];
  if (GEN && GEN.teacher) parts.push("teacher " + GEN.teacher);
  parts.push("page written " + DATA.created);
  $("meta").textContent = parts.join("  ·  ");
  if (GEN && GEN.funnel) {
    const stages = Object.entries(GEN.funnel);
    stages.forEach(([name, n], i) => {
      if (i) $("funnel").append(el("span", {class: "arrow", text: "→"}));
      $("funnel").append(el("span", {class: "stage"}, name + " ", el("b", {text: fmt(n)})));
    });
  }
  const tabs = [];
  if (GEN) tabs.push(["traces", `Teacher traces (${fmt(GEN.total)})`]);
  if (EV) tabs.push(["eval", `Eval samples (${EV.benchmarks.map((b) => b.models.length).reduce((a, b) => Math.max(a, b), 0)} models, ${EV.benchmarks.length} benchmark${EV.benchmarks.length === 1 ? "" : "s"})`]);
  for (const [name, label] of tabs)
    $("tabs").append(el("button", {"data-tab": name, text: label, onclick: () => { state.tab = name; update(); }}));
}

// ---- teacher traces
function setupTraces() {
  if (!GEN) return;
  for (const p of GEN.problems) {
    const q = p.question.length > 70 ? p.question.slice(0, 70) + "…" : p.question;
    $("problem").append(el("option", {value: p.id, text: `#${p.index} ${q}`}));
  }
  const shown = {};
  for (const t of GEN.traces) shown[t.reason] = (shown[t.reason] || 0) + 1;
  const all = el("button", {class: "chip", "data-reason": "", onclick: () => { state.reason = ""; update(); }},
    "All", el("span", {class: "n", text: fmt(GEN.traces.length)}));
  $("reasons").append(all);
  for (const r of GEN.reasons) {
    if (!shown[r]) continue;
    const color = r === "kept" ? "var(--ok)" : ["over_limit", "duplicate", "near_duplicate", "too_easy"].includes(r) ? "var(--warn)" : "var(--bad)";
    $("reasons").append(el("button", {class: "chip", "data-reason": r, onclick: () => { state.reason = state.reason === r ? "" : r; update(); }},
      el("span", {class: "dot", style: `background:${color}`}), r, el("span", {class: "n", text: fmt(shown[r])})));
  }
  if (GEN.traces.length < GEN.total) {
    const totals = GEN.reasons.map((r) => `${r} ${fmt(GEN.totals[r])}`).join(", ");
    $("omitted").hidden = false;
    $("omitted").textContent = `This page holds ${fmt(GEN.traces.length)} of the ${fmt(GEN.total)} traces ` +
      `(--max-traces ${fmt(DATA.max_traces)}; every reason keeps a share, the first problems first). ` +
      `All traces by reason: ${totals}. The full data is in ${GEN.dir}/data.`;
  }
}

function renderTraces() {
  const term = state.q.trim().toLowerCase();
  const match = GEN.traces.filter((t) => {
    const p = GEN.problems[t.p];
    return (!state.reason || t.reason === state.reason) && (!state.verdict || t.verdict === state.verdict) &&
      (!state.problem || p.id === state.problem) &&
      (!term || haystack(t, p.question, p.id).includes(term));
  });
  const problems = new Set(match.map((t) => t.p));
  const filters = [state.reason && `reason ${state.reason}`, state.verdict && `verdict ${state.verdict}`,
    state.problem && `problem ${state.problem}`, term && `“${state.q.trim()}”`].filter(Boolean);
  $("count").textContent = `${fmt(match.length)} of ${fmt(GEN.traces.length)} traces` +
    ` in ${fmt(problems.size)} problem${problems.size === 1 ? "" : "s"}` + (filters.length ? ` · ${filters.join(" · ")}` : "") +
    (match.length > limit ? ` · showing the first ${fmt(limit)}` : "");
  $("count").dataset.shown = match.length;
  $("count").dataset.total = GEN.traces.length;
  const list = $("list");
  list.replaceChildren();
  if (!match.length) { list.append(el("div", {class: "empty", text: "No trace matches these filters."})); return; }
  let card = null, cardP = -1;
  for (const t of match.slice(0, limit)) {
    const p = GEN.problems[t.p];
    if (t.p !== cardP) {
      cardP = t.p;
      const all = GEN.traces.filter((x) => x.p === t.p);
      const right = all.filter((x) => x.verdict === "correct").length;
      card = el("section", {class: "problem", "data-problem": p.id},
        el("div", {class: "head"},
          el("div", {class: "title"},
            el("a", {title: "show only this problem", onclick: () => { state.problem = state.problem === p.id ? "" : p.id; update(); }},
              `#${p.index} ${p.id}`),
            el("span", {}, "gold ", el("span", {class: "gold", text: p.gold})),
            el("span", {text: `${right} of ${all.length} right` + (GEN.traces.length < GEN.total ? " on this page" : "")})),
          el("div", {class: "q"}, marked(p.question, term))));
      list.append(card);
    }
    const ok = t.verdict === "correct";
    card.append(el("article", {class: "trace", "data-reason": t.reason, "data-verdict": t.verdict, "data-problem": p.id},
      el("div", {class: "line"}, reasonBadge(t.reason), el("span", {text: `sample ${t.s}`}),
        el("span", {}, "answer ", el("span", {class: "answer " + (ok ? "ok" : "bad"), text: t.answer === null ? "none" : t.answer})),
        el("span", {text: `${fmt(t.tokens)} tokens`}), t.finish !== "stop" ? el("span", {text: `finish: ${t.finish}`}) : null,
        t.detail ? el("span", {text: t.detail}) : null),
      textBlocks(t, term)));
  }
  if (match.length > limit)
    list.append(el("button", {class: "more", text: `Show ${fmt(Math.min(PAGE, match.length - limit))} more`,
      onclick: () => { limit += PAGE; renderTraces(); }}));
}

// ---- eval samples side by side
function setupEval() {
  if (!EV) return;
  for (const b of EV.benchmarks) $("bench").append(el("option", {value: b.name, text: b.name}));
  $("bench").hidden = EV.benchmarks.length < 2;
  $("show").hidden = Math.max(...EV.benchmarks.map((b) => b.models.length)) < 2;  // nothing to compare
  if (EV.embedded < EV.total) {
    $("eval-omitted").hidden = false;
    $("eval-omitted").textContent = `This page holds ${fmt(EV.embedded)} of the ${fmt(EV.total)} eval samples ` +
      `(--max-traces ${fmt(DATA.max_traces)}; whole problems, the first ones). The full data is in ${EV.dir}/MODEL/BENCHMARK/samples.parquet.`;
  }
}

function renderEval() {
  const bench = EV.benchmarks.find((b) => b.name === state.bench) || EV.benchmarks[0];
  $("bench").value = bench.name;
  const term = state.eq.trim().toLowerCase();
  const n = bench.models.length, last = bench.models[n - 1];
  const shows = {differ: "the models differ", gained: `${last} is right more often`, lost: `${last} is right less often`,
    none: "no model is right"};
  for (const o of $("show").options) if (o.value) o.textContent = o.value === "differ" || o.value === "none" ?
    shows[o.value][0].toUpperCase() + shows[o.value].slice(1) : shows[o.value].replace(" is ", " ");
  const rate = (ss) => ss.length ? ss.filter((s) => s.correct).length / ss.length : 0;
  const match = bench.problems.filter((p) => {
    const rates = p.samples.map(rate);
    const first = rates[0], last = rates[n - 1];
    if (state.show === "differ" && rates.every((r) => r === first)) return false;
    if (state.show === "gained" && !(last > Math.max(...rates.slice(0, -1)))) return false;
    if (state.show === "lost" && !(last < Math.min(...rates.slice(0, -1)))) return false;
    if (state.show === "none" && rates.some((r) => r > 0)) return false;
    if (!term) return true;
    if ((p.question + "\n" + p.id).toLowerCase().includes(term)) return true;
    return p.samples.some((ss) => ss.some((s) => haystack(s).includes(term)));
  });
  const scores = $("scores");
  scores.replaceChildren();
  if (Object.keys(bench.scores).length)
    scores.append(el("table", {class: "scores"}, el("tr", {}, el("th", {text: "model"}), el("th", {text: `${bench.name} pass@1 ± s.e.`})),
      bench.models.filter((m) => bench.scores[m] && bench.scores[m]["pass@1"] !== null).map((m) => el("tr", {}, el("td", {text: m}),
        el("td", {class: "num", text: `${bench.scores[m]["pass@1"].toFixed(3)} ± ${bench.scores[m]["pass@1_stderr"].toFixed(3)}`})))));
  $("eval-count").textContent = `${fmt(match.length)} of ${fmt(bench.problems.length)} problems` +
    (shows[state.show] ? ` where ${shows[state.show]}` : "") + (term ? ` · “${state.eq.trim()}”` : "") +
    (bench.problems.length < bench.total_problems ? ` (${fmt(bench.total_problems)} in the benchmark)` : "") +
    (match.length > evalLimit ? ` · showing the first ${fmt(evalLimit)}` : "");
  $("eval-count").dataset.shown = match.length;
  const list = $("eval-list");
  list.replaceChildren();
  if (!match.length) { list.append(el("div", {class: "empty", text: "No problem matches these filters."})); return; }
  for (const p of match.slice(0, evalLimit)) {
    const grid = el("div", {class: "grid", style: `grid-template-columns: repeat(${n}, minmax(0, 1fr))`});
    bench.models.forEach((m, j) => {
      const ss = p.samples[j];
      grid.append(el("div", {class: "col", "data-model": m},
        el("div", {class: "colhead"}, el("span", {text: m}), el("span", {class: "score", text: `${ss.filter((s) => s.correct).length}/${ss.length} right`})),
        ss.map((s) => el("article", {class: "trace", "data-verdict": s.verdict},
          el("div", {class: "line"}, verdictBadge(s.verdict), el("span", {text: `sample ${s.s}`}),
            el("span", {}, "answer ", el("span", {class: "answer " + (s.correct ? "ok" : "bad"), text: s.answer === null ? "none" : s.answer})),
            el("span", {text: `${fmt(s.tokens)} tokens`}), s.finish === "length" ? el("span", {class: "badge soft", text: "truncated"}) : null),
          textBlocks(s, term)))));
    });
    list.append(el("section", {class: "problem", "data-problem": p.id},
      el("div", {class: "head"}, el("div", {class: "title"}, el("span", {text: p.id}),
        el("span", {}, "gold ", el("span", {class: "gold", text: p.gold}))), el("div", {class: "q"}, marked(p.question, term))),
      grid));
  }
  if (match.length > evalLimit)
    list.append(el("button", {class: "more", text: `Show ${fmt(Math.min(PAGE, match.length - evalLimit))} more`,
      onclick: () => { evalLimit += PAGE; renderEval(); }}));
}

function update() {
  limit = evalLimit = PAGE;
  writeHash();
  for (const b of document.querySelectorAll("nav.tabs button")) b.classList.toggle("active", b.dataset.tab === state.tab);
  $("tab-traces").hidden = state.tab !== "traces";
  $("tab-eval").hidden = state.tab !== "eval";
  if (state.tab === "traces" && GEN) {
    $("q").value = state.q; $("verdict").value = state.verdict; $("problem").value = state.problem;
    for (const c of document.querySelectorAll("#reasons .chip")) c.classList.toggle("active", c.dataset.reason === state.reason);
    renderTraces();
  } else if (EV) {
    $("eq").value = state.eq; $("show").value = state.show;
    renderEval();
  }
}

function debounce(fn, ms) { let t; return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); }; }
$("q").addEventListener("input", debounce(() => { state.q = $("q").value; limit = PAGE; update(); }, 150));
$("eq").addEventListener("input", debounce(() => { state.eq = $("eq").value; evalLimit = PAGE; update(); }, 150));
$("verdict").addEventListener("change", () => { state.verdict = $("verdict").value; limit = PAGE; update(); });
$("problem").addEventListener("change", () => { state.problem = $("problem").value; limit = PAGE; update(); });
$("bench").addEventListener("change", () => { state.bench = $("bench").value; evalLimit = PAGE; update(); });
$("show").addEventListener("change", () => { state.show = $("show").value; evalLimit = PAGE; update(); });
window.addEventListener("hashchange", () => { readHash(); update(); });

readHash();
header();
setupTraces();
setupEval();
update();
</script>
</body>
</html>
"""
