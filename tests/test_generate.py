"""`seqdistill generate` end to end on the real vLLM engine (tiny random-weight Llama, shared engine)."""

import datasets
import pytest
import yaml

from seqdistill import config as configlib
from seqdistill import generate, store
from seqdistill.config import ConfigError
from seqdistill.engines import engine
from seqdistill.generate import GenerateConfig


def make_cfg(tiny_llama, out, *overrides):
    return configlib.load(GenerateConfig, None, [
        f"model={tiny_llama}", f"output_dir={out}", "problems.num_problems=6", "sampling.n=3",
        "sampling.max_tokens=12", "chunk_size=2", "answer.extraction=last_number", *overrides,
    ])


def all_samples(out):
    rows = list(store.read_parquet([out / "data" / "train.parquet", out / "data" / "dropped.parquet"]))
    return sorted(rows, key=lambda r: (r["problem_index"], r["sample_index"]))


def test_rows_columns_card_and_config(tiny_llm, tiny_llama, tmp_path):
    # datasets caches a local directory by its name and relative data_files, so names stay unique
    out = tmp_path / "gen-tiny"
    stats = generate.run(make_cfg(tiny_llama, out), llm=tiny_llm)
    ds = {split: store.read_parquet([out / "data" / f"{split}.parquet"]) for split in ("train", "dropped")}
    assert len(ds["train"]) + len(ds["dropped"]) == 6 * 3 == stats["funnel"]["generated"]
    assert len(ds["train"]) == stats["funnel"]["kept"]
    # the dataset card's configs name the non-empty splits, so load_dataset reads the directory
    assert len(datasets.load_dataset(str(out))["dropped"]) == len(ds["dropped"])
    for col in ["messages", "problem_id", "sample_index", "teacher", "prompt_tokens", "completion_tokens",
                "finish_reason", "answer", "correct", "keep", "drop_reason"]:
        assert col in ds["dropped"].column_names
    row = ds["dropped"][0]
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    assert row["messages"][1]["content"] == row["completion"]
    assert row["drop_reason"] in generate.filters.REASONS
    assert 1 <= row["completion_tokens"] <= 12 and row["finish_reason"] in ("stop", "length")
    assert all(r["drop_reason"] for r in ds["dropped"]) and all(r["keep"] for r in ds["train"])
    saved = yaml.safe_load((out / "seqdistill_config.yaml").read_text())
    assert saved["config"]["sampling"]["n"] == 3 and "transformers" in saved["run"]["versions"]
    card = (out / "README.md").read_text()
    assert "## Funnel" in card and "| generated | 18 |" in card


class InterruptAfter:
    """The real engine, with a Ctrl-C arriving during the given generate call."""

    def __init__(self, llm, calls):
        self.llm, self.calls = llm, calls

    def __getattr__(self, name):
        return getattr(self.llm, name)

    def generate(self, *args, **kwargs):
        self.calls -= 1
        if self.calls < 0:
            raise KeyboardInterrupt
        return self.llm.generate(*args, **kwargs)


def test_resume_after_interrupt_matches_uninterrupted_run(tiny_llm, tiny_llama, tmp_path):
    overrides = ["sampling.temperature=1.0", "sampling.max_tokens=8"]
    generate.run(make_cfg(tiny_llama, tmp_path / "whole", *overrides), llm=tiny_llm)

    cfg = make_cfg(tiny_llama, tmp_path / "resumed", *overrides)
    with pytest.raises(KeyboardInterrupt):
        generate.run(cfg, llm=InterruptAfter(tiny_llm, calls=1))
    shard = tmp_path / "resumed" / "samples" / "shard-00000-of-00001"
    assert sorted(p.name for p in shard.glob("*.parquet")) == ["chunk-00000.parquet"]
    generate.run(cfg, llm=tiny_llm)

    whole, resumed = all_samples(tmp_path / "whole"), all_samples(tmp_path / "resumed")
    keys = [(r["problem_id"], r["sample_index"]) for r in resumed]
    assert len(keys) == len(set(keys)) == 18  # nothing lost, nothing duplicated
    assert [r["completion"] for r in resumed] == [r["completion"] for r in whole]
    assert len({r["completion"] for r in whole}) > 1  # sampling, not a constant output


def test_rerun_skips_done_work_and_refuses_changed_config(tiny_llm, tiny_llama, tmp_path):
    out = tmp_path / "gen"
    generate.run(make_cfg(tiny_llama, out), llm=tiny_llm)
    before = all_samples(out)
    generate.run(make_cfg(tiny_llama, out), llm=None)  # all chunks done: no engine needed
    assert all_samples(out) == before
    with pytest.raises(ConfigError, match=r"holds a different run \(sampling.n: 3 -> 2\).*--overwrite"):
        generate.run(make_cfg(tiny_llama, out, "sampling.n=2"))
    generate.run(make_cfg(tiny_llama, out, "sampling.n=2", "overwrite=true"), llm=tiny_llm)
    assert len(all_samples(out)) == 12


def test_shards_are_disjoint_and_join(tiny_llm, tiny_llama, tmp_path):
    out = tmp_path / "gen"
    first = generate.run(make_cfg(tiny_llama, out, "num_shards=2", "shard_index=0"), llm=tiny_llm)
    assert first == {"waiting_for": ["shard-00001-of-00002"]}
    stats = generate.run(make_cfg(tiny_llama, out, "num_shards=2", "shard_index=1"), llm=tiny_llm)
    rows = all_samples(out)
    assert stats["problems"] == 6 and len(rows) == 18
    assert len({(r["problem_id"], r["sample_index"]) for r in rows}) == 18


@pytest.fixture
def no_engine(monkeypatch):
    """Bad input must fail before any engine starts."""
    def refuse(*a, **k):
        raise AssertionError("the engine was started for a run that should have been refused")
    monkeypatch.setattr(engine, "load_vllm", refuse)


@pytest.mark.parametrize("overrides,message", [
    (["model=/no/such/model"], "model: model path /no/such/model does not exist"),
    (["prompt.template=nope"], "prompt template 'nope' not found.*one of: .*r1"),
    (["sampling.n=0"], "sampling.n must be at least 1"),
    (["sampling.max_tokens=5000"], r"longest prompt \(\d+ tokens\) \+ sampling.max_tokens \(5000\) exceeds the context length 1024"),
])
def test_bad_input_fails_before_the_engine(no_engine, tiny_llama, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        generate.run(make_cfg(tiny_llama, tmp_path / "gen", *overrides))
    assert not (tmp_path / "gen" / "samples").exists()


def test_fields_not_in_dataset_listed(no_engine, tiny_llama, tmp_path, benchmarks_dir):
    with pytest.raises(ConfigError, match=r"field\(s\) Body, answer not found; it has input, target, type, idx"):
        generate.run(make_cfg(tiny_llama, tmp_path / "gen", f"problems.source={benchmarks_dir}/mawps/test.jsonl",
                              "problems.question_fields=[Body]"))


def test_unknown_yaml_key(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("sampling:\n  temprature: 0.6\n")
    with pytest.raises(ConfigError, match=r"unknown setting sampling.temprature \(did you mean sampling.temperature\?\)"):
        configlib.load(GenerateConfig, path)


def test_output_dir_with_other_files_refused(no_engine, tiny_llama, tmp_path):
    out = tmp_path / "gen"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty and holds no seqdistill run"):
        generate.run(make_cfg(tiny_llama, out))
    assert (out / "notes.txt").read_text() == "mine"
