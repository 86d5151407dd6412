import pytest

from seqdistill import config as configlib
from seqdistill.config import ConfigError
from seqdistill.generate import GenerateConfig


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("sampling:\n  n: 3\n  temperature: 0.7\nproblems:\n  num_problems: 10\n")
    cfg = configlib.load(GenerateConfig, path, ["sampling.n=5", "engine.extra={enforce_eager: true}"])
    assert cfg.sampling.n == 5 and cfg.sampling.temperature == 0.7
    assert cfg.problems.num_problems == 10
    assert cfg.engine.extra == {"enforce_eager": True}
    assert cfg.sampling.top_p == 0.95  # R1 default kept


def test_unknown_key_named_with_nearest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown setting sampling\.temprature \(did you mean sampling\.temperature\?\)"):
        configlib.load(GenerateConfig, None, ["sampling.temprature=0.5"])


def test_all_problems_in_one_error():
    with pytest.raises(ConfigError) as e:
        configlib.load(GenerateConfig, None, ["sampling.n=0", "sampling.top_p=2", "chunk_size=0"])
    assert len(e.value.problems) == 3
    assert "sampling.n must be at least 1" in str(e.value)


def test_types_checked_and_floats_from_strings():
    with pytest.raises(ConfigError, match="sampling.n must be an integer"):
        configlib.load(GenerateConfig, None, ["sampling.n=many"])
    cfg = configlib.load(GenerateConfig, None, ["sampling.temperature=1e-1"])  # YAML reads 1e-1 as a string
    assert cfg.sampling.temperature == pytest.approx(0.1)


def test_missing_config_file_and_bad_override():
    with pytest.raises(ConfigError, match="does not exist"):
        configlib.load(GenerateConfig, "nope.yaml")
    with pytest.raises(ConfigError, match="key.sub=value"):
        configlib.load(GenerateConfig, None, ["sampling.n"])


def test_diff_names_changed_keys():
    assert configlib.diff({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}}) == ["a.c: 2 -> 3"]


def test_empty_override_is_empty_string():
    cfg = configlib.load(GenerateConfig, None, ["problems.source=", "problems.preset=gsm8k", "push_to_hub=null"])
    assert cfg.problems.source == "" and cfg.push_to_hub is None
    assert cfg.problems.resolved().source == "openai/gsm8k"


def test_a_setting_added_since_a_run_was_saved_reads_as_its_default(tmp_path):
    """A finished run saved before a setting existed is the same run at that setting's default, and a
    different one at any other value (the saved config is read with the new fields filled in)."""
    import yaml

    from seqdistill import generate, store

    cfg = configlib.load(GenerateConfig, None, [f"output_dir={tmp_path}"])
    saved = configlib.to_dict(cfg)
    del saved["filters"]["language"], saved["problems"]["mix"]  # as a run saved before they existed
    store.write_text(tmp_path / store.CONFIG_FILE, yaml.safe_dump({"config": saved}))
    assert generate.OUTPUT.changes(tmp_path, cfg) == []
    other = configlib.load(GenerateConfig, None, [f"output_dir={tmp_path}", "filters.language=english"])
    assert generate.OUTPUT.changes(tmp_path, other) == ["filters.language: None -> 'english'"]
