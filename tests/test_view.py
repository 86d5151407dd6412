"""`seqdistill view`: the page opens from disk in headless Chromium (Debian's `chromium`, installed by
`make test`), filters by drop reason, verdict and search through the URL fragment, shows each model's eval
samples side by side, and shows trace text as text (a trace holding `</script>` or HTML stays inert).

The run directory is written here in the real schemas (generate's `sample_features()`, eval's per-sample
records) with the traces chosen to cover every case; no model is needed to view it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import pytest

from seqdistill import generate, store, view

HOSTILE = '</script><script>document.title="pwned"</script><b>bold</b><!-- <img src=x onerror=alert(1)>'
# (problem, sample, completion, answer, correct, keep, drop_reason, finish_reason)
TRACES = [
    (0, 0, "<think>3 plus 4 makes 7</think>The answer is 7.", "7", True, True, None, "stop"),
    (0, 1, "<think>3 plus 4 makes 8, a needle here</think>The answer is 8.", "8", False, False, "wrong_answer", "stop"),
    (0, 2, "<think>3 plus 4 is 7 again</think>The answer is 7.", "7", True, False, "over_limit", "stop"),
    (0, 3, "<think>adding and adding and adding", None, False, False, "truncated", "length"),
    (1, 0, "<think>5 minus 2 is 3</think>So 3.", "3", True, True, None, "stop"),
    (1, 1, f"<think>{HOSTILE}</think>{HOSTILE} 4", "4", False, False, "wrong_answer", "stop"),
    (1, 2, "<think>5 minus 2</think>I don't know.", None, False, False, "no_answer", "stop"),
    (2, 0, "<think>2 times 6 is 11</think>11", "11", False, False, "wrong_answer", "stop"),
]
QUESTIONS = ["Ann has 3 pens and gets 4 more. How many pens?", "Bo has 5 cups and breaks 2. How many cups?",
             "Cy has 2 bags of 6 nuts. How many nuts?"]
GOLDS = ["7", "3", "12"]


def find_chromium() -> str | None:
    return next(filter(None, (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome"))), None)


CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (make test installs Debian's "
                                                             "`chromium` with apt-get when run as root)")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    rows = []
    for p, s, text, answer, correct, keep, reason, finish in TRACES:
        rows.append({
            "messages": [{"role": "user", "content": QUESTIONS[p]}, {"role": "assistant", "content": text}],
            "problem_id": f"arith-{p}", "problem_index": p, "sample_index": s, "question": QUESTIONS[p],
            "gold": GOLDS[p], "completion": text, "finish_reason": finish, "prompt_tokens": 20,
            "completion_tokens": 10 + s, "teacher": "tiny-teacher", "prefill": "", "teacher_topk": None,
            "answer": answer, "correct": correct, "keep": keep, "drop_reason": reason, "verdict_detail": None,
            "verifier": "math-verify"})
    features = generate.sample_features()
    store.write_parquet([r for r in rows if r["keep"]], run / "generate" / "data" / "train.parquet", features)
    store.write_parquet([r for r in rows if not r["keep"]], run / "generate" / "data" / "dropped.parquet", features)
    (run / "generate" / "stats.json").write_text(json.dumps({"funnel": {"generated": 8, "finished": 7, "kept": 2}}))
    # eval: two models, two problems, two samples each; "after" gains problem b, and no model solves c
    right = {"before": {"b": [False, False], "c": [False, False]}, "after": {"b": [True, False], "c": [False, False]}}
    results = {}
    for model, problems in right.items():
        samples = [{"problem_id": f"heldout-{p}", "sample_index": j, "question": f"Question {p}?", "prompt": "...",
                    "gold": "9", "response": f"<think>{model} thinks about {p}</think>It is {9 if ok else 1}.",
                    "answer": "9" if ok else "1", "correct": ok, "verdict": "passed" if ok else "wrong_answer",
                    "verdict_detail": "", "finish_reason": "stop", "response_tokens": 12}
                   for p, oks in problems.items() for j, ok in enumerate(oks)]
        store.write_parquet(samples, run / "eval" / model / "heldout" / "samples.parquet")
        n = sum(sum(o) for o in problems.values())
        results[model] = {"heldout": {"pass@1": n / 4, "pass@1_stderr": 0.1}}
    (run / "eval" / "results.json").write_text(json.dumps(results))
    return run


@pytest.fixture(scope="module")
def page(run_dir) -> Path:
    return view.write(run_dir)


class DOM(HTMLParser):
    """Start tags with their attributes, and the text of each element that has an id."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: dict[str, str] = {}
        self.open: list[tuple[str, str | None]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag not in ("br", "img", "input", "meta", "link", "hr", "wbr"):
            self.open.append((tag, attrs.get("id")))

    def handle_endtag(self, tag):
        while self.open:
            if self.open.pop()[0] == tag:
                break

    def handle_data(self, data):
        for _, ident in self.open:
            if ident:
                self.text[ident] = self.text.get(ident, "") + data

    def find(self, tag: str, **attrs) -> list[dict]:
        """Elements by tag and attributes (class_ is class, data_x is data-x; True: present)."""
        want = {k.rstrip("_").replace("_", "-"): v for k, v in attrs.items()}
        return [a for t, a in self.tags if t == tag and all(k in a and (v is True or a[k] == v) for k, v in want.items())]


def open_page(path: Path, tmp_path: Path, fragment: dict | None = None) -> tuple[DOM, str]:
    """The DOM after the page's script ran, as headless Chromium serialises it."""
    url = path.resolve().as_uri() + ("#" + urllib.parse.urlencode(fragment) if fragment else "")
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return DOM(out.stdout), out.stdout


def traces(dom: DOM) -> list[dict]:
    return dom.find("article", class_="trace")


@needs_chromium
def test_filter_by_reason(page, tmp_path):
    dom, _ = open_page(page, tmp_path)
    assert len(traces(dom)) == len(TRACES)
    assert dom.text["count"].startswith(f"{len(TRACES)} of {len(TRACES)} traces in 3 problems")

    dom, _ = open_page(page, tmp_path, {"reason": "wrong_answer"})
    shown = traces(dom)
    wrong = [t for t in TRACES if t[6] == "wrong_answer"]
    assert [a["data-reason"] for a in shown] == ["wrong_answer"] * len(wrong)
    assert sorted(a["data-problem"] for a in shown) == sorted(f"arith-{t[0]}" for t in wrong)
    assert dom.text["count"].startswith(f"{len(wrong)} of {len(TRACES)} traces in 3 problems · reason wrong_answer")
    assert [c for c in dom.find("button", class_="chip active")] == [{"class": "chip active", "data-reason": "wrong_answer"}]

    dom, _ = open_page(page, tmp_path, {"reason": "kept", "problem": "arith-1"})
    assert [(a["data-reason"], a["data-problem"]) for a in traces(dom)] == [("kept", "arith-1")]
    dom, _ = open_page(page, tmp_path, {"verdict": "no answer"})
    assert sorted(a["data-reason"] for a in traces(dom)) == ["no_answer", "truncated"]


@needs_chromium
def test_search_and_folded_think(page, tmp_path):
    dom, text = open_page(page, tmp_path, {"q": "NEEDLE"})
    assert [a["data-reason"] for a in traces(dom)] == ["wrong_answer"]
    assert dom.text["count"].startswith("1 of 8 traces in 1 problem")
    assert "<mark>needle</mark>" in text
    assert len(dom.find("details", class_="think", open=True)) == 1  # the hit is in the think block: unfolded
    dom, _ = open_page(page, tmp_path)
    assert dom.find("details", class_="think") and not dom.find("details", open=True)  # folded by default


@needs_chromium
def test_trace_text_stays_text(page, tmp_path):
    dom, text = open_page(page, tmp_path, {"problem": "arith-1", "reason": "wrong_answer"})
    assert [a["data-reason"] for a in traces(dom)] == ["wrong_answer"]  # the page's script ran to the end
    assert "pwned" not in text.split("<title>")[1].split("</title>")[0]
    assert "<b>bold</b>" not in text and not dom.find("img")  # the trace's tags are text, not elements
    assert "&lt;/script&gt;&lt;script&gt;document.title=\"pwned\"&lt;/script&gt;&lt;b&gt;bold&lt;/b&gt;" in text


@needs_chromium
def test_eval_side_by_side(page, tmp_path):
    dom, _ = open_page(page, tmp_path, {"tab": "eval"})
    problems = dom.find("section", class_="problem")
    assert [p["data-problem"] for p in problems] == ["heldout-b", "heldout-c"]
    assert [c["data-model"] for c in dom.find("div", class_="col")] == ["before", "after"] * 2
    assert dom.text["eval-count"].startswith("2 of 2 problems")
    dom, _ = open_page(page, tmp_path, {"tab": "eval", "show": "gained"})
    assert [p["data-problem"] for p in dom.find("section", class_="problem")] == ["heldout-b"]
    dom, _ = open_page(page, tmp_path, {"tab": "eval", "show": "none"})
    assert [p["data-problem"] for p in dom.find("section", class_="problem")] == ["heldout-c"]


def embedded(path: Path) -> dict:
    text = path.read_text()
    return json.loads(text.split('id="seqdistill-data">', 1)[1].split("</script>", 1)[0])


def test_page_is_self_contained_and_escaped(page):
    text = page.read_text()
    assert "pwned" in text and HOSTILE not in text and text.count("</script>") == 2  # only the page's own two
    source = (Path(view.__file__).parent / "templates" / "view.html").read_text()  # the shipped page
    assert not any(s in source for s in ("src=", "href=", "http://", "https://", "@import", "url("))  # nothing to fetch
    data = embedded(page)
    assert HOSTILE in data["generate"]["traces"][5]["body"]


def test_cap_keeps_every_reason_and_says_so(run_dir, tmp_path):
    data = embedded(view.write(run_dir, tmp_path / "small.html", max_traces=5, max_chars=100))
    gen = data["generate"]
    assert len(gen["traces"]) == 5 and gen["total"] == len(TRACES)
    assert {t["reason"] for t in gen["traces"]} == {"kept", "wrong_answer", "over_limit", "truncated", "no_answer"}
    assert gen["totals"]["wrong_answer"] == 3
    assert data["eval"]["embedded"] == 4 and data["eval"]["total"] == 8  # whole problems: one of the two fits

    long = view.content("<think>" + "x" * 500 + "</think>" + "y" * 50 + "END", "think", 100)
    assert long["cut"] == 400 and long["body"].endswith("END") and "400 characters left out" in long["think"]


def test_directory_without_a_run_is_one_line(tmp_path):
    (tmp_path / "sft").mkdir()
    out = subprocess.run([sys.executable, "-m", "seqdistill", "view", str(tmp_path)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "holds no traces to view" in out.stderr
