"""`sft.thinking` on | off | mixed, at the data level with real tokenizers and chat templates: SmolLM2's ChatML
(no think support), DeepSeek-R1-Distill-Qwen's (opens the think block itself) and a Qwen3-style hybrid one."""

import json

import pytest
from transformers import AutoTokenizer

from seqdistill import config as configlib
from seqdistill.config import ConfigError
from seqdistill.engines import prompts
from seqdistill.sft import SFTStageConfig
from seqdistill.training.data import EMPTY_THINK, TrainingData

# SmolLM2's ChatML with Qwen3's switch: enable_thinking false opens the answer with an empty think block
HYBRID = """{%- for message in messages %}<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
{% endfor %}{%- if add_generation_prompt %}<|im_start|>assistant
{% if enable_thinking is defined and not enable_thinking %}<think>

</think>

{% endif %}{% endif %}"""


@pytest.fixture(params=["smollm2_path", "r1_qwen_tokenizer"])
def tokenizer(request):
    """SmolLM2's tokenizer and template, and DeepSeek-R1-Distill-Qwen's (its generation prompt opens the think block)."""
    return AutoTokenizer.from_pretrained(request.getfixturevalue(request.param))


@pytest.fixture
def load(smollm2_path):
    """TrainingData as sft builds it for `tokenizer` (the data needs the student's tokenizer only)."""
    def load(tokenizer, dataset, *overrides):
        cfg = configlib.load(SFTStageConfig, None, [f"student={smollm2_path}", f"dataset={dataset}", "output_dir=unused",
                                                    "max_length=256", *overrides])
        return TrainingData.load(cfg, tokenizer)
    return load


def conversations(traces) -> list[list[dict]]:
    return [json.loads(line)["messages"] for line in open(traces)]


def answer_only(row) -> bool:
    return "Step" not in row["completion"]  # every trace of `traces` reasons "Step j: work it out."


def split_by_trl(tokenizer, row) -> tuple[list[int], list[int]]:
    """TRL's masked and trained tokens: the prompt's tokens must start the tokens of prompt + completion."""
    prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
    whole = tokenizer(row["prompt"] + row["completion"], add_special_tokens=False)["input_ids"]
    assert whole[: len(prompt)] == prompt, "TRL would shift the mask: the prompt is not a token prefix"
    return prompt, whole[len(prompt):]


def test_off_trains_on_the_answer_after_an_empty_think_block_in_the_prompt(tokenizer, load, traces):
    on, off = load(tokenizer, traces), load(tokenizer, traces, "thinking=off")
    eot = off.end_of_turn
    assert off.n_train == on.n_train == 24 and eot == on.end_of_turn
    for msgs, row_on, row in zip(conversations(traces), on.train, off.train):
        answer = msgs[1]["content"].split("</think>\n", 1)[1]  # "The answer is N."
        base = prompts.template_text(tokenizer, msgs[:1], True)  # R1-Distill's ends with "<think>\n", SmolLM2's doesn't
        assert row_on["prompt"] == base
        block = EMPTY_THINK[len(prompts.THINK_OPEN):] if base.endswith(prompts.THINK_OPEN) else EMPTY_THINK
        assert row["prompt"] + row["completion"] == base + block + answer + eot
        # the empty block is on the prompt side, masked; at most its last newline is trained, where the tokenizer
        # splits "\n\n" before a word differently from "\n\n" at the end of a prompt (SmolLM2's byte-level BPE)
        assert row["prompt"].rstrip("\n").endswith("<think>\n\n</think>") and row["completion"] in (
            answer + eot, "\n" + answer + eot)
        masked, trained = split_by_trl(tokenizer, row)
        assert "</think>" in tokenizer.decode(masked) and "think>" not in tokenizer.decode(trained)
        assert tokenizer.decode(trained).strip() == answer + eot
    if "<think>" in tokenizer.get_vocab():  # Qwen's tokenizer keeps "\n\n" apart from the answer: all of it masked
        assert all(row["prompt"].endswith(EMPTY_THINK) and not row["completion"].startswith("\n") for row in off.train)


def test_mixed_makes_a_seeded_half_answer_only(tokenizer, load, traces):
    on, mixed, off = load(tokenizer, traces), load(tokenizer, traces, "thinking=mixed"), load(tokenizer, traces, "thinking=off")
    bare = [i for i, row in enumerate(mixed.train) if answer_only(row)]
    assert len(bare) == 12  # half of 24
    for i, row in enumerate(mixed.train):  # each row is today's row or its thinking-off one
        assert row == (off.train[i] if i in bare else on.train[i])
    assert [i for i, row in enumerate(load(tokenizer, traces, "thinking=mixed").train) if answer_only(row)] == bare
    other = [i for i, row in enumerate(load(tokenizer, traces, "thinking=mixed", "seed=1").train) if answer_only(row)]
    assert len(other) == 12 and other != bare


def test_on_is_todays_training_text(smollm2_path, load, traces):
    data = load(AutoTokenizer.from_pretrained(smollm2_path), traces, "thinking=on")
    for msgs, row in zip(conversations(traces), data.train):
        assert row["completion"] == msgs[1]["content"] + "<|im_end|>"  # the whole trace, think block included


def test_hybrid_template_that_opens_the_empty_block_itself(smollm2_path, load, traces):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    tokenizer.chat_template = HYBRID
    switch = "chat_template_kwargs={enable_thinking: false}"
    for row in load(tokenizer, traces, "thinking=off", switch).train:  # the template's block, never a second one
        assert row["prompt"].count("<think>") == 1 and row["prompt"].rstrip("\n").endswith("assistant\n<think>\n\n</think>")
        assert "<think>" not in row["completion"] and answer_only(row)
    with pytest.raises(ConfigError, match="thinking mixed: the student's chat template already ends the prompt with an "
                                          "empty think block .* remove that switch, or set thinking: off"):
        load(tokenizer, traces, "thinking=mixed", switch)


def test_unclosed_think_block_refused(smollm2_path, load, tmp_path):
    path = tmp_path / "cut.jsonl"
    texts = ["<think>\nfine\n</think>\nThe answer is 1.", "<think>\ncut off"]
    path.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                       {"role": "assistant", "content": text}]})
                              for i, text in enumerate(texts)))
    with pytest.raises(ConfigError, match=r"thinking off: 1 traces of .*cut.jsonl \(first: #1\) open a think block "
                                          "they never close"):
        load(AutoTokenizer.from_pretrained(smollm2_path), path, "thinking=off")


@pytest.mark.parametrize("overrides,message", [
    (["thinking=sometimes"], "^thinking must be on, off, mixed, got 'sometimes'$"),
    (["thinking=off", "kd.mode=offline"], ("^thinking off can't be combined with kd.mode offline: the teacher's stored "
                                           "log-probs cover the think tokens it drops")),
    (["thinking=mixed", "kd.mode=offline"], "^thinking mixed can't be combined with kd.mode offline"),
])
def test_bad_combinations_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        configlib.load(SFTStageConfig, None, overrides)
    assert "\n" not in str(e.value)


def test_online_kd_takes_answer_only_rows():
    cfg = configlib.load(SFTStageConfig, None, ["thinking=off", "kd.mode=online", "kd.teacher=embedded:SmolLM2-135M-Instruct"])
    assert cfg.thinking == "off"
