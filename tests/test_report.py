"""The eval's paired comparison (results.json, results.md) and the report's sections and figures, on a small run
directory written with the stages' own writers (store, card.stats, evaluate.collect).
The same report on a real run (real vLLM and TRL) is checked by tests/test_pipeline.py."""

import json

import pytest

from seqdistill import card, report, store
from seqdistill import config as configlib
from seqdistill.config import ConfigError
from seqdistill.evaluate import EvalConfig, collect
from seqdistill.generate import GenerateConfig
from seqdistill.sft import SFTStageConfig

from test_metrics import PAIRED

MODEL = "embedded:SmolLM2-135M-Instruct"


def eval_config(out, compare=(("before", "after"),)) -> EvalConfig:
    return configlib.load(EvalConfig, None, [
        f"output_dir={out}", f"models=[{{model: '{MODEL}', name: before}}, {{model: '{MODEL}', name: after}}]",
        f"compare={json.dumps([list(p) for p in compare])}", "sampling.n=4", "pass_k=[1,4]"])


def write_eval(out) -> EvalConfig:
    """Two models' samples on four problems (the hand-computed example of test_metrics) and their results."""
    cfg = eval_config(out)
    for which, name in enumerate(("before", "after")):
        rows = [{"problem_id": f"p{i}", "sample_index": j, "question": f"Question {i}: 2 + {i}?", "gold": str(2 + i),
                 "response": ("Let me think. " * 200 if j == 0 else "") + f"The answer is {2 + i if ok else 0}",
                 "answer": str(2 + i if ok else 0), "correct": ok, "finish_reason": "stop", "response_tokens": 5 + 10 * i}
                for i, pair in enumerate(PAIRED) for j, ok in enumerate(pair[which])]
        store.write_parquet(rows, out / name / "embedded-heldout" / "samples.parquet")
        p1 = sum(r["correct"] for r in rows) / len(rows)
        store.write_text(out / name / "embedded-heldout" / "results.json", json.dumps({
            "problems": 4, "samples_per_problem": 4, "pass@1": p1, "pass@1_stderr": 0.1, "pass@4": p1, "maj@4": p1,
            "truncated_share": 0.0, "seconds": 12.0,
            "settings": {"sampling": {"greedy": False, "temperature": 0.6, "top_p": 0.95, "n": 4, "max_tokens": 96},
                         "problems": {"source": "embedded"}}}))
    configlib.save(cfg, out / store.CONFIG_FILE)
    return cfg


def test_eval_table_shows_the_paired_difference_and_flips(tmp_path):
    results = collect(write_eval(tmp_path), tmp_path)
    c = results["after"]["embedded-heldout"]["compare"]["before"]
    assert c["delta_pass@1"] == pytest.approx(0.0625) and c["delta_pass@1_stderr"] == pytest.approx((0.546875 / 3) ** 0.5 / 2)
    assert (c["gained"], c["lost"], c["problems"], c["same_seeds"]) == (1, 1, 4, True)
    assert "compare" not in results["before"]["embedded-heldout"]
    assert json.loads((tmp_path / "results.json").read_text()) == results
    table = (tmp_path / "results.md").read_text()
    assert "| benchmark | model − baseline | Δ pass@1 ± paired s.e. | gained | lost | problems |" in table
    assert "| embedded-heldout | after − before | +0.062 ± 0.213 | 1 | 1 | 4 |" in table
    assert "same seeds" in table and "at least half of its samples are right" in table


def test_compare_names_two_known_models():
    with pytest.raises(ConfigError, match=r"compare\[0\]: no model named 'student'; models are before, after"):
        eval_config("out", [("before", "student")])
    with pytest.raises(ConfigError, match=r"compare\[0\] must name two different models as \[baseline, model\]"):
        eval_config("out", [("before", "before")])


def write_run(run):
    """generate/ (kept and dropped traces, stats), sft/ (metrics with TRL's log history), eval/ (two models, paired)."""
    gen_cfg = GenerateConfig(model=MODEL)
    gen_cfg.sampling.n, gen_cfg.sampling.max_tokens = 4, 64
    rows = []
    for i in range(12):
        for j in range(4):
            correct = j < i % 4
            truncated = not correct and j == 3
            keep = correct and j < 2
            rows.append({"problem_id": f"p{i}", "question": f"Tom has {i} apples and buys 2. How many?", "gold": str(i + 2),
                         "completion": ("step " * (400 if keep else 5)) + (f"The answer is {i + 2}" if correct else "so 0"),
                         "completion_tokens": 64 if truncated else 10 + 3 * i + j, "correct": correct, "keep": keep,
                         "drop_reason": None if keep else "over_limit" if correct else "truncated" if truncated else "wrong_answer",
                         "answer": str(i + 2) if correct else "0", "finish_reason": "length" if truncated else "stop"})
    store.write_parquet([r for r in rows if r["keep"]], run / "generate" / "data" / "train.parquet")
    store.write_parquet([r for r in rows if not r["keep"]], run / "generate" / "data" / "dropped.parquet")
    samples = store.read_parquet([run / "generate" / "data" / "train.parquet", run / "generate" / "data" / "dropped.parquet"])
    stats = card.stats(samples, [{"seconds": 3.0, "tokens": 900}])
    configlib.save(gen_cfg, run / "generate" / store.CONFIG_FILE)
    store.write_text(run / "generate" / "stats.json", json.dumps(stats))
    history = [{"loss": 2.0 - 0.1 * s, "learning_rate": 1e-3 * (1 - s / 12), "epoch": s / 6, "step": s} for s in range(1, 13)]
    history += [{"eval_loss": 1.8 - 0.1 * s, "epoch": s / 6, "step": s} for s in (6, 12)]
    history.append({"train_loss": 1.5, "train_runtime": 30.0, "epoch": 2.0, "step": 12})
    configlib.save(SFTStageConfig(student=MODEL, logging_steps=1), run / "sft" / store.CONFIG_FILE)
    store.write_text(run / "sft" / "metrics.json", json.dumps({
        "train_loss": 1.5, "global_step": 12, "train_seconds": 30.0, "train_tokens_per_second": 100.0,
        "peak_rss_mb": 900.0, "log_history": history}))
    collect(write_eval(run / "eval"), run / "eval")


def test_report_has_every_section_and_figure(tmp_path):
    run = tmp_path / "run"
    write_run(run)
    text = report.write(run).read_text()
    for section in ("## Provenance", "| generate |", "| sft |", "| eval |", "versions: ", "teacher pass@1 (",
                    "## Results", "| embedded-heldout | after − before | +0.062 ± 0.213 | 1 | 1 | 4 |",
                    "### after against before on embedded-heldout (paired)", "gained 1 and lost 1 problems",
                    "**gained** (1): 1/4 → 3/4 \"Question 0: 2 + 0?\"", "**lost** (1): 2/4 → 0/4",
                    "### pass@k and maj@k against k", "## Teacher traces", "### How hard the problems were for the teacher",
                    "3 of 12 problems contribute no trace", "### Length and correctness", "### Kept and dropped lengths per reason",
                    "**kept**", "**truncated**", "**wrong_answer**", "**over_limit**", "characters left out ...]",
                    "## Student training", "Logged every 1 steps."):
        assert section in text, section
    assert "No eval loss" not in text  # the history has eval_loss
    figures = ("funnel", "pass_rate", "length_correctness", "lengths", "loss", "pass_at_1", "pass_at_k",
               "paired_embedded-heldout_after_vs_before")
    for name in figures:
        assert f"({name}.png)" in text and (run / f"{name}.png").stat().st_size > 5000, name
    # a long kept trace keeps its end (the answer) after the cut
    kept = text.split("**kept**")[1].split("```")[1]
    assert "[... " in kept and kept.rstrip().endswith("The answer is 11")


def test_head_tail():
    assert report.head_tail("short") == "short"
    text = "a" * 1000 + "THE END"
    cut = report.head_tail(text, head=10, tail=7)
    assert cut.startswith("a" * 10) and cut.endswith("THE END") and f"[... {len(text) - 17} characters left out ...]" in cut


def test_report_refuses_a_directory_without_a_run(tmp_path):
    with pytest.raises(ConfigError, match="holds no pipeline run"):
        report.write(tmp_path)
