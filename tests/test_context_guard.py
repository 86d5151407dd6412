"""sft's max_length against the student's context (max_position_embeddings), refused or stretched before the
student's weights load; examples longer than max_length are counted and said."""

import json
import logging
import shutil

import pytest
from transformers import AutoTokenizer

from seqdistill import config as configlib
from seqdistill import sft
from seqdistill.config import ConfigError
from seqdistill.sft import SFTStageConfig
from seqdistill.training.data import TrainingData, check_lengths


def make_cfg(student, dataset, out, *overrides):
    return configlib.load(SFTStageConfig, None, [
        f"student={student}", f"dataset={dataset}", f"output_dir={out}", "max_steps=1", "report_to=[none]",
        "per_device_train_batch_size=4", *overrides,
    ])


@pytest.fixture
def no_weights_load(monkeypatch):
    """Any attempt to load model weights fails the test: the refusals must come first."""
    from transformers import AutoModelForCausalLM, PreTrainedModel

    def refuse(*args, **kwargs):
        raise AssertionError("model weights were loaded before the context check")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(refuse))


def test_max_length_over_context_refused_before_loading(tiny_llama, traces, tmp_path, no_weights_load):
    with pytest.raises(ConfigError) as e:  # the tiny Llama's max_position_embeddings is 1024
        sft.run(make_cfg(tiny_llama, traces, tmp_path / "out", "max_length=2048"))
    message = str(e.value)
    assert "max_length 2048 exceeds student" in message and "context of 1024 tokens" in message
    assert "lower max_length to 1024, or set context: 2048" in message and "\n" not in message
    assert not (tmp_path / "out").exists()  # nothing written either
    with pytest.raises(ConfigError, match="max_length 2048 exceeds .* 1024"):  # `seqdistill run`'s preflight too
        sft.check(make_cfg(tiny_llama, traces, tmp_path / "out", "max_length=2048"))


def test_max_length_at_context_passes(tiny_llama, traces, tmp_path):
    assert sft.check_context(make_cfg(tiny_llama, traces, tmp_path / "out", "max_length=1024"), tiny_llama) == {}


@pytest.mark.parametrize("overrides,message", [
    (["max_length=1024", "context=1024", "method=full"], "context 1024 does not exceed student .* own 1024 tokens; remove context"),
    (["max_length=512", "context=256", "method=full"], r"context \(256\) must be at least max_length \(512\)"),
    (["max_length=2048", "context=4096"], "context 4096 stretches the student's RoPE, which a LoRA adapter does not carry"),
])
def test_bad_context_refused(tiny_llama, traces, tmp_path, overrides, message, no_weights_load):
    with pytest.raises(ConfigError, match=message):
        sft.run(make_cfg(tiny_llama, traces, tmp_path / "out", *overrides))


def test_context_stretches_rope_with_a_warning(tiny_qwen2, traces, tmp_path, caplog):
    cfg = make_cfg(tiny_qwen2, traces, tmp_path / "out", "max_length=2048", "context=4096", "method=full")
    with caplog.at_level(logging.WARNING, logger="seqdistill.sft"):
        overrides = sft.check_context(cfg, tiny_qwen2, warn=True)
    assert overrides["max_position_embeddings"] == 4096
    assert overrides["rope_parameters"]["rope_type"] == "yarn" and overrides["rope_parameters"]["factor"] == 4.0
    assert overrides["rope_parameters"]["original_max_position_embeddings"] == 1024
    assert "rope_theta" in overrides["rope_parameters"]  # the student's own theta is kept
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "stretched 4x from 1024 tokens (YaRN" in warning[0]
    # as TRL loads the student (from_pretrained with model_init_kwargs): YaRN in its rotary embedding and saved config
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2, **overrides)
    assert model.model.rotary_emb.rope_type == "yarn" and model.model.rotary_emb.attention_scaling > 1
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["max_position_embeddings"] == 4096 and saved["rope_parameters"]["rope_type"] == "yarn"


def test_trained_model_carries_the_stretched_context(tiny_llama, traces, tmp_path):
    """Real TRL training (for the GPU/CI run): full fine-tune and a merged LoRA both save YaRN in config.json."""
    for name, extra in (("full", ["method=full"]), ("lora", ["merge=true"])):
        out = tmp_path / name
        result = sft.run(make_cfg(tiny_llama, traces, out, "max_length=2048", "context=2048", *extra))
        assert result.trainer.model.config.max_position_embeddings == 2048
        saved = json.loads((out / ("model" if name == "full" else "merged") / "config.json").read_text())
        assert saved["max_position_embeddings"] == 2048
        assert saved["rope_parameters"]["rope_type"] == "yarn" and saved["rope_parameters"]["factor"] == 2.0


def test_student_with_scaled_rope_not_stretched_again(tiny_llama, traces, tmp_path):
    student = tmp_path / "scaled"
    shutil.copytree(tiny_llama, student)
    config = json.loads((student / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    (student / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="already scales its RoPE \\(linear\\); context stretches plain RoPE only"):
        sft.check_context(make_cfg(student, traces, tmp_path / "out", "max_length=2048", "context=4096", "merge=true"),
                          str(student))


def test_rows_over_max_length_counted_and_said(tiny_llama, traces, tmp_path, caplog):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    cfg = make_cfg(tiny_llama, traces, tmp_path / "out", "max_length=90", "max_truncated_fraction=1")
    with caplog.at_level(logging.WARNING, logger="seqdistill.training.data"):
        data = TrainingData.load(cfg, tokenizer)
    lengths = [len(tokenizer(r["prompt"] + r["completion"], add_special_tokens=False)["input_ids"]) for r in data.train]
    over = sum(n > 90 for n in lengths)
    assert 0 < over < len(lengths) and data.lengths["truncated"] == over
    assert f"{over} of 24 training examples are longer than max_length=90 tokens and are cut" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="seqdistill.training.data"):
        assert check_lengths([10, 20], 40, 0.0)["truncated"] == 0
    assert "longer than max_length" not in caplog.text
