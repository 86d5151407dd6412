"""sft's weighted dataset mixtures (`datasets: [{path, weight | fraction}]`): rows per source for a fixed seed,
the mixture recorded, and bad weights refused in one line."""

import json

import pytest
from transformers import AutoTokenizer

from seqdistill import config as configlib
from seqdistill.config import ConfigError
from seqdistill.sft import SFTStageConfig
from seqdistill.training.data import TrainingData, mixture_counts


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, str]:
    """Three sources told apart by their answer text: 40 conversations (a), 10 (b), and 30 prompt/completion rows (c)."""
    root = tmp_path_factory.mktemp("mixture")

    def conversation(source, i):
        return {"problem_id": f"{source}-{i}", "messages": [{"role": "user", "content": f"question {i}"},
                                                           {"role": "assistant", "content": f"from {source} #{i}"}]}

    files = {}
    for name, n in (("a", 40), ("b", 10)):
        files[name] = root / f"{name}.jsonl"
        files[name].write_text("\n".join(json.dumps(conversation(name, i)) for i in range(n)))
    files["c"] = root / "c.jsonl"  # no problem_id: the mixture gives one per row
    files["c"].write_text("\n".join(json.dumps({"prompt": f"question {i}\n", "completion": f"from c #{i}"}) for i in range(30)))
    return {k: str(v) for k, v in files.items()}


def load(tiny_llama, entries, *overrides):
    cfg = configlib.load(SFTStageConfig, None, [f"student={tiny_llama}", "output_dir=unused", "max_length=256",
                                                f"datasets={json.dumps(entries)}", *overrides])
    return TrainingData.load(cfg, AutoTokenizer.from_pretrained(tiny_llama))


def per_source(data) -> dict[str, int]:
    counts = {}
    for completion in data.train["completion"]:
        source = completion.split("from ", 1)[1][0]
        counts[source] = counts.get(source, 0) + 1
    return counts


def test_weights_set_the_shares(tiny_llama, sources):
    # 3:1 with 40 and 10 rows: b is scarce for its weight and gives all 10, a gives 30
    data = load(tiny_llama, [{"path": sources["a"], "weight": 3}, {"path": sources["b"], "weight": 1}])
    assert per_source(data) == {"a": 30, "b": 10} and data.n_train == 40
    assert [(m["path"], m["rows"], m["used"], m["weight"], m["share"]) for m in data.mixture] == [
        (sources["a"], 40, 30, 3.0, 0.75), (sources["b"], 10, 10, 1.0, 0.25)]


def test_fractions_take_a_share_of_each_source(tiny_llama, sources):
    data = load(tiny_llama, [{"path": sources["a"], "fraction": 0.25}, {"path": sources["b"]},
                             {"path": sources["c"], "fraction": 0.5}])
    assert per_source(data) == {"a": 10, "b": 10, "c": 15}
    assert [m.get("fraction") for m in data.mixture] == [0.25, 1.0, 0.5]
    ids = data.train["problem_id"]
    assert len(set(ids)) == 35 and sum(i.startswith(sources["c"] + "#") for i in ids) == 15  # c's rows get ids


def test_same_seed_same_rows_other_seed_other_rows(tiny_llama, sources):
    entries = [{"path": sources["a"], "weight": 1}, {"path": sources["c"], "weight": 1}]
    first, again, other = (load(tiny_llama, entries, f"seed={s}") for s in (0, 0, 1))
    assert per_source(first) == per_source(other) == {"a": 30, "c": 30}
    assert first.train["completion"] == again.train["completion"]
    assert sorted(first.train["completion"]) != sorted(other.train["completion"])


def test_zero_weight_leaves_a_source_out_and_eval_split_works(tiny_llama, sources):
    data = load(tiny_llama, [{"path": sources["a"], "weight": 1}, {"path": sources["b"], "weight": 0}], "eval_fraction=0.25")
    assert per_source(data) == {"a": 30} and len(data.eval) == 10  # a alone: its 40 rows, 10 problems held out
    assert not set(data.train["problem_id"]) & set(data.eval["problem_id"])


def test_counts():
    assert mixture_counts([100, 100, 100], [1, 1, 2], [None] * 3) == [50, 50, 100]
    assert mixture_counts([1000, 10], [1, 1], [None, None]) == [10, 10]
    assert mixture_counts([7, 9], [None, None], [None, 1 / 3]) == [7, 3]


@pytest.mark.parametrize("entries,message", [
    ([{"path": "a.jsonl", "weight": -1}, {"path": "b.jsonl", "weight": 2}], r"datasets\[0\]: a.jsonl: weight must be >= 0, got -1"),
    ([{"path": "a.jsonl", "weight": 0}, {"path": "b.jsonl", "weight": 0}], r"datasets: no entry has a weight > 0 \(\[0.0, 0.0\]\)"),
    ([{"path": "a.jsonl", "weight": 1, "fraction": 0.5}], r"datasets\[0\]: a.jsonl: give weight or fraction, not both"),
    ([{"path": "a.jsonl", "weight": 1}, {"path": "b.jsonl", "fraction": 0.5}], "some entries have a weight and some don't"),
    ([{"path": "a.jsonl", "fraction": 0}], r"fraction must be in \(0, 1\], got 0"),
    ([{"weight": 1}], "every datasets entry needs a path"),
    ([{"path": "a.jsonl", "wieght": 1}], r"unknown setting datasets\[0\]\.wieght \(did you mean datasets\[0\]\.weight\?\)"),
])
def test_bad_mixtures_one_line(entries, message):
    with pytest.raises(ConfigError, match=message) as e:
        configlib.load(SFTStageConfig, None, [f"datasets={json.dumps(entries)}"])
    assert "\n" not in str(e.value)


def test_mixture_with_kd_refused():
    with pytest.raises(ConfigError, match="datasets \\(a mixture\\) can't be combined with kd.mode offline"):
        configlib.load(SFTStageConfig, None, ['datasets=[{path: a.jsonl}]', "kd.mode=offline"])


def test_mixture_recorded_in_the_saved_config(tmp_path):
    cfg = configlib.load(SFTStageConfig, None, ['datasets=[{path: a.jsonl, weight: 2}, {path: b.jsonl, weight: 1, split: test}]'])
    saved = configlib.save(cfg, tmp_path / "seqdistill_config.yaml")["config"]["datasets"]
    assert saved == [{"path": "a.jsonl", "weight": 2.0, "fraction": None, "split": None},
                     {"path": "b.jsonl", "weight": 1.0, "fraction": None, "split": "test"}]


def test_sft_trains_on_a_mixture_and_records_it(tiny_llama, sources, tmp_path):
    """Real TRL training (one step): the mixture lands in metrics.json and the saved config."""
    import yaml

    from seqdistill import sft

    entries = [{"path": sources["a"], "weight": 3}, {"path": sources["b"], "weight": 1}]
    cfg = configlib.load(SFTStageConfig, None, [
        f"student={tiny_llama}", f"output_dir={tmp_path / 'out'}", f"datasets={json.dumps(entries)}", "max_steps=1",
        "per_device_train_batch_size=4", "report_to=[none]", "max_length=256"])
    result = sft.run(cfg)
    assert len(result.trainer.train_dataset) == 40
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [(m["used"], m["share"]) for m in metrics["mixture"]] == [(30, 0.75), (10, 0.25)]
    saved = yaml.safe_load((tmp_path / "out" / "seqdistill_config.yaml").read_text())["config"]["datasets"]
    assert [(d["path"], d["weight"]) for d in saved] == [(sources["a"], 3.0), (sources["b"], 1.0)]
    card = (tmp_path / "out" / "model" / "README.md").read_text()  # the model card names each source and its share
    assert f"| `{sources['a']}` | train | 40 | 30 | weight 3.0 | 0.75 |" in card
    assert f"| `{sources['b']}` | train | 10 | 10 | weight 1.0 | 0.25 |" in card
