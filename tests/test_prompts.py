"""Prompt assembly with real chat templates: the prefill is never doubled."""

import logging

import pytest
from transformers import AutoTokenizer

from seqdistill import prompts

# The tests' R1-Distill-Qwen tokenizer comes from the model's GGUF file, which holds the chat template
# as first released; the hub's current one (updated 2025-01) opens the assistant turn with "<think>\n".
FIRST = "{{'<｜Assistant｜>'}}{% endif %}"
CURRENT = "{{'<｜Assistant｜><think>\\n'}}{% endif %}"


@pytest.mark.parametrize("release", ["first", "current"])
def test_r1_prefill_not_doubled(r1_qwen_tokenizer, release, caplog):
    tokenizer = AutoTokenizer.from_pretrained(r1_qwen_tokenizer)
    assert tokenizer.chat_template.endswith(FIRST)
    if release == "current":
        tokenizer.chat_template = tokenizer.chat_template[: -len(FIRST)] + CURRENT
    cfg = prompts.PromptConfig(prefill="<think>\n")
    with caplog.at_level(logging.INFO, logger="seqdistill.prompts"):
        text = prompts.chat_prompt(tokenizer, prompts.messages("What is 1+1?", cfg), cfg.prefill)
    assert text.endswith("What is 1+1?<｜Assistant｜><think>\n") and text.count("<think>") == 1
    assert ("already ends the generation prompt with the prefill" in caplog.text) == (release == "current")
    ids = prompts.encode(tokenizer, "What is 1+1?", cfg)
    assert tokenizer.decode(ids) == text


def test_prefill_appended_to_plain_template(r1_qwen_tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(r1_qwen_tokenizer)
    tokenizer.chat_template = prompts.template_path("chat/plain").read_text()
    text = prompts.chat_prompt(tokenizer, prompts.messages("hi", prompts.PromptConfig()), "<think>\n")
    assert text == "User: hi\n\nAssistant: <think>\n"
