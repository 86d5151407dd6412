"""`seqdistill student`: a smaller model made of some of a model's decoder layers. Layer selection, the
config it rewrites, weights equal to the source's kept layers, a saved student that reloads and generates
(with the KV cache indexed right), the model card, and bad input refused with one line before weights load."""

import json
from pathlib import Path

import pytest
import torch

from seqdistill import cli, student
from seqdistill import config as configlib
from seqdistill.config import ConfigError


def build(model: str, out: Path, layers, *extra: str) -> dict:
    value = layers if isinstance(layers, str) else json.dumps(layers)
    return student.run(configlib.load(student.StudentConfig, None, [f"model={model}", f"output_dir={out}",
                                                                   f"layers={value}", *extra]))


def deeper(source: str, path: Path, n_layers: int, **changes) -> str:
    """The suite's tiny model (its tokenizer and shape) with `n_layers` random layers."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(source)
    config.num_hidden_layers = n_layers
    for key, value in changes.items():
        setattr(config, key, value)
    if hasattr(config, "layer_types"):  # derived from the layer count and window settings: derive it again
        config = type(config)(**{k: v for k, v in config.to_dict().items() if k != "layer_types"})
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(source).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def llama4(tiny_llama, tmp_path_factory) -> str:
    return deeper(tiny_llama, tmp_path_factory.mktemp("llama4"), 4)


# ---------------------------------------------------------------- selection


@pytest.mark.parametrize("spec, n, kept", [
    ("every:2", 30, list(range(0, 30, 2))), ("every:3", 4, [0, 3]), ("every:1", 3, [0, 1, 2]),
    ("every:9", 4, [0]), ("0,2,4", 6, [0, 2, 4]), ([1, 3], 4, [1, 3]), ("5", 6, [5]), ([0, -1], 30, [0, 29]),
])
def test_layers_select(spec, n, kept):
    assert student.select(spec, n) == kept


@pytest.mark.parametrize("spec, n, message", [
    ([0, 4], 4, "layers 4 outside the model's 4 decoder layers"),
    ("0,-5", 4, "layers -5 outside"),
    ([], 4, "selects no layer"),
    ("", 4, "selects no layer"),
    ("every:0", 4, "layers must be every:N (N >= 1)"),
    ("every:two", 4, "layers must be every:N"),
    ([2, 1], 4, "distinct and in increasing order"),
    ([1, -3], 4, "distinct and in increasing order"),  # -3 is layer 1 of 4
])
def test_bad_layer_selections_are_one_line_errors(spec, n, message):
    with pytest.raises(ConfigError) as e:
        student.select(spec, n)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_layer_syntax_is_checked_with_the_config():
    with pytest.raises(ConfigError, match="layers must be every:N"):
        configlib.load(student.StudentConfig, None, ["layers=every:x"])
    assert configlib.load(student.StudentConfig, None, ["layers=[0, 2]"]).layers == [0, 2]
    assert configlib.load(student.StudentConfig, None, ["layers=0,2"]).layers == "0,2"


# ---------------------------------------------------------------- the student


def test_student_keeps_the_selected_layers_weights_and_generates(llama4, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "student"
    info = build(llama4, out, [1, 3])
    assert info["kept"] == [1, 3] and info["source_layers"] == 4
    source = AutoModelForCausalLM.from_pretrained(llama4, dtype=torch.float32)
    small = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert small.config.num_hidden_layers == 2 and len(small.model.layers) == 2
    assert info["parameters"] == sum(p.numel() for p in small.parameters()) < info["source_parameters"]
    src, dst = source.state_dict(), small.state_dict()
    for new, old in enumerate([1, 3]):
        block = {k.split(f"model.layers.{new}.", 1)[1] for k in dst if k.startswith(f"model.layers.{new}.")}
        assert block and all(torch.equal(dst[f"model.layers.{new}.{k}"], src[f"model.layers.{old}.{k}"]) for k in block)
    rest = [k for k in dst if not k.startswith("model.layers.")]
    assert "model.norm.weight" in rest and "model.embed_tokens.weight" in rest
    assert all(torch.equal(dst[k], src[k]) for k in rest)

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(llama4).chat_template
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 plus 3?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    cached = small.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True)
    uncached = small.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False)
    assert cached.shape[1] == ids.shape[1] + 8
    assert torch.equal(cached, uncached)  # each block reads and writes its own slot of the KV cache


def test_qwen2_layer_types_and_window_follow_the_kept_layers(tiny_qwen2, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    source = deeper(tiny_qwen2, tmp_path / "qwen4", 4, use_sliding_window=True, sliding_window=16, max_window_layers=2)
    assert AutoConfig.from_pretrained(source).layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    info = build(source, tmp_path / "student", "1,2")
    assert set(info["config_changed"]) == {"layer_types", "max_window_layers"}
    config = AutoConfig.from_pretrained(tmp_path / "student")
    assert config.num_hidden_layers == 2 and config.max_window_layers == 1
    assert config.layer_types == ["full_attention", "sliding_attention"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert [block.self_attn.layer_type for block in model.model.layers] == config.layer_types
    assert model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False).shape == (1, 7)


def test_cli_builds_the_embedded_model_every_other_layer_with_a_card(smollm2_path, tmp_path, capsys):
    from huggingface_hub import ModelCard
    from transformers import AutoConfig

    out = tmp_path / "smollm2-15"
    cli.main(["student", "--model", "embedded:SmolLM2-135M-Instruct", "--layers", "every:2", "--output_dir", str(out)])
    assert f"kept layers {list(range(0, 30, 2))} of 30" in capsys.readouterr().out
    assert AutoConfig.from_pretrained(out).num_hidden_layers == 15
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "15 of the 30 decoder layers" in card.text and "[0, 2, 4, 6" in card.text
    written = (out / "model.safetensors").stat().st_mtime_ns
    cli.main(["student", "--model", "embedded:SmolLM2-135M-Instruct", "--layers", "every:2", "--output_dir", str(out)])
    assert (out / "model.safetensors").stat().st_mtime_ns == written  # the same student is not built again
    with pytest.raises(SystemExit) as e:
        cli.main(["student", "--model", "embedded:SmolLM2-135M-Instruct", "--layers", "every:3", "--output_dir", str(out)])
    assert e.value.code == 2
    assert "holds a different run" in capsys.readouterr().err


# ---------------------------------------------------------------- bad input


def test_layers_outside_the_model_are_refused_before_anything_is_written(llama4, tmp_path, capsys):
    out = tmp_path / "student"
    with pytest.raises(SystemExit) as e:
        cli.main(["student", "--model", llama4, "--layers", "[0, 2, 4]", "--output_dir", str(out)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.count("\n") == 0
    assert "layers 4 outside the model's 4 decoder layers" in err
    assert not out.exists()


def test_an_architecture_without_model_layers_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=100, n_positions=64)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ConfigError, match=r"GPT2LMHeadModel \(gpt2\) keeps no decoder layers in model.model.layers"):
        build(str(tmp_path / "gpt2"), tmp_path / "student", "every:2")
    assert not (tmp_path / "student").exists()


def test_a_missing_model_is_a_config_error():
    with pytest.raises(ConfigError, match="model: model path /nonexistent/model does not exist"):
        configlib.load(student.StudentConfig, None, ["model=/nonexistent/model"])
