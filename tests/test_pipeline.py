"""`seqdistill run`: the whole chain through the real CLI (real vLLM, real TRL), then skip-on-rerun."""

import json
import subprocess
import sys

import pytest
import yaml

from seqdistill import pipeline, report
from seqdistill.config import ConfigError

RECIPE = {
    "generate": {
        "model": "embedded:SmolLM2-135M-Instruct",
        "problems": {"num_problems": 24, "max_steps": 1},
        "prompt": {"template": "number"},
        "sampling": {"n": 8, "temperature": 0.8, "max_tokens": 64},
        "answer": {"extraction": "last_number"},
        "engine": {"max_model_len": 512, "kv_cache_memory_bytes": 536870912},
    },
    "sft": {"student": "embedded:SmolLM2-135M-Instruct", "max_steps": 2, "per_device_train_batch_size": 4,
            "report_to": ["none"], "merge": True, "max_length": 256},
    "eval": {
        "benchmarks": [{"name": "embedded-heldout", "num_problems": 6, "max_steps": 1}],
        "prompt": {"template": "number"}, "answer": {"extraction": "last_number"},
        "sampling": {"n": 2, "max_tokens": 48}, "pass_k": [1],
        # eager: tiny workloads, so skipping vLLM's compile (about 60 s an engine) saves CI time
        "engine": {"max_model_len": 512, "kv_cache_memory_bytes": 536870912, "enforce_eager": True},
    },
}


def seqdistill(*args):
    return subprocess.run([sys.executable, "-m", "seqdistill", *args], capture_output=True, text=True, timeout=1500)


@pytest.mark.slow
def test_pipeline_end_to_end_and_skip_on_rerun(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), **RECIPE}))
    first = seqdistill("run", str(recipe))
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "run"
    for path in ["pipeline.yaml", "generate/data/train.parquet", "generate/README.md", "sft/model/adapter_model.safetensors",
                 "sft/merged/config.json", "sft/metrics.json", "eval/results.md", "report.md", "funnel.png",
                 "lengths.png", "loss.png", "pass_at_1.png", "pass_at_k.png", "pass_rate.png", "length_correctness.png",
                 "paired_embedded-heldout_student-after_vs_teacher-student-before.png"]:
        assert (run / path).exists(), path
    results = json.loads((run / "eval" / "results.json").read_text())
    assert set(results) == {"teacher=student-before", "student-after"}
    paired = results["student-after"]["embedded-heldout"]["compare"]["teacher=student-before"]  # set by `run`
    assert paired["problems"] == 6 and paired["same_seeds"]
    text = (run / "report.md").read_text()
    for section in ("![funnel](funnel.png)", "## Provenance", "| sft |", "## Results", "| student-after − teacher=student-before |",
                    "(paired)", "### pass@k and maj@k against k", "### How hard the problems were for the teacher",
                    "### Length and correctness", "### Kept and dropped lengths per reason", "**kept**", "## Student training"):
        assert section in text, section

    again = seqdistill("run", str(recipe))
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("match this config; skipped") == 3

    changed = seqdistill("run", str(recipe), "--from", "eval", "--set", "eval.sampling.n=1")
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert "[eval] running" in changed.stdout and "[generate]" not in changed.stdout
    assert json.loads((run / "eval" / "results.json").read_text())["student-after"]["embedded-heldout"]["samples_per_problem"] == 1


def test_bad_pipelines_fail_before_anything_runs(tmp_path):
    recipe = tmp_path / "p.yaml"
    recipe.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "sft": {"dataset": str(tmp_path / "nowhere")}}))
    with pytest.raises(ConfigError, match="sft.dataset: dataset .*nowhere does not exist.*no generate stage"):
        pipeline.load(str(recipe), [])
    recipe.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), **RECIPE}))
    with pytest.raises(ConfigError, match=r"unknown setting sft.learning_rat \(did you mean sft.learning_rate\?\)"):
        pipeline.load(str(recipe), ["sft.learning_rat=1e-4"])
    with pytest.raises(ConfigError, match="sft.kd.mode offline .* set generate.teacher_logprobs: true"):
        pipeline.load(str(recipe), ["sft.kd.mode=offline"])
    with pytest.raises(ConfigError, match=r"sft.trl.warmup_ratio is not a trl.SFTConfig setting \(did you mean trl.warmup_steps\?\)"):
        pipeline.load(str(recipe), ["sft.trl={warmup_ratio: 0.1}"])
    with pytest.raises(ConfigError, match="unknown stage 'train'; stages are generate, sft, eval"):
        pipeline.run(pipeline.load(str(recipe), []), only=["train"])
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="holds no pipeline run"):
        report.write(tmp_path / "nothing")
    out = seqdistill("run", str(recipe), "--only", "train")
    assert out.returncode == 2 and out.stderr.strip() == "error: unknown stage 'train'; stages are generate, sft, eval"


def test_eval_may_name_what_the_pipelines_own_sft_will_write(tmp_path):
    recipe = tmp_path / "p.yaml"
    run = tmp_path / "run"
    models = [{"model": str(run / "sft" / "merged"), "name": "merged"},
              {"model": "embedded:SmolLM2-135M-Instruct", "name": "lora", "adapter": str(run / "sft" / "model")}]
    recipe.write_text(yaml.safe_dump({"run_dir": str(run), **RECIPE, "eval": {**RECIPE["eval"], "models": models}}))
    cfg = pipeline.load(str(recipe), [])
    assert [m.name for m in cfg.eval.models] == ["merged", "lora"]
    # a path this pipeline won't write still fails, and so does sft's output when the recipe has no sft stage
    with pytest.raises(ConfigError, match=r"models\[elsewhere\]: model path .*elsewhere does not exist"):
        pipeline.load(str(recipe), [f"eval.models=[{{model: {tmp_path / 'elsewhere'}}}]"])
    with pytest.raises(ConfigError, match=r"models\[merged\]: model path .*merged does not exist"):
        pipeline.load(str(recipe), ["sft=null"])
