"""`seqdistill eval` over every checkpoint of an sft run (issue 30): `checkpoints` expanded into NAME@STEP rows,
refused when malformed, the best step and the pass@1-by-step figure (on folders made by hand, nothing loads);
then a real LoRA sft run's two checkpoints served as adapters through vLLM."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from seqdistill import config as configlib
from seqdistill import evaluate, sft, store
from seqdistill.config import ConfigError
from seqdistill.evaluate import EvalConfig, ModelEntry

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"  # a hub id: checked by its name only, never loaded here


def lora_checkpoints(sft_dir: Path, steps) -> Path:
    """An sft output_dir as TRL leaves it: checkpoints/checkpoint-STEP (LoRA adapters), its TensorBoard logs
    (checkpoints/runs) and the final adapter (model/), which is not a checkpoint."""
    for step in steps:
        folder = sft_dir / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": BASE, "r": 8}))
    (sft_dir / "checkpoints" / "runs").mkdir(parents=True, exist_ok=True)
    (sft_dir / "model").mkdir(exist_ok=True)
    (sft_dir / "model" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": BASE, "r": 8}))
    return sft_dir


def load(*entries, extra=()) -> EvalConfig:
    return configlib.load(EvalConfig, None, [f"models={json.dumps(list(entries))}", *extra])


def test_checkpoints_expand_by_step_into_adapters_on_the_base(tmp_path):
    sft_dir = lora_checkpoints(tmp_path / "sft", (10, 2, 100))
    cfg = load({"model": BASE, "name": "student", "checkpoints": str(sft_dir)}, {"model": BASE, "name": "before"},
               extra=["compare=[[before, student@100]]"])
    entries = evaluate.expand(cfg.models)
    assert [m.label() for m in entries] == ["student@2", "student@10", "student@100", "before"]  # by step, not by name
    for m, step in zip(entries, (2, 10, 100)):
        assert (m.model, m.adapter) == (BASE, str(sft_dir / "checkpoints" / f"checkpoint-{step}"))
        assert m.checkpoint == {"of": "student", "step": step} and m.checkpoints is None
    assert entries[3] is cfg.models[1] and entries[3].checkpoint is None
    assert {"student@2", "student@10", "student@100", evaluate.STEPS_FIGURE} <= set(evaluate.output_layout(cfg).owned)
    # the checkpoints/ folder names the same checkpoints; unnamed, an entry is named after the sft run
    unnamed = load({"model": BASE, "checkpoints": str(sft_dir / "checkpoints")})
    assert [m.label() for m in evaluate.expand(unnamed.models)] == ["sft@2", "sft@10", "sft@100"]


def test_full_fine_tune_checkpoints_are_models_of_their_own(tmp_path):
    folders = [tmp_path / "sft" / "checkpoints" / f"checkpoint-{step}" for step in (3, 6)]
    for folder in folders:
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(b"")
    full = {"model": BASE, "name": "full", "checkpoints": str(tmp_path / "sft")}
    cfg = load(full)
    assert [(m.label(), m.model, m.adapter) for m in evaluate.expand(cfg.models)] == [
        ("full@3", str(folders[0]), None), ("full@6", str(folders[1]), None)]
    (folders[1] / "model.safetensors").unlink()  # each checkpoint is checked as the model it becomes
    with pytest.raises(ConfigError, match=r"^models\[full@6\]: model directory .*checkpoint-6 has no weights"):
        load(full)


BAD = {  # case: (entries (tmp_path -> list), extra settings, the one-line message)
    "missing-folder": (lambda t: [{"model": BASE, "name": "s", "checkpoints": str(t / "nope")}], [],
                       r"^models\[s\]: checkpoints \S+nope does not exist; point at an sft output_dir"),
    "no-checkpoint": (lambda t: [{"model": BASE, "name": "s", "checkpoints": str(t / "sft")}], [],
                      r"^models\[s\]: checkpoints \S+sft holds no checkpoint-STEP folder \(sft writes one every save_steps"),
    "with-adapter": (lambda t: [{"model": BASE, "name": "s", "checkpoints": str(t / "sft"),
                                 "adapter": str(t / "sft" / "model")}], [],
                     r"^models\[s\]: checkpoints and adapter can't be combined"),
    "adapter-as-model": (lambda t: [{"model": str(t / "sft" / "model"), "name": "s", "checkpoints": str(t / "sft")}], [],
                         r"^models\[s\]: model \S+model is a LoRA adapter; with LoRA checkpoints, model is the base student"),
    "compare-unknown-step": (lambda t: [{"model": BASE, "name": "s", "checkpoints": str(t / "sft")}], ["compare=[[s@2, s@3]]"],
                             r"^compare\[0\]: no model named 's@3'; models are s@2, s@4$"),
    "same-names": (lambda t: [{"model": BASE, "checkpoints": str(t / "sft")},
                              {"model": BASE, "checkpoints": str(t / "b" / "sft")}], [],
                   r"^model names must be unique, got \['sft@2', 'sft@4', 'sft@2', 'sft@4'\]"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_checkpoints_are_refused_in_one_line(case, tmp_path):
    entries, extra, message = BAD[case]
    if case != "no-checkpoint":
        lora_checkpoints(tmp_path / "sft", (2, 4))
        lora_checkpoints(tmp_path / "b" / "sft", (2, 4))
    else:
        (tmp_path / "sft" / "model").mkdir(parents=True)  # a finished run that kept no checkpoint
    with pytest.raises(ConfigError, match=message) as refused:
        load(*entries(tmp_path), extra=extra)
    assert len(refused.value.problems) == 1 and "\n" not in str(refused.value)


def test_a_pipelines_checkpoints_are_listed_when_eval_starts(tmp_path):
    """In `seqdistill run`, eval is validated before sft has written anything: only the shape of `checkpoints` is
    checked then; the checkpoints are listed, and checked, when eval starts (with_checkpoints, from run)."""
    run_sft = tmp_path / "run" / "sft"
    cfg = EvalConfig(models=[ModelEntry(BASE, name="student", checkpoints=str(run_sft)), ModelEntry(BASE, name="before")],
                     compare=[["before", "student@4"]], output_dir=str(tmp_path / "run" / "eval"))
    cfg.planned = (str(run_sft),)  # as PipelineConfig sets it
    assert cfg.validate() == []
    cfg.models.append(ModelEntry(BASE, name="both", checkpoints=str(run_sft), adapter=str(run_sft / "model")))
    assert [e.split(":")[0] for e in cfg.validate()] == ["models[both]"]  # the shape: checkpoints without adapter
    cfg.models.pop()
    with pytest.raises(ConfigError, match=r"^models\[student\]: checkpoints \S+ does not exist"):
        evaluate.with_checkpoints(cfg)  # sft wrote nothing

    lora_checkpoints(run_sft, (2, 4))
    work = evaluate.with_checkpoints(cfg)
    assert [m.label() for m in work.models] == ["student@2", "student@4", "before"]
    assert cfg.models[0].checkpoints == str(run_sft)  # what is saved and compared stays as the user wrote it
    cfg.compare = [["before", "student@3"]]
    assert cfg.validate() == []  # a step is known only once sft has run ...
    with pytest.raises(ConfigError, match=r"compare\[0\]: no model named 'student@3'"):
        evaluate.with_checkpoints(cfg)  # ... and checked then


def test_results_name_the_best_step_and_draw_pass_at_1_by_step(tmp_path):
    out = tmp_path / "eval"
    cfg = evaluate.with_checkpoints(load(
        {"model": BASE, "name": "student", "checkpoints": str(lora_checkpoints(tmp_path / "sft", (2, 4, 6)))},
        {"model": BASE, "name": "before"},
        extra=[f"output_dir={out}", "benchmarks=[{name: embedded-heldout}, {name: svamp}]", "greedy=true"]))
    scores = {"student@2": (0.25, 0.5), "student@4": (0.75, 0.5), "student@6": (0.5, 0.75), "before": (0.1, 0.1)}
    for name, per_bench in scores.items():  # results as evaluate writes them for each model and benchmark
        for bench, p in zip(("embedded-heldout", "svamp"), per_bench):
            store.write_text(out / name / bench / store.RESULTS_FILE, json.dumps({
                "problems": 4, "samples_per_problem": 1, "pass@1": p, "pass@1_stderr": 0.1, "truncated_share": 0.0,
                "settings": {"sampling": {"greedy": True, "temperature": 0.6, "top_p": 0.95}}}))
    results = evaluate.collect(cfg, out)
    assert results["student@4"]["svamp"]["checkpoint"] == {"of": "student", "step": 4}
    assert "checkpoint" not in results["before"]["svamp"]
    assert list(evaluate.checkpoint_series(results)) == ["student"]
    assert list(evaluate.checkpoint_series(results)["student"]) == [2, 4, 6]
    table = (out / store.RESULTS_TABLE).read_text()
    assert "| student@2 | 0.250 ± 0.100 |" in table and "| before |" in table
    assert "Best checkpoint of student by pass@1: embedded-heldout step 4 (0.750), svamp step 6 (0.750)." in table
    assert (out / evaluate.STEPS_FIGURE).read_bytes()[:4] == b"\x89PNG"


def test_every_checkpoint_of_a_lora_sft_run(tiny_llama, tmp_path):
    """A real LoRA training that leaves two checkpoints, each served unmerged as an adapter on the tiny base."""
    traces = tmp_path / "traces.jsonl"
    traces.write_text("\n".join(json.dumps({"messages": [
        {"role": "user", "content": f"What is {i} + 1?"}, {"role": "assistant", "content": f"{i + 1}"}]}) for i in range(8)))
    sft.run(configlib.load(sft.SFTStageConfig, None, [
        f"student={tiny_llama}", f"dataset={traces}", f"output_dir={tmp_path / 'sft'}", "max_steps=4", "save_steps=2",
        "learning_rate=5e-2", "report_to=[none]", "lora.r=8", "max_length=1024"]))  # the tiny Llama's context
    assert [step for step, _ in evaluate.checkpoint_dirs(str(tmp_path / "sft"))] == [2, 4]
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({
        "models": [{"model": tiny_llama, "name": "student", "checkpoints": str(tmp_path / "sft")}],
        "benchmarks": [{"name": "embedded-heldout", "num_problems": 4}], "output_dir": str(tmp_path / "eval"),
        "greedy": True, "sampling": {"max_tokens": 8}, "prompt": {"template": "number"}, "report_to": ["none"],
        "engine": {"kv_cache_memory_bytes": 128 << 20, "max_model_len": 512},
    }))
    # through the real CLI, in a process of its own: adapters need an engine started with LoRA support (the shared
    # tiny_llm is not), and vLLM engines in one process must not overlap (as test_eval's adapter test)
    proc = subprocess.run([sys.executable, "-m", "seqdistill", "eval", "--config", str(config)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert list(results) == ["student@2", "student@4"]
    for step in (2, 4):
        r = results[f"student@{step}"]["embedded-heldout"]
        assert r["checkpoint"] == {"of": "student", "step": step} and r["problems"] == 4
        assert (r["model"], r["adapter"]) == (tiny_llama, str(tmp_path / "sft" / "checkpoints" / f"checkpoint-{step}"))
        assert len(store.read_parquet([tmp_path / "eval" / f"student@{step}" / "embedded-heldout" / "samples.parquet"])) == 4
    assert "| student@2 |" in proc.stdout and "| student@4 |" in proc.stdout
    assert "Best checkpoint of student by pass@1: embedded-heldout step" in proc.stdout
    assert (tmp_path / "eval" / evaluate.STEPS_FIGURE).is_file()
