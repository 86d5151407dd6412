"""`seqdistill eval` on the real vLLM engine: tiny random model (shared engine), LoRA adapters, SmolLM2 on MAWPS."""

import json
import subprocess
import sys

import pytest
import yaml

from seqdistill import config as configlib
from seqdistill import evaluate, models, sft, store
from seqdistill.config import ConfigError
from seqdistill.engines import engine
from seqdistill.evaluate import EvalConfig


def make_cfg(out, model_entries, benchmarks, *overrides):
    return configlib.load(EvalConfig, None, [
        f"output_dir={out}", f"models={json.dumps(model_entries)}", f"benchmarks={json.dumps(benchmarks)}",
        "sampling.n=4", "sampling.max_tokens=8", "prompt.template=number", "answer.extraction=last_number",
        "pass_k=[1,2]", *overrides,
    ])


def test_eval_end_to_end_and_resume(tiny_llm, tiny_llama, benchmarks_dir, tmp_path, monkeypatch):
    benches = [{"name": "embedded-heldout", "num_problems": 6},
               {"name": "mawps", "source": f"{benchmarks_dir}/mawps/test.jsonl", "num_problems": 5}]
    cfg = make_cfg(tmp_path / "eval", [{"model": tiny_llama, "name": "tiny"}], benches, "chunk_size=2")
    results = evaluate.run(cfg, llms={tiny_llama: tiny_llm})
    for bench, problems in (("embedded-heldout", 6), ("mawps", 5)):
        r = results["tiny"][bench]
        assert r["problems"] == problems and r["samples_per_problem"] == 4
        for key in ("pass@1", "pass@1_stderr", "pass@2", "maj@2", "pass@4", "maj@4", "truncated_share", "mean_response_tokens"):
            assert key in r
        assert 0 < r["mean_response_tokens"] <= 8
        assert r["settings"]["sampling"]["temperature"] == 0.6 and r["run"]["versions"]["vllm"]
        samples = store.read_parquet([tmp_path / "eval" / "tiny" / bench / "samples.parquet"])
        assert len(samples) == problems * 4
        assert set(samples.column_names) >= {"problem_id", "prompt", "response", "answer", "correct", "finish_reason"}
        assert samples[0]["question"][:20] in samples[0]["prompt"]  # the prompt as the model read it
    table = (tmp_path / "eval" / "results.md").read_text()
    assert "| tiny |" in table and "embedded-heldout pass@1" in table and "mawps maj@4" in table

    # interrupted inside mawps (3 chunks of 2, 2, 1 problems; the middle one lost): the rerun samples only
    # that chunk, and draws what the uninterrupted run drew
    mawps = tmp_path / "eval" / "tiny" / "mawps"
    whole = store.read_parquet([mawps / "samples.parquet"])["response"]
    for path in ("results.json", "samples.parquet", "chunks/chunk-00001.parquet"):
        (mawps / path).unlink()
    first_chunk = (mawps / "chunks" / "chunk-00000.parquet").stat().st_mtime
    resumed = evaluate.run(cfg, llms={tiny_llama: tiny_llm})
    assert (mawps / "chunks" / "chunk-00000.parquet").stat().st_mtime == first_chunk
    assert store.read_parquet([mawps / "samples.parquet"])["response"] == whole
    scores = ("pass@1", "pass@1_stderr", "pass@4", "maj@4", "truncated_share", "mean_response_tokens")
    assert [resumed["tiny"]["mawps"][k] for k in scores] == [results["tiny"]["mawps"][k] for k in scores]

    # a rerun finds every pair scored and starts no engine
    monkeypatch.setattr(engine, "load_vllm", lambda *a, **k: pytest.fail("engine started for a finished eval"))
    done = (mawps / "results.json").stat().st_mtime
    assert evaluate.run(cfg) == resumed
    assert (mawps / "results.json").stat().st_mtime == done


def test_lora_adapter_served_without_merging(tiny_llama, tmp_path):
    """Base and base + LoRA adapter in one engine (vLLM's LoRA support); the adapter changes the outputs."""
    traces = tmp_path / "traces.jsonl"
    traces.write_text("\n".join(json.dumps({"messages": [
        {"role": "user", "content": f"What is {i} + 1?"}, {"role": "assistant", "content": f"{i + 1}"}]}) for i in range(8)))
    sft.run(configlib.load(sft.SFTStageConfig, None, [
        f"student={tiny_llama}", f"dataset={traces}", f"output_dir={tmp_path / 'sft'}", "max_steps=2",
        "learning_rate=5e-2", "report_to=[none]", "lora.r=8", "max_length=1024"]))  # the tiny Llama's context
    adapter = str(tmp_path / "sft" / "model")
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({
        "models": [{"model": tiny_llama, "name": "base"}, {"model": tiny_llama, "name": "student", "adapter": adapter}],
        "benchmarks": [{"name": "embedded-heldout", "num_problems": 4}], "output_dir": str(tmp_path / "eval"),
        "greedy": True, "sampling": {"max_tokens": 8}, "prompt": {"template": "number"},
        "engine": {"kv_cache_memory_bytes": 128 << 20, "max_model_len": 512}, "compare": [["base", "student"]],
    }))
    # through the real CLI, in a process of its own (vLLM engines in one process must not overlap)
    proc = subprocess.run([sys.executable, "-m", "seqdistill", "eval", "--config", str(config)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| student |" in proc.stdout and "| base |" in proc.stdout
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(results) == {"base", "student"}
    base = store.read_parquet([tmp_path / "eval" / "base" / "embedded-heldout" / "samples.parquet"])["response"]
    student = store.read_parquet([tmp_path / "eval" / "student" / "embedded-heldout" / "samples.parquet"])["response"]
    assert len(base) == len(student) == 4 and base != student
    paired = results["student"]["embedded-heldout"]["compare"]["base"]  # greedy: one sample, so d_i is -1, 0 or 1
    assert paired["problems"] == 4 and paired["same_seeds"]
    assert (paired["gained"], paired["lost"]) == (paired["better"], paired["worse"])
    assert paired["delta_pass@1"] == pytest.approx((paired["gained"] - paired["lost"]) / 4)
    assert "| embedded-heldout | student − base |" in proc.stdout
    # another comparison of the same samples is a rebuild, not a different run: nothing is sampled again
    saved = (tmp_path / "eval" / "base" / "embedded-heldout" / "samples.parquet").stat().st_mtime_ns
    proc = subprocess.run([sys.executable, "-m", "seqdistill", "eval", "--config", str(config),
                           "--set", "compare=[[student, base]]"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "eval" / "base" / "embedded-heldout" / "samples.parquet").stat().st_mtime_ns == saved
    again = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert again["base"]["embedded-heldout"]["compare"]["student"]["delta_pass@1"] == -paired["delta_pass@1"]
    assert "compare" not in again["student"]["embedded-heldout"]


@pytest.fixture
def no_engine(monkeypatch):
    monkeypatch.setattr(engine, "load_vllm", lambda *a, **k: pytest.fail("engine started for a run that must be refused"))


def test_bad_input(no_engine, tiny_llama, benchmarks_dir, tmp_path):
    model = [{"model": tiny_llama}]
    with pytest.raises(ConfigError, match="unknown benchmark 'gsm9k': known ones are gsm8k, svamp, mawps"):
        make_cfg(tmp_path, model, [{"name": "gsm9k"}])
    with pytest.raises(ConfigError, match="pass@8 needs k <= samples per problem"):
        make_cfg(tmp_path, model, [{"name": "embedded-heldout"}], "pass_k=[8]")
    with pytest.raises(ConfigError, match=r"field\(s\) question, answer not found; it has input, target"):
        evaluate.run(make_cfg(tmp_path / "e", model, [{"name": "mine", "source": f"{benchmarks_dir}/mawps/test.jsonl"}]))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "Qwen/Qwen2.5-1.5B-Instruct", "r": 8}))
    with pytest.raises(ConfigError, match="was trained on Qwen/Qwen2.5-1.5B-Instruct, not"):
        evaluate.run(make_cfg(tmp_path / "e2", [{"model": tiny_llama, "adapter": str(adapter)}], [{"name": "embedded-heldout"}]))
    with pytest.raises(ConfigError, match=r"longest prompt \(\d+ tokens\) \+ sampling.max_tokens \(5000\) exceeds"):
        evaluate.run(make_cfg(tmp_path / "e3", model, [{"name": "embedded-heldout"}], "sampling.max_tokens=5000"))


@pytest.mark.slow
def test_smollm2_on_mawps(smollm2_llm, smollm2_path, benchmarks_dir, tmp_path):
    cfg = configlib.load(EvalConfig, None, [
        f"output_dir={tmp_path / 'eval'}", f"models=[{{model: '{models.DEFAULT_MODEL}', name: smollm2}}]",
        f"benchmarks=[{{name: mawps, source: '{benchmarks_dir}/mawps/test.jsonl', num_problems: 30}}]",
        "sampling.n=4", "sampling.max_tokens=128", "prompt.template=number", "answer.extraction=last_number",
        "engine.max_model_len=2048",
    ])
    results = evaluate.run(cfg, llms={models.DEFAULT_MODEL: smollm2_llm})
    r = results["smollm2"]["mawps"]
    assert r["problems"] == 30 and r["samples_per_problem"] == 4
    assert 0 <= r["pass@1"] <= r["pass@4"] <= 1 and r["pass@1"] > 0
    assert len(store.read_parquet([tmp_path / "eval" / "smollm2" / "mawps" / "samples.parquet"])) == 120
    assert "| smollm2 |" in (tmp_path / "eval" / "results.md").read_text()


def test_a_model_trained_again_is_scored_again(tiny_llm, tiny_llama, tmp_path):
    """A pair scored on weights that have since changed (sft trained again into the same folder) is not reused: it
    is scored again and its earlier scores are kept under stale/; unchanged weights are not scored twice."""
    import shutil

    model = tmp_path / "student"
    shutil.copytree(tiny_llama, model)
    cfg = make_cfg(tmp_path / "eval", [{"model": str(model), "name": "student"}], [{"name": "embedded-heldout", "num_problems": 3}])
    first = evaluate.run(cfg, llms={str(model): tiny_llm})["student"]["embedded-heldout"]
    assert first["weights"] == evaluate.weights_stamp(evaluate.ModelEntry(str(model)))
    results = tmp_path / "eval" / "student" / "embedded-heldout" / "results.json"
    done = results.stat().st_mtime_ns
    evaluate.run(cfg, llms={str(model): tiny_llm})
    assert results.stat().st_mtime_ns == done and not (tmp_path / "eval" / "stale").exists()
    weights = next(model.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes())  # the same bytes, written again: as a new training's save would
    again = evaluate.run(cfg, llms={str(model): tiny_llm})["student"]["embedded-heldout"]
    assert results.stat().st_mtime_ns != done and again["weights"] != first["weights"]
    [stale] = (tmp_path / "eval" / "stale").iterdir()
    assert stale.name.startswith("student-embedded-heldout-") and (stale / "results.json").is_file()
