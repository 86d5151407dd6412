"""Pushes to the Hugging Face Hub and the trackers' figures.

The hub cannot be reached from this machine, so pushes go to a local stand-in of it on 127.0.0.1
(tests/hub_server.py): the push calls themselves are the real huggingface_hub and datasets ones, pointed at
the stand-in through HF_ENDPOINT. huggingface_hub reads HF_ENDPOINT (and HF_HUB_OFFLINE, which the suite
sets) when it is imported, so every push runs the real `seqdistill` command in a subprocess, as a user
reruns it after the stage is done: only the push runs. The stand-in stores what it receives; the tests
read it back (cards through huggingface_hub's card parser, Parquet shards with pyarrow). The stages
themselves run in this process first, on the shared tiny engine (generate, eval) and real TRL (sft).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from huggingface_hub import DatasetCard, ModelCard, constants

from seqdistill import config as configlib
from seqdistill import evaluate, generate, hub, pipeline, sft, store
from seqdistill.config import ConfigError
from seqdistill.sources import problems

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import StandInHub  # noqa: E402

TOKEN = "hf_standin_secret_token_0123456789"


@pytest.fixture(scope="module")
def standin():
    server = StandInHub(TOKEN)
    yield server
    server.stop()


def seqdistill(args: list[str], standin: StandInHub, tmp_path: Path, token: str | None = TOKEN):
    """The real command, with huggingface_hub pointed at the stand-in (and no token file of this machine)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_ENDPOINT=standin.url, HF_HUB_OFFLINE="0", HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp_path / "hf-home"),
               **({"HF_TOKEN": token} if token else {}))
    return subprocess.run([sys.executable, "-m", "seqdistill", *args], env=env, capture_output=True, text=True, timeout=600)


def error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def write_config(path: Path, settings: dict) -> Path:
    path.write_text(yaml.safe_dump(settings))
    return path


def scalars(logdir: Path) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: acc.Scalars(tag)[-1].value for tag in acc.Tags()["scalars"]}


def parquet_rows(files: dict[str, bytes], prefix: str) -> tuple[list[str], int]:
    shards = sorted(p for p in files if p.startswith(prefix) and p.endswith(".parquet"))
    return shards, sum(pq.read_table(io.BytesIO(files[p])).num_rows for p in shards)


def round_trips(card_class, text: str):
    card = card_class(text)
    assert card_class(f"---\n{card.data.to_yaml()}\n---\n").data.to_dict() == card.data.to_dict()
    return card


def assert_no_token(*roots: Path, files: dict[str, bytes] | None = None) -> None:
    for root in roots:
        for path in Path(root).rglob("*"):
            if path.is_file():
                assert TOKEN.encode() not in path.read_bytes(), path
    for name, content in (files or {}).items():
        assert TOKEN.encode() not in content, name


# ---- bad input: before any sampling or training ----

@pytest.mark.parametrize("cls", [generate.GenerateConfig, sft.SFTStageConfig, evaluate.EvalConfig])
def test_push_to_hub_must_be_user_slash_name(cls, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the suite runs offline
    for bad in ("traces", "me/traces/v2", "me/bad name"):
        with pytest.raises(ConfigError, match="push_to_hub must name a hub repo as user/name") as e:
            configlib.load(cls, None, [f"push_to_hub={bad}"])
        assert len(e.value.problems) == 1
    configlib.load(cls, None, ["push_to_hub=me/traces"])  # a token and a good name pass
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE"):
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        configlib.load(cls, None, ["push_to_hub=me/traces"])


def test_wandb_not_installed_and_unknown_tracker():
    with pytest.raises(ConfigError, match="unknown tracker 'mlflow'"):
        configlib.load(generate.GenerateConfig, None, ["report_to=[mlflow]"])
    import importlib.util

    if importlib.util.find_spec("wandb") is None:  # wandb is not a dependency; installed, the check passes
        with pytest.raises(ConfigError, match="pip install wandb"):
            configlib.load(evaluate.EvalConfig, None, ["report_to=[wandb]"])


def test_push_without_token_fails_before_training(standin, tmp_path):
    out, seen = tmp_path / "sft", len(standin.requests)
    result = seqdistill(["sft", "--set", f"output_dir={out}", "push_to_hub=me/student", "merge=true"], standin, tmp_path,
                        token=None)
    line = error_line(result)
    assert "push_to_hub needs a Hugging Face token" in line and "HF_TOKEN" in line and "hf auth login" in line
    assert not out.exists() and len(standin.requests) == seen


def test_pipeline_passes_one_run_name_and_trackers(tmp_path):
    recipe = {"run_dir": str(tmp_path / "exp-7"), "report_to": ["none"],
              "generate": {"problems": {"num_problems": 4}}, "sft": {}, "eval": {}}
    cfg = pipeline.load(str(write_config(tmp_path / "p.yaml", recipe)), [])
    assert [(s.run_name, s.report_to) for s in (cfg.generate, cfg.sft, cfg.eval)] == [("exp-7", ["none"])] * 3
    cfg = pipeline.load(str(write_config(tmp_path / "p.yaml", {**recipe, "run_name": "r1-vs-base"})), [])
    assert {s.run_name for s in (cfg.generate, cfg.sft, cfg.eval)} == {"r1-vs-base"}
    with pytest.raises(ConfigError, match="report_to is set for the pipeline and for sft"):
        pipeline.load(str(write_config(tmp_path / "p.yaml", {**recipe, "sft": {"report_to": ["tensorboard"]}})), [])


# ---- the stages, then their pushes ----

def test_generate_figures_and_push_with_shards(tiny_llm, tiny_llama, standin, tmp_path):
    out = tmp_path / "gen"
    config = write_config(tmp_path / "gen.yaml", {
        "model": tiny_llama, "output_dir": str(out), "problems": {"num_problems": 6}, "sampling": {"n": 3, "max_tokens": 12},
        "chunk_size": 2, "answer": {"extraction": "last_number"}, "run_name": "exp-1"})
    stats = generate.run(configlib.load(generate.GenerateConfig, config), llm=tiny_llm)
    figures = scalars(out / "runs")
    assert figures["generate/funnel/generated"] == 18 and figures["generate/funnel/kept"] == stats["funnel"]["kept"]
    assert figures["generate/teacher_pass@1"] == pytest.approx(stats["pass@1"])
    assert "generate/teacher_pass@3" in figures and figures["generate/generated_tokens_per_second"] > 0
    chunks = {p: p.stat().st_mtime for p in (out / "samples").rglob("chunk-*.parquet")}

    push = ["generate", "--config", str(config), "--set", "push_to_hub=me/traces", "hub.max_shard_size=2KB", "hub.private=true"]
    standin.down = True  # the hub is down: the stage is complete, the push fails with one line saying what to do
    line = error_line(seqdistill(push, standin, tmp_path))
    assert "push to me/traces failed" in line and f"the local output in {out} is complete" in line
    assert "rerun the same command" in line and not (out / hub.MARKER).exists()
    standin.down = False
    result = seqdistill(push, standin, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p: p.stat().st_mtime for p in (out / "samples").rglob("chunk-*.parquet")} == chunks  # nothing sampled again

    repo = standin.repo("me/traces", "dataset")
    files = repo.files()
    assert repo.private and json.loads((out / hub.MARKER).read_text())["repo"] == "me/traces"
    local = {s: len(store.read_parquet([out / "data" / f"{s}.parquet"])) for s in ("train", "dropped")}
    card = round_trips(DatasetCard, files["README.md"].decode())
    splits = [f["split"] for f in card.data.to_dict()["configs"][0]["data_files"]]
    assert splits == [s for s in ("train", "dropped") if local[s]]  # empty splits are left out
    for split in splits:
        shards, rows = parquet_rows(files, f"data/{split}-")
        assert rows == local[split]
    assert len(parquet_rows(files, "data/dropped-")[0]) > 1  # several shards of at most 2 KB
    assert "seqdistill" in card.data.tags and card.data.pretty_name.startswith("Reasoning traces")
    assert "## Funnel" in card.text and "| generated | 18 |" in card.text  # the funnel card is the hub card
    assert card.data.to_dict()["dataset_info"]["splits"]  # datasets filled in what it pushed
    assert TOKEN in standin.auth_headers[-1]  # pushed with the token from HF_TOKEN ...
    assert_no_token(out, files=files)  # ... which is nowhere in the output or on the hub

    # a later rerun (or a pipeline that skips the stage) does not push again
    commits = len(repo.commits)
    cfg = configlib.load(generate.GenerateConfig, config)
    cfg.push_to_hub = "me/traces"  # (set after loading: this process runs offline, which validation refuses)
    hub.push("generate", cfg)
    assert len(repo.commits) == commits


def test_sft_adapter_and_merged_model_pushed_with_cards(tiny_llama, standin, tmp_path):
    rows = [{"problem_id": p["id"], "messages": [{"role": "user", "content": p["question"]},
                                                  {"role": "assistant", "content": f"The answer is {p['answer']}."}]}
            for p in problems.load(problems.ProblemsConfig(num_problems=8, max_operand=9))]
    traces = tmp_path / "traces.jsonl"
    traces.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "sft"
    config = write_config(tmp_path / "sft.yaml", {
        "student": tiny_llama, "dataset": str(traces), "output_dir": str(out), "max_steps": 1, "merge": True,
        "per_device_train_batch_size": 4, "report_to": ["none"], "max_length": 256, "save_steps": 10})
    sft.run(configlib.load(sft.SFTStageConfig, config))

    result = seqdistill(["sft", "--config", str(config), "--push_to_hub", "me/student", "--hub.revision", "exp1",
                         "--hub.commit_message", "first student"], standin, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    adapter, merged = standin.repo("me/student"), standin.repo("me/student-merged")
    for repo, folder in ((adapter, out / "model"), (merged, out / "merged")):
        assert repo.files("main") == {} and repo.commits[-1]["message"] == "first student"  # on the branch only
        files = repo.files("exp1")
        assert set(files) == {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        assert all(files[name] == (folder / name).read_bytes() for name in files)
        assert_no_token(folder, files=files)
    assert "adapter_model.safetensors" in adapter.files("exp1") and "model.safetensors" in merged.files("exp1")
    a = round_trips(ModelCard, adapter.files("exp1")["README.md"].decode()).data
    m = round_trips(ModelCard, merged.files("exp1")["README.md"].decode()).data
    assert (a.library_name, m.library_name) == ("peft", "transformers")
    assert "lora" in a.tags and m.model_name == "sft-merged" and "merged into the base weights" in merged.files("exp1")["README.md"].decode()


def test_eval_figures_results_and_details_pushed(tiny_llm, tiny_llama, standin, tmp_path):
    out = tmp_path / "eval"
    config = write_config(tmp_path / "eval.yaml", {
        "models": [{"model": tiny_llama, "name": "base"}, {"model": tiny_llama, "name": "twin"}],
        "benchmarks": [{"name": "embedded-heldout", "num_problems": 4}], "output_dir": str(out),
        "sampling": {"n": 2, "max_tokens": 8}, "prompt": {"template": "number"}, "answer": {"extraction": "last_number"},
        "pass_k": [1, 2]})
    results = evaluate.run(configlib.load(evaluate.EvalConfig, config), llms={tiny_llama: tiny_llm})
    figures = scalars(out / "runs")
    for model in ("base", "twin"):
        for metric in ("pass@1", "pass@2", "maj@2", "truncated_share"):
            assert figures[f"eval/{model}/embedded-heldout/{metric}"] == pytest.approx(results[model]["embedded-heldout"][metric])

    result = seqdistill(["eval", "--config", str(config), "--set", "push_to_hub=me/evals"], standin, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    files = standin.repo("me/evals", "dataset").files()
    assert files["results.json"] == (out / "results.json").read_bytes()
    assert files["results.md"] == (out / "results.md").read_bytes()
    card = round_trips(DatasetCard, files["README.md"].decode())
    configs = {c["config_name"]: c["data_files"] for c in card.data.to_dict()["configs"]}
    assert configs == {f"{m}__embedded-heldout": [{"split": "samples", "path": f"details/{m}__embedded-heldout/samples-*"}]
                       for m in ("base", "twin")}
    for model in ("base", "twin"):
        _, rows = parquet_rows(files, f"details/{model}__embedded-heldout/")
        assert rows == 4 * 2
    assert "| base |" in card.text and "## Per-sample details" in card.text and "evaluation" in card.data.tags
    assert_no_token(out, files=files)
