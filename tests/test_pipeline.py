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
        "engine": {"max_model_len": 512, "kv_cache_memory_bytes": 536870912, "enforce_eager": True},
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


def api_recipe(tmp_path, server) -> str:
    """generate and eval with the fault server as the teacher (no engine, no model: seconds)."""
    recipe = tmp_path / "api.yaml"
    common = {"prompt": {"template": "number"}, "answer": {"extraction": "last_number"},
              "engine": {"backend": "openai", "base_url": server.url}, "report_to": ["none"]}
    generate = {"model": server.model, "problems": {"num_problems": 4}, "sampling": {"n": 2, "max_tokens": 16},
                "chunk_size": 2, **common}
    evaluate = {"benchmarks": [{"name": "embedded-heldout", "num_problems": 2}], "sampling": {"n": 1, "max_tokens": 16},
                "pass_k": [1], **common}
    recipe.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "generate": generate, "eval": evaluate}))
    return str(recipe)


def test_a_changed_setting_never_deletes_samples(tmp_path, caplog):
    """Re-filtering reuses the samples; a change that alters them sets the old stage aside, whole, and says where
    (and so does eval, after generate ran again)."""
    from fault_server import FaultServer

    run = tmp_path / "run"
    with FaultServer() as server:
        recipe = api_recipe(tmp_path, server)
        pipeline.run(pipeline.load(recipe, []))
        chunks = sorted(p.name for p in (run / "generate" / "samples").rglob("chunk-*.parquet"))
        sent = server.requests
        assert sent == 8 + 2 and len(chunks) == 2  # generate: 4 problems x 2; eval: 2 x 1

        pipeline.run(pipeline.load(recipe, ["generate.filters.max_per_problem=1"]))  # re-filters only
        assert server.requests == sent + 2 and not list(run.glob("generate.old-*"))  # only eval sampled again ...
        assert len(list(run.glob("eval.old-*"))) == 1  # ... its earlier run set aside: a stage before it ran

        caplog.clear()
        pipeline.run(pipeline.load(recipe, ["generate.filters.max_per_problem=1", "generate.sampling.n=1"]))
        aside = sorted(run.glob("generate.old-*"))
        assert len(aside) == 1 and len(list(run.glob("eval.old-*"))) == 2 and server.requests == sent + 2 + 4 + 2
        assert sorted(p.name for p in (aside[0] / "samples").rglob("chunk-*.parquet")) == chunks  # kept whole
        assert (aside[0] / "stats.json").is_file() and (run / "generate" / "stats.json").is_file()
        said = [r.getMessage() for r in caplog.records if ".old-" in r.getMessage()]
        assert len(said) == 2 and str(aside[0]) in said[0] and "a stage before eval ran" in said[1]
        assert "generate settings changed (sampling.n: 2 -> 1)" in said[0]


def test_set_aside_and_overwrite_say_what_they_do(tmp_path, caplog):
    from seqdistill import config as configlib
    from seqdistill import generate

    out = tmp_path / "generate"
    cfg = configlib.load(generate.GenerateConfig, None, [f"output_dir={out}"])
    assert generate.OUTPUT.set_aside(out, "why") is None  # nothing there: nothing to move
    generate.OUTPUT.prepare(out, cfg, overwrite=False)
    (out / "samples").mkdir()
    (out / "notes.txt").write_text("mine")
    first = generate.OUTPUT.set_aside(out, "settings changed")
    assert not out.exists() and first.name.startswith("generate.old-") and (first / "notes.txt").is_file()
    generate.OUTPUT.prepare(out, cfg, overwrite=False)
    second = generate.OUTPUT.set_aside(out, "settings changed")
    assert second != first and second.is_dir() and first.is_dir()  # two set aside in one second: both kept

    generate.OUTPUT.prepare(out, cfg, overwrite=False)
    (out / "samples").mkdir()
    (out / "stats.json").write_text("{}")
    caplog.clear()
    generate.OUTPUT.prepare(out, cfg, overwrite=True)
    assert any("--overwrite: deleting samples/, stats.json, seqdistill_config.yaml in" in r.getMessage()
               for r in caplog.records)
    assert not (out / "samples").exists()


def test_temporary_files_of_killed_writes_are_removed(tmp_path):
    import os

    from seqdistill import config as configlib
    from seqdistill import store

    out = tmp_path / "generate"
    stale = [out / "data" / ".train.parquet.tmp999999999", out / ".stats.json.tmp999999999", out / ".README.md.tmp",
             out / "samples" / "shard-00000-of-00001" / ".chunk-00000.parquet.tmp999999999",
             out / f".seqdistill_config.yaml.tmp{os.getpid()}"]  # this process writes nothing while it cleans up
    live = out / "data" / f".dropped.parquet.tmp{os.getppid()}"  # a running writer's (a shard job beside this one)
    kept = [out / "data" / "train.parquet", out / "stats.json", out / "notes.tmp", out / ".hidden", live]
    recent = [out / ".results.json.tmp999999999",  # no machine in its name: maybe another's, being written; left for now
              out / "data" / f".train.parquet.tmp999999999-{'0' * 8 if configlib.HOST != '0' * 8 else '1' * 8}"]  # another machine's
    killed_here = [out / "data" / f".train.parquet.tmp999999999-{configlib.HOST}",  # this machine's, its writer gone: at once
                   store.temp_path(out / "stats.json")]  # this process's: it writes nothing while it cleans up
    for path in stale + kept + recent + killed_here:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
        if path not in recent + killed_here:
            os.utime(path, (1, 1))
    assert sorted(store.remove_stale_temps(out)) == sorted(stale + killed_here)
    assert all(p.exists() for p in kept + recent) and not any(p.exists() for p in stale + killed_here)


def test_sft_checks_run_before_generate(tmp_path, monkeypatch):
    """sft's precision on this device and its LoRA targets are refused before the first stage, which writes nothing."""
    import torch

    from seqdistill.engines import engine

    def tripwire(*args, **kwargs):
        raise AssertionError("generate started an engine for a run that must be refused")

    monkeypatch.setattr(engine, "load_vllm", tripwire)
    recipe = tmp_path / "p.yaml"
    recipe.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), **RECIPE}))
    with pytest.raises(ConfigError, match=r"lora.target_modules \['nope_proj'\] match no module"):
        pipeline.run(pipeline.load(str(recipe), ["sft.lora.target_modules=[nope_proj]"]))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="dtype float16 training needs a GPU"):
            pipeline.run(pipeline.load(str(recipe), ["sft.dtype=float16"]))
    assert not (tmp_path / "run").exists()
