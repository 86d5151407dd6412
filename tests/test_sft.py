"""`seqdistill sft` with real TRL training on tiny random-weight Qwen2 (R1 tokenizer) and Llama students."""

import json

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from seqdistill import config as configlib
from seqdistill import sft
from seqdistill.config import ConfigError
from seqdistill.sft import SFTStageConfig
from seqdistill.training.data import split_by_problem


def make_cfg(student, dataset, out, *overrides):
    return configlib.load(SFTStageConfig, None, [
        f"student={student}", f"dataset={dataset}", f"output_dir={out}", "max_steps=3", "learning_rate=1e-2",
        "per_device_train_batch_size=4", "logging_steps=1", "save_steps=2", "report_to=[none]", "max_length=256",
        *overrides,
    ])


def test_lora_trains_adapter_leaves_base(tiny_qwen2, traces, tmp_path):
    result = sft.run(make_cfg(tiny_qwen2, traces, tmp_path / "out"))
    model = result.trainer.model
    original = AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32).state_dict()
    lora_b = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b.values())  # lora_B starts at zero
    for name, param in model.named_parameters():
        if "lora_" in name:
            continue
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(param.detach().cpu(), original[key]), f"base weight {key} changed"
    assert (tmp_path / "out" / "model" / "adapter_model.safetensors").is_file()
    assert "distilled from" in (tmp_path / "out" / "model" / "README.md").read_text()


def test_loss_mask_is_the_trace_and_eos(tiny_qwen2, traces, tmp_path):
    """Token by token: the prompt is masked, the whole trace (think block included) and the EOS are trained."""
    result = sft.run(make_cfg(tiny_qwen2, traces, tmp_path / "out", "max_steps=1"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2)
    row = result.trainer.train_dataset[0]
    ids, labels = row["input_ids"], row["labels"]
    messages = [json.loads(line) for line in open(traces)][0]["messages"]
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert all(label == -100 for label in labels[:n_prompt])
    assert labels[n_prompt:] == ids[n_prompt:]
    assert tokenizer.decode(ids[n_prompt:]) == messages[1]["content"] + "<｜end▁of▁sentence｜>"
    assert "<think>" in tokenizer.decode(ids[n_prompt:])  # R1's template would have stripped it
    # every example ends with the unmasked end-of-turn token
    eos = tokenizer.convert_tokens_to_ids("<｜end▁of▁sentence｜>")
    for r in result.trainer.train_dataset:
        assert r["input_ids"][-1] == eos and r["labels"][-1] == eos
    assert result.metrics["end_of_turn"] == "<｜end▁of▁sentence｜>"


def test_llama_chatml_end_of_turn_and_full_loss_switch(tiny_llama, traces, tmp_path):
    result = sft.run(make_cfg(tiny_llama, traces, tmp_path / "out", "max_steps=1", "assistant_only_loss=false"))
    assert result.metrics["end_of_turn"] == "<|im_end|>"
    row = result.trainer.train_dataset[0]
    assert row["labels"] == row["input_ids"]  # the prompt is trained on too


class InterruptAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


class FirstStep(TrainerCallback):
    seen = None

    def on_step_end(self, args, state, control, **kwargs):
        self.seen = self.seen or state.global_step


def test_resume_continues_from_saved_step(tiny_llama, traces, tmp_path):
    out = tmp_path / "out"
    cfg = make_cfg(tiny_llama, traces, out, "max_steps=4", "save_steps=2")
    with pytest.raises(KeyboardInterrupt):
        sft.run(cfg, callbacks=[InterruptAt(3)])
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and not (out / "model").exists()
    with pytest.raises(ConfigError, match="unfinished run; pass --resume"):
        sft.run(cfg)
    first = FirstStep()
    result = sft.run(make_cfg(tiny_llama, traces, out, "max_steps=4", "save_steps=2", "resume=true"), callbacks=[first])
    assert first.seen == 3 and result.metrics["global_step"] == 4


LOAD_IN_VLLM = """
import sys
from vllm import SamplingParams
from seqdistill.engines import engine
if __name__ == "__main__":
    for path in sys.argv[1:]:
        llm = engine.load_vllm(path, engine.EngineConfig(kv_cache_memory_bytes=64 << 20, enforce_eager=True, max_model_len=256))
        out = llm.generate(["Tom has 3 apples."], SamplingParams(max_tokens=4, temperature=0))
        print("generated", len(out[0].outputs[0].token_ids), "tokens from", path)
        engine.release_vllm(llm)
"""


def test_full_finetune_and_merge_load_in_vllm(tiny_llama, traces, tmp_path):
    import subprocess
    import sys

    sft.run(make_cfg(tiny_llama, traces, tmp_path / "full", "method=full", "max_steps=1"))
    sft.run(make_cfg(tiny_llama, traces, tmp_path / "lora", "max_steps=1", "merge=true"))
    paths = [str(tmp_path / "full" / "model"), str(tmp_path / "lora" / "merged")]
    from huggingface_hub import ModelCard

    merged_card = ModelCard.load(tmp_path / "lora" / "merged" / "README.md")  # the merged model has its own card
    assert merged_card.data.library_name == "transformers" and "LoRA adapter merged into the base weights" in merged_card.text
    # a process of its own: vLLM engines in one process must not overlap the session's engines
    proc = subprocess.run([sys.executable, "-c", LOAD_IN_VLLM, *paths], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [line.split(" from ")[1] for line in proc.stdout.splitlines() if line.startswith("generated")] == paths


@pytest.mark.parametrize("overrides,message", [
    (["student=/no/such/student"], "student: model path /no/such/student does not exist"),
    (["lora.target_modules=[qkv_proj]"], r"lora.target_modules \['qkv_proj'\] match no module .* its linear modules are: .*q_proj"),
    (["dtype=float16"], "float16 training needs a GPU"),
    (["max_length=16"], r"examples .* are longer than max_length=16 tokens .* raise max_length"),
    (["method=qlora"], "qlora needs a CUDA GPU"),
    (["trl={neftune_noise_alph: 5}"], r"trl.neftune_noise_alph is not a trl.SFTConfig setting \(did you mean trl.neftune_noise_alpha\?\)"),
    (["trl={bf16: true}"], "trl.bf16 is set by seqdistill from its own settings .* set it there"),
])
def test_bad_input(tiny_llama, traces, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        sft.run(make_cfg(tiny_llama, traces, tmp_path / "out", *overrides))
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_dataset_without_messages_and_empty(tiny_llama, tmp_path):
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"question": "q", "answer": "1"}\n')
    with pytest.raises(ConfigError, match="has no `messages` column .* it has: question, answer"):
        sft.run(make_cfg(tiny_llama, wrong, tmp_path / "out"))
    empty = tmp_path / "gen" / "data"
    empty.mkdir(parents=True)
    datasets.Dataset.from_list([{"messages": [{"role": "user", "content": "q"}]}]).select([]).to_parquet(str(empty / "train.parquet"))
    with pytest.raises(ConfigError, match="has no examples .* funnel kept none"):
        sft.run(make_cfg(tiny_llama, tmp_path / "gen", tmp_path / "out"))


def test_output_dir_with_another_run(tiny_llama, traces, tmp_path):
    sft.run(make_cfg(tiny_llama, traces, tmp_path / "out", "max_steps=1"))
    with pytest.raises(ConfigError, match=r"holds a different run \(learning_rate: 0.01 -> 0.001\)"):
        sft.run(make_cfg(tiny_llama, traces, tmp_path / "out", "max_steps=1", "learning_rate=1e-3"))


def test_validation_split_holds_out_whole_problems_and_logs_eval_loss(tiny_llama, traces, tmp_path):
    result = sft.run(make_cfg(tiny_llama, traces, tmp_path / "out", "eval_fraction=0.25", "max_steps=2", "eval_steps=1"))
    assert any("eval_loss" in h for h in result.metrics["log_history"])

    pairs = datasets.Dataset.from_list([{"prompt": "p", "completion": "c", "problem_id": f"q{i // 2}"} for i in range(20)])
    train, held = split_by_problem(pairs, 0.3, seed=0)
    assert len(held) == 6 and not set(train["problem_id"]) & set(held["problem_id"])
