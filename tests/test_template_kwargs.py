"""`chat_template_kwargs`: switches a real chat template reads (Qwen3's enable_thinking), passed to every
rendering of a prompt: generate's teacher prompts, eval's prompts and sft's training text."""

import json
import shutil

import pytest
from transformers import AutoTokenizer

from seqdistill import config as configlib
from seqdistill import evaluate, generate
from seqdistill.config import ConfigError
from seqdistill.engines import prompts
from seqdistill.evaluate import EvalConfig
from seqdistill.generate import GenerateConfig
from seqdistill.score import ScoreConfig
from seqdistill.sft import SFTStageConfig
from seqdistill.training.data import TrainingData

# SmolLM2's ChatML with Qwen3's switch: enable_thinking false pre-fills an empty think block
THINKING = """{%- for message in messages %}<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
{% endfor %}{%- if add_generation_prompt %}<|im_start|>assistant
{% if enable_thinking is defined and not enable_thinking %}<think>

</think>

{% endif %}{% endif %}"""
EMPTY_THINK = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
OFF = "{enable_thinking: false}"


@pytest.fixture(scope="module")
def thinking_model(tiny_llama, tmp_path_factory) -> str:
    """The tiny Llama with SmolLM2's tokenizer whose chat template reads enable_thinking."""
    path = tmp_path_factory.mktemp("thinking") / "model"
    shutil.copytree(tiny_llama, path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = THINKING
    tokenizer.save_pretrained(path)
    return str(path)


def decoded(model: str, ids: list[int]) -> str:
    return AutoTokenizer.from_pretrained(model).decode(ids)


def test_chat_prompt_passes_switches_to_the_template(thinking_model):
    tokenizer = AutoTokenizer.from_pretrained(thinking_model)
    msgs = prompts.messages("What is 1+1?", prompts.PromptConfig())
    plain = prompts.chat_prompt(tokenizer, msgs)
    off = prompts.chat_prompt(tokenizer, msgs, template_kwargs={"enable_thinking": False})
    assert plain.endswith("What is 1+1?<|im_end|>\n<|im_start|>assistant\n")
    assert off == plain + "<think>\n\n</think>\n\n"
    assert prompts.chat_prompt(tokenizer, msgs, template_kwargs={"enable_thinking": True}) == plain


@pytest.mark.parametrize("kwargs", [None, OFF])
def test_generate_prompts_rendered_with_switches(thinking_model, tmp_path, kwargs):
    overrides = [f"model={thinking_model}", f"output_dir={tmp_path / 'gen'}", "problems.num_problems=3",
                 "sampling.max_tokens=8", "answer.extraction=last_number"]
    cfg = configlib.load(GenerateConfig, None, overrides + ([f"prompt.chat_template_kwargs={kwargs}"] if kwargs else []))
    batch = generate.check(cfg)[4][cfg.model]  # no engine starts: check renders the prompts (per teacher)
    texts = [decoded(thinking_model, p.token_ids) for p in batch]
    assert len(texts) == 3 and all(t.endswith(EMPTY_THINK) == bool(kwargs) for t in texts)
    assert all(t.endswith("<|im_start|>assistant\n") for t in texts) != bool(kwargs)


@pytest.mark.parametrize("kwargs", [None, OFF])
def test_eval_prompts_rendered_with_switches(thinking_model, tmp_path, kwargs):
    cfg = configlib.load(EvalConfig, None, [
        f"output_dir={tmp_path / 'eval'}", f"models={json.dumps([{'model': thinking_model, 'name': 'thinking'}])}",
        'benchmarks=[{name: embedded-heldout, num_problems: 2}]', "sampling.max_tokens=8", "sampling.n=1",
        *([f"prompt.chat_template_kwargs={kwargs}"] if kwargs else [])])
    batches = evaluate.check(cfg)[3]
    texts = [decoded(thinking_model, p.token_ids) for group in batches.values() for p in group["embedded-heldout"]]
    assert len(texts) == 2 and all(t.endswith(EMPTY_THINK) == bool(kwargs) for t in texts)


@pytest.mark.parametrize("kwargs", [None, OFF])
def test_sft_training_text_rendered_with_switches(thinking_model, traces, tmp_path, kwargs):
    cfg = configlib.load(SFTStageConfig, None, [
        f"student={thinking_model}", f"dataset={traces}", f"output_dir={tmp_path / 'sft'}", "max_length=256",
        *([f"chat_template_kwargs={kwargs}"] if kwargs else [])])
    data = TrainingData.load(cfg, AutoTokenizer.from_pretrained(thinking_model))
    assert data.end_of_turn == "<|im_end|>" and data.n_train == 24
    first = json.loads(open(traces).readline())["messages"]
    row = data.train[0]
    assert row["prompt"].endswith(EMPTY_THINK) == bool(kwargs)
    assert row["prompt"].startswith("<|im_start|>user\n" + first[0]["content"])
    assert row["completion"] == first[1]["content"] + "<|im_end|>"  # the trace itself is untouched


@pytest.mark.parametrize("stage,key", [(GenerateConfig, "prompt.chat_template_kwargs"),
                                       (EvalConfig, "prompt.chat_template_kwargs"),
                                       (SFTStageConfig, "chat_template_kwargs"),
                                       (ScoreConfig, "chat_template_kwargs")])
@pytest.mark.parametrize("value,message", [
    ("[enable_thinking]", r"chat_template_kwargs must be a mapping, got \['enable_thinking'\]$"),
    ("true", "chat_template_kwargs must be a mapping, got True$"),
    ("{when: 2026-01-01}", r"chat_template_kwargs.when must be a JSON value .* got datetime.date\(2026, 1, 1\) \(date\); quote it$"),
    ("{add_generation_prompt: false}", "key 'add_generation_prompt' is an argument of apply_chat_template itself"),
    ("{1: x}", "key 1 is not a variable name a template can read"),
])
def test_bad_switches_one_line(stage, key, value, message):
    with pytest.raises(ConfigError, match=message) as e:
        configlib.load(stage, None, [f"{key}={value}"])
    assert "\n" not in str(e.value) and str(e.value).startswith(key)


def test_switches_refused_where_a_server_renders_the_messages():
    with pytest.raises(ConfigError, match="can't reach a server that renders the messages itself .* engine.extra_body"):
        configlib.load(GenerateConfig, None, ["engine.backend=openai", "engine.base_url=http://localhost:1/v1",
                                              f"prompt.chat_template_kwargs={OFF}"])
    cfg = configlib.load(GenerateConfig, None, ["engine.backend=openai", "engine.base_url=http://localhost:1/v1",
                                                "engine.api=completions", f"prompt.chat_template_kwargs={OFF}"])
    assert cfg.prompt.chat_template_kwargs == {"enable_thinking": False}
