"""Prompt assembly with real chat templates: the prefill is never doubled."""

import logging

import pytest
from transformers import AutoTokenizer

from seqdistill.engines import prompts

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
    with caplog.at_level(logging.INFO, logger="seqdistill.engines.prompts"):
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


def r1_student(r1_qwen_tokenizer, release: str):
    tokenizer = AutoTokenizer.from_pretrained(r1_qwen_tokenizer)
    if release == "current":
        tokenizer.chat_template = tokenizer.chat_template[: -len(FIRST)] + CURRENT
    return tokenizer


@pytest.mark.parametrize("prefill", ["<think>\n", None])  # a generate output's prefill column; a hub dataset has none
@pytest.mark.parametrize("release", ["first", "current"])
def test_student_trains_on_one_think_opening(r1_qwen_tokenizer, release, prefill):
    import datasets

    from seqdistill.training import data

    tokenizer = r1_student(r1_qwen_tokenizer, release)
    trace = "<think>\nStep 1: 1+1=2.\n</think>\nThe answer is 2."
    row = {"messages": [{"role": "user", "content": "What is 1+1?"}, {"role": "assistant", "content": trace}],
           "problem_id": "p0"}
    table = datasets.Dataset.from_list([{**row, "prefill": prefill} if prefill else row])
    pair = data.to_prompt_completion(table, tokenizer, "<｜end▁of▁sentence｜>", "traces")[0]
    text = pair["prompt"] + pair["completion"]
    assert text.count("<think>") == 1 and "What is 1+1?<｜Assistant｜><think>\nStep 1" in text
    if release == "first":  # a template that doesn't open the turn: prompt and completion exactly as before
        assert pair["prompt"].endswith("<｜Assistant｜>") and pair["completion"] == trace + "<｜end▁of▁sentence｜>"


@pytest.mark.parametrize("release", ["first", "current"])
def test_kd_student_prompt_holds_one_think_opening(r1_qwen_tokenizer, release):
    import datasets
    import numpy as np

    from seqdistill.engines import topk
    from seqdistill.training import data

    tokenizer = r1_student(r1_qwen_tokenizer, release)
    sampled = np.array(tokenizer("Step 1: 1+1=2.\n</think>\nThe answer is 2.", add_special_tokens=False)["input_ids"])
    blob = topk.encode(sampled[:, None], np.zeros((len(sampled), 1)), sampled, len(tokenizer))
    msgs = [{"role": "user", "content": "What is 1+1?"},
            {"role": "assistant", "content": "<think>\nStep 1: 1+1=2.\n</think>\nThe answer is 2."}]
    table = datasets.Dataset.from_list([{"messages": msgs, "teacher_topk": blob, "prefill": "<think>\n"}])
    row = data.to_kd_rows(table, tokenizer, "<｜end▁of▁sentence｜>", "traces")[0]
    text = tokenizer.decode(row["input_ids"])
    assert text.count("<think>") == 1 and "What is 1+1?<｜Assistant｜><think>\nStep 1" in text
    assert row["input_ids"][row["kd_offset"]:-1] == sampled.tolist()
