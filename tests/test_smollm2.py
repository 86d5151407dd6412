"""The real SmolLM2-135M-Instruct (the embedded default): generate finds correct traces, sft learns them."""

import datasets
import pytest
import torch

from seqdistill import config as configlib
from seqdistill import generate, sft
from seqdistill.checking.verify import is_equivalent
from seqdistill.generate import GenerateConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def generated(smollm2_llm, tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2") / "gen-smollm2"  # unique name: datasets caches local dirs by name
    cfg = configlib.load(GenerateConfig, "pipelines/generate-quickstart.yaml", [
        f"output_dir={out}", "problems.num_problems=24", "sampling.max_tokens=64", "chunk_size=12",
    ])
    return out, generate.run(cfg, llm=smollm2_llm)


def test_generate_finds_correct_kept_traces(generated):
    out, stats = generated
    kept = datasets.load_dataset(str(out))["train"]
    assert len(kept) == stats["funnel"]["kept"] > 0
    assert stats["funnel"]["generated"] == 24 * 8
    for row in kept:
        assert row["correct"] and is_equivalent(row["answer"], row["gold"])
        assert row["finish_reason"] == "stop"
        assert row["messages"][-1]["content"].strip()
    per_problem = {}
    for pid in kept["problem_id"]:
        per_problem[pid] = per_problem.get(pid, 0) + 1
    assert max(per_problem.values()) <= 4  # filters.max_per_problem
    assert "wrong_answer" in stats["drop_reasons"]


def test_lora_sft_loss_falls_and_student_stops(generated, smollm2_path, tmp_path):
    out, _ = generated
    result = sft.run(configlib.load(sft.SFTStageConfig, "pipelines/sft-quickstart.yaml", [
        f"dataset={out}", f"output_dir={tmp_path / 'sft'}", "num_train_epochs=3", "per_device_train_batch_size=4",
        "logging_steps=1", "report_to=[none]", "merge=true",
    ]))
    losses = [h["loss"] for h in result.metrics["log_history"] if "loss" in h]
    assert len(losses) >= 4 and sum(losses[-2:]) / 2 < sum(losses[:2]) / 2  # the training loss falls

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "sft" / "merged")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "sft" / "merged", dtype=torch.float32)
    prompt = datasets.load_dataset(str(out))["train"][0]["messages"][:-1]
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generated_ids = model.generate(**ids, max_new_tokens=96, do_sample=False)[0][ids["input_ids"].shape[1]:]
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert generated_ids[-1].item() == eot and len(generated_ids) < 96  # the student stops by itself
