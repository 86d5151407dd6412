"""Eval results on the sft model cards (`seqdistill run` after its eval stage): the student's scores as the
card's `model-index`, read back with huggingface_hub's own card parser, and the paired comparison in its text.

The sft output directory and the eval's results are written by the stages' own writers (card.write_sft_cards,
evaluate.collect over per-model results.json and samples.parquet built as evaluate.evaluate builds them), from
made-up verdicts: no model runs. The hub push of the updated cards goes to the local stand-in of the hub
(tests/hub_server.py), in a subprocess, as in test_hub; `seqdistill run`'s hook is run with every stage done.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from huggingface_hub import ModelCard

from seqdistill import card, evaluate, hub, metrics, pipeline, report, sft, store
from seqdistill import config as configlib
from seqdistill.engines.engine import SamplingConfig

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import StandInHub  # noqa: E402

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
FUNNEL = {"generated": 16, "finished": 14, "formatted": 13, "correct": 6, "deduplicated": 5, "kept": 4}
METRICS = {"train_loss": 0.5, "global_step": 4, "train_seconds": 9.0, "train_tokens_per_second": 100.0,
           "device": "cpu", "dtype": "float32", "peak_rss_mb": 900}
T, F = True, False
# per model, per benchmark: one list of verdicts per problem (4 samples each)
VERDICTS = {
    "student-before": {"gsm8k": [[F, F, F, F], [T, F, F, F], [F, F, F, F]], "embedded-heldout": [[T, T, F, F], [F, F, F, F]]},
    "student-after": {"gsm8k": [[T, T, T, T], [T, T, F, F], [F, F, F, F]], "embedded-heldout": [[T, T, T, F], [F, F, F, F]]},
}


def write_sft(out: Path, merge: bool) -> sft.SFTStageConfig:
    """An sft output directory as sft.run leaves it: metrics.json and the cards (no weights: the cards don't read them)."""
    cfg = sft.SFTStageConfig(output_dir=str(out), merge=merge, push_to_hub="me/student")
    data = SimpleNamespace(source_stats={"funnel": FUNNEL}, teacher="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
                           n_train=4, end_of_turn="<|im_end|>", lengths={"max": 20}, mixture=None, aligner=None)
    (out / "model").mkdir(parents=True, exist_ok=True)
    if merge:
        (out / "merged").mkdir(exist_ok=True)
    store.write_text(out / "metrics.json", json.dumps(METRICS))
    card.write_sft_cards(cfg, data, METRICS)
    return cfg


def eval_config(out: Path, after: evaluate.ModelEntry) -> evaluate.EvalConfig:
    return evaluate.EvalConfig(
        models=[evaluate.ModelEntry(BASE, name="student-before"), after],
        benchmarks=[evaluate.BenchmarkConfig(name="gsm8k", num_problems=3),
                    evaluate.BenchmarkConfig(name="embedded-heldout", num_problems=2)],
        output_dir=str(out), compare=[["student-before", "student-after"]], pass_k=[1])


def write_eval(out: Path, after: evaluate.ModelEntry | None = None, verdicts=VERDICTS, cfg=None) -> dict:
    """OUTPUT_DIR/MODEL/BENCHMARK/{samples.parquet,results.json} as evaluate.evaluate writes them, then the
    real evaluate.collect: OUTPUT_DIR/results.json (with the paired comparison) and results.md. The first model
    gets the verdicts of student-before, the second those of student-after."""
    cfg = cfg or eval_config(out, after)
    for m, name in zip(cfg.models, verdicts):
        for b in cfg.benchmarks:
            samples = [{"problem_id": f"p{i}", "sample_index": j, "gold": "7", "answer": "7" if ok else "3", "correct": ok,
                        "finish_reason": "stop", "response_tokens": 20}
                       for i, problem in enumerate(verdicts[name][b.name]) for j, ok in enumerate(problem)]
            result = metrics.score(list(evaluate.per_problem_records(samples).values()), [1, 4])
            result.update({"model": m.model, "adapter": m.adapter, "benchmark": b.name, "seconds": 1.0,
                           "generated_tokens_per_second": 80.0, "problems_per_second": 3.0,
                           "settings": {"sampling": configlib.to_dict(SamplingConfig(n=4)) | {"n": 4, "greedy": False},
                                        "problems": configlib.to_dict(b.problems_config().resolved())}})
            store.write_parquet(samples, out / m.label() / b.name / "samples.parquet")
            store.write_text(out / m.label() / b.name / store.RESULTS_FILE, json.dumps(result, indent=2))
    return evaluate.collect(cfg, out)


def scores(model_card: ModelCard) -> dict:
    return {(r.dataset_type, r.dataset_name, r.dataset_config, r.dataset_split, r.metric_type): r.metric_value
            for r in model_card.data.eval_results}


def test_merged_student_scores_on_both_cards(tmp_path):
    write_sft(tmp_path / "sft", merge=True)
    results = write_eval(tmp_path / "eval", evaluate.ModelEntry(str(tmp_path / "sft" / "merged"), name="student-after"))
    before = {p: (p / "README.md").read_text() for p in (tmp_path / "sft" / "model", tmp_path / "sft" / "merged")}

    written = card.add_eval_results(tmp_path / "sft", tmp_path / "eval")
    assert written == [tmp_path / "sft" / "model" / "README.md", tmp_path / "sft" / "merged" / "README.md"]
    after = results["student-after"]
    for folder, name in ((tmp_path / "sft" / "model", "sft"), (tmp_path / "sft" / "merged", "sft-merged")):
        text = (folder / "README.md").read_text()
        parsed = ModelCard(text)
        assert parsed.data.model_name == name and parsed.data.to_dict()["model-index"][0]["name"] == name
        assert scores(parsed) == {
            **{("openai/gsm8k", "gsm8k (3 problems)", "main", "test", k): round(after["gsm8k"][k], 4)
               for k in ("pass@1", "pass@4", "maj@1", "maj@4")},
            **{("embedded-heldout", "embedded-heldout (2 problems)", None, "heldout", k): round(after["embedded-heldout"][k], 4)
               for k in ("pass@1", "pass@4", "maj@1", "maj@4")}}
        assert scores(parsed)["openai/gsm8k", "gsm8k (3 problems)", "main", "test", "pass@1"] == 0.5  # (4/4 + 2/4 + 0/4) / 3
        assert {r.task_type for r in parsed.data.eval_results} == {"text-generation"}
        names = {r.metric_name for r in parsed.data.eval_results if r.metric_type == "pass@1"}
        assert names == {"pass@1 (4 samples per problem)"}
        # what huggingface_hub writes back is what it read
        assert ModelCard(f"---\n{parsed.data.to_yaml()}\n---\n").data.to_dict() == parsed.data.to_dict()
        # the rest of the card is as sft wrote it; the evaluation goes before the resolved config
        old = {k: v for k, v in ModelCard(before[folder]).data.to_dict().items() if k != "model_name"}  # in model-index now
        assert {k: v for k, v in parsed.data.to_dict().items() if k != "model-index"} == old
        assert parsed.text.index("## Evaluation") < parsed.text.index("## Resolved config")
        assert card.without_section(parsed.text, card.EVAL_HEADING).strip() == ModelCard(before[folder]).text.strip()
        # the paired comparison with the untouched student, as eval computed it: diffs 1, 0.25, 0 -> 0.417 ± 0.300
        assert (f"- gsm8k: pass@1 +0.417 ± 0.300 (paired s.e.) against `student-before` (`{BASE}`) on the same 3 "
                "problems with the same seeds; 2 problems gained, 0 lost.") in text
        assert "- embedded-heldout: pass@1 +0.125 ± 0.125 (paired s.e.)" in text
        scored = "this model" if name == "sft-merged" else f"`{tmp_path / 'sft' / 'merged'}`, the same trained weights"
        assert f"Scored by `seqdistill eval` as `student-after` ({scored}):" in text
        assert "| gsm8k | 3 × 4 | 0.500 ± 0.289 | 0.0% |" in text
        assert "### Every model in that eval" in text and "| student-before |" in text  # eval's own results.md

    # unchanged results: nothing rewritten; new results replace the section, never add a second one
    assert card.add_eval_results(tmp_path / "sft", tmp_path / "eval") == []
    worse = {**VERDICTS, "student-after": {**VERDICTS["student-after"], "gsm8k": [[F, F, F, F], [T, F, F, F], [F, F, F, F]]}}
    write_eval(tmp_path / "eval", evaluate.ModelEntry(str(tmp_path / "sft" / "merged"), name="student-after"), worse)
    assert len(card.add_eval_results(tmp_path / "sft", tmp_path / "eval")) == 2
    parsed = ModelCard((tmp_path / "sft" / "merged" / "README.md").read_text())
    assert parsed.text.count("## Evaluation") == 1 and "- gsm8k: pass@1 +0.000 ± 0.000" in parsed.text
    assert scores(parsed)["openai/gsm8k", "gsm8k (3 problems)", "main", "test", "pass@1"] == round(1 / 12, 4)


def test_adapter_scores_and_stale_results(tmp_path):
    write_sft(tmp_path / "sft", merge=False)
    write_eval(tmp_path / "eval", evaluate.ModelEntry(BASE, name="student-after", adapter=str(tmp_path / "sft" / "model")))
    assert card.add_eval_results(tmp_path / "sft", tmp_path / "eval") == [tmp_path / "sft" / "model" / "README.md"]
    parsed = ModelCard((tmp_path / "sft" / "model" / "README.md").read_text())
    assert parsed.data.library_name == "peft" and len(parsed.data.eval_results) == 8  # 2 benchmarks x 4 metrics
    assert f"as `student-after` (this adapter on `{BASE}`):" in parsed.text

    # no eval results, or an eval of other models only: nothing to add
    assert card.add_eval_results(tmp_path / "sft", tmp_path / "nothing-here") == []
    write_eval(tmp_path / "other", evaluate.ModelEntry(BASE, name="student-after"))
    assert card.add_eval_results(tmp_path / "sft", tmp_path / "other") == []
    # the student trained again after that eval (`--only sft`): its new card gets none of the older scores
    write_sft(tmp_path / "sft", merge=False)
    results = tmp_path / "eval" / store.RESULTS_FILE
    os.utime(tmp_path / "sft" / "metrics.json", (results.stat().st_mtime + 60,) * 2)
    assert card.add_eval_results(tmp_path / "sft", tmp_path / "eval") == []
    assert ModelCard((tmp_path / "sft" / "model" / "README.md").read_text()).data.eval_results is None


def test_run_puts_the_scores_on_the_cards(tmp_path, monkeypatch, capsys):
    """`seqdistill run` with every stage done (skipped): its hook after eval writes the scores on the cards, once."""
    recipe = tmp_path / "p.yaml"
    recipe.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "generate": {"problems": {"num_problems": 4}},
                                      "sft": {"merge": True}, "eval": {"benchmarks": [
                                          {"name": "gsm8k", "num_problems": 3}, {"name": "embedded-heldout", "num_problems": 2}]}}))
    cfg = pipeline.load(str(recipe), [])
    for stage in ("generate", "sft", "eval"):  # each stage's directory holds its finished run
        stage_cfg = getattr(cfg, stage)
        pipeline.layout(stage, stage_cfg).prepare(Path(stage_cfg.output_dir), stage_cfg, False)
    store.write_text(tmp_path / "run" / "generate" / store.STATS_FILE, "{}")
    write_sft(tmp_path / "run" / "sft", merge=True)
    write_eval(tmp_path / "run" / "eval", cfg=cfg.eval)
    monkeypatch.setattr(pipeline, "preflight", lambda cfg, selected: {})  # the stages' checks load models
    monkeypatch.setattr(report, "write", lambda run_dir: "report.md")

    pipeline.run(cfg)
    out = capsys.readouterr().out
    assert out.count("match this config; skipped") == 3
    cards = [tmp_path / "run" / "sft" / folder / "README.md" for folder in ("model", "merged")]
    assert [line for line in out.splitlines() if line.startswith("eval results ->")] == [f"eval results -> {c}" for c in cards]
    merged = ModelCard(cards[1].read_text())
    assert scores(merged)["embedded-heldout", "embedded-heldout (2 problems)", None, "heldout", "pass@1"] == 0.375
    before = cfg.eval.models[0]
    assert (before.name, before.model) == ("teacher=student-before", "embedded:SmolLM2-135M-Instruct")
    assert (f"- gsm8k: pass@1 +0.417 ± 0.300 (paired s.e.) against `teacher=student-before` (`{before.model}`)"
            in merged.text)
    pipeline.run(cfg)  # nothing changed: nothing rewritten
    assert "eval results ->" not in capsys.readouterr().out


TOKEN = "hf_standin_secret_token_0123456789"


@pytest.fixture()
def standin():
    server = StandInHub(TOKEN)
    yield server
    server.stop()


def run_against(standin, script: str, tmp_path: Path) -> None:
    """`script` in a fresh Python whose hub is the stand-in (huggingface_hub reads its endpoint at import)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_ENDPOINT=standin.url, HF_HUB_OFFLINE="0", HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp_path / "hf-home"),
               HF_TOKEN=TOKEN)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_updated_cards_pushed_once(standin, tmp_path):
    """sft's push, then `seqdistill run`'s hook (scores on the cards, the cards pushed again), then the same hook
    on a rerun: no third commit."""
    write_sft(tmp_path / "sft", merge=True)
    write_eval(tmp_path / "eval", evaluate.ModelEntry(str(tmp_path / "sft" / "merged"), name="student-after"))
    script = textwrap.dedent(f"""
        from seqdistill import card, hub, sft
        cfg = sft.SFTStageConfig(output_dir={str(tmp_path / 'sft')!r}, merge=True, push_to_hub="me/student")
        hub.push("sft", cfg)
        for _ in range(2):
            card.add_eval_results(cfg.output_dir, {str(tmp_path / 'eval')!r})
            hub.push_cards(cfg)
    """)
    run_against(standin, script, tmp_path)
    for repo_id, folder in (("me/student", "model"), ("me/student-merged", "merged")):
        repo = standin.repo(repo_id)
        assert [c["message"] for c in repo.commits] == ["seqdistill sft: student",
                                                         "seqdistill run: eval results on the model card"]
        pushed = repo.files()["README.md"]
        assert pushed == (tmp_path / "sft" / folder / "README.md").read_bytes()
        assert ModelCard(pushed.decode()).data.eval_results
    marker = json.loads((tmp_path / "sft" / hub.MARKER).read_text())
    assert set(marker["cards"]) == {"me/student", "me/student-merged"} and len(marker["commits"]) == 4


def test_a_standalone_eval_puts_its_scores_on_the_sft_cards_and_pushes_them(standin, tmp_path):
    """`seqdistill eval` of an sft output (no pipeline): the scores on its model cards, the cards pushed again to the
    repos the sft push filled (its saved settings say which)."""
    sft_cfg = write_sft(tmp_path / "sft", merge=True)
    configlib.save(sft_cfg, tmp_path / "sft" / store.CONFIG_FILE)
    after = evaluate.ModelEntry(str(tmp_path / "sft" / "merged"), name="student-after")
    write_eval(tmp_path / "eval", after)
    before = (tmp_path / "sft" / "merged" / "README.md").read_text()
    script = textwrap.dedent(f"""
        from seqdistill import evaluate, hub, sft
        import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_model_index import eval_config
        from pathlib import Path
        hub.push("sft", sft.SFTStageConfig(output_dir={str(tmp_path / 'sft')!r}, merge=True, push_to_hub="me/student"))
        cfg = eval_config(Path({str(tmp_path / 'eval')!r}), evaluate.ModelEntry({after.model!r}, name="student-after"))
        for _ in range(2):  # a rerun changes nothing and pushes nothing
            evaluate.scores_on_sft_cards(cfg, Path(cfg.output_dir))
    """)
    run_against(standin, script, tmp_path)
    for repo_id, folder in (("me/student", "model"), ("me/student-merged", "merged")):
        repo = standin.repo(repo_id)
        assert [c["message"] for c in repo.commits] == ["seqdistill sft: student",
                                                         "seqdistill eval: eval results on the model card"]
        text = (tmp_path / "sft" / folder / "README.md").read_text()
        assert repo.files()["README.md"].decode() == text and "## Evaluation" in text and "student-after" in text
    assert before != (tmp_path / "sft" / "merged" / "README.md").read_text()
