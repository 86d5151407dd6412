"""Logit KD: the divergences against direct full-distribution formulas, the top-k storage round trip,
teacher log-probs recorded by the real vLLM engine, and KD training with TRL on tiny models."""

import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from seqdistill import config as configlib
from seqdistill import generate, score, sft, store
from seqdistill.training import kd, kd_loss
from seqdistill.engines import topk
from seqdistill.config import ConfigError
from seqdistill.generate import GenerateConfig
from seqdistill.sft import SFTStageConfig

# ---------------------------------------------------------------- loss


def logits(seed, n=5, v=11):
    return torch.randn(n, v, generator=torch.Generator().manual_seed(seed)) * 3


def test_divergences_match_full_distribution_formulas():
    t, s = torch.log_softmax(logits(0), -1), torch.log_softmax(logits(1), -1)
    forward = torch.nn.functional.kl_div(s, t, log_target=True, reduction="none").sum(-1)  # KL(t || s)
    reverse = torch.nn.functional.kl_div(t, s, log_target=True, reduction="none").sum(-1)  # KL(s || t)
    assert torch.allclose(kd_loss.divergence(t, s, "forward_kl"), forward, atol=1e-6)
    assert torch.allclose(kd_loss.divergence(t, s, "reverse_kl"), reverse, atol=1e-6)
    p, q = t.exp(), s.exp()
    m = (p + q) / 2
    jsd = 0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)
    assert torch.allclose(kd_loss.divergence(t, s, "jsd", 0.5), jsd, atol=1e-6)
    assert (jsd <= math.log(2) + 1e-6).all() and (forward > 0).all()
    assert torch.allclose(kd_loss.divergence(t, t, "forward_kl"), torch.zeros(5), atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_topk_buckets_over_the_whole_vocabulary_equal_the_full_computation(temperature):
    student, teacher = logits(2), logits(3)
    teacher_logp = torch.log_softmax(teacher, -1)
    ids = teacher_logp.argsort(-1, descending=True)  # k = V: every token is in the top-k
    t, s = kd_loss.topk_buckets(student, ids, teacher_logp.gather(-1, ids), temperature)
    full_t, full_s = kd_loss.full_distributions(student, teacher, temperature)
    for kind in kd.DIVERGENCES:
        assert torch.allclose(kd_loss.divergence(t, s, kind), kd_loss.divergence(full_t, full_s, kind), atol=1e-5), kind


def test_topk_buckets_keep_the_rest_mass_and_lower_bound_the_full_kl():
    student, teacher = logits(4, v=50), logits(5, v=50)
    teacher_logp = torch.log_softmax(teacher, -1)
    top = teacher_logp.topk(5, -1)
    t, s = kd_loss.topk_buckets(student, top.indices, top.values, 1.0)
    assert torch.allclose(t.exp().sum(-1), torch.ones(5)) and torch.allclose(s.exp().sum(-1), torch.ones(5), atol=1e-5)
    full_t, full_s = kd_loss.full_distributions(student, teacher, 1.0)
    assert (kd_loss.divergence(t, s, "forward_kl") <= kd_loss.divergence(full_t, full_s, "forward_kl") + 1e-6).all()


def test_vocab_padding_is_sliced_to_the_shared_vocabulary():
    student, teacher = logits(6, v=12), logits(7, v=11)  # e.g. 152064 vs 151936 rows
    t, s = kd_loss.full_distributions(student, teacher, 1.0)
    assert t.shape == s.shape == (5, 11)


# ---------------------------------------------------------------- storage


@pytest.mark.parametrize("vocab", [49152, 151936, 262144])
def test_storage_round_trip_and_size(vocab):
    rng = np.random.default_rng(0)
    n, k = 300, 20
    ids = np.stack([rng.choice(vocab, k, replace=False) for _ in range(n)])
    lps = np.sort(np.log(rng.dirichlet(np.ones(k * 2), n)[:, :k]), 1)[:, ::-1].astype(np.float32)
    sampled = ids[np.arange(n), rng.integers(0, k, n)]
    sampled[::7] = vocab - 1 - np.arange(len(sampled[::7]))  # some sampled tokens fall outside the top-k
    blob = topk.encode(ids, lps, sampled, vocab)
    got_ids, got_lps, got_sampled = topk.decode(blob)
    assert np.array_equal(got_ids, ids) and np.array_equal(got_sampled, sampled)
    inside = lps >= topk.LOGPROB_FLOOR
    assert np.abs(got_lps - lps)[inside].max() <= topk.max_quantisation_error(vocab) + 1e-6
    assert (got_lps[~inside] == topk.LOGPROB_FLOOR).all()
    assert len(blob) / n <= 64  # bytes per token at k=20 (sampled ids outside the top-k included)
    assert topk.max_quantisation_error(vocab) <= 0.08


# ---------------------------------------------------------------- vLLM + TRL


@pytest.fixture(scope="module")
def teacher_samples(smollm2_llm, smollm2_path, tmp_path_factory):
    """Every sample (kept or not) of a SmolLM2 generate run with top-k log-probs recorded.

    The teacher is the real model: a random tiny teacher is near-uniform, so there is nothing to distil."""
    out = tmp_path_factory.mktemp("gen-kd")
    cfg = configlib.load(GenerateConfig, None, [
        f"model={smollm2_path}", f"output_dir={out}", "problems.num_problems=40", "sampling.n=2",
        "sampling.max_tokens=40", "sampling.temperature=1.0", "answer.extraction=last_number",
        "teacher_logprobs=true", "logprobs_k=20"])
    stats = generate.run(cfg, llm=smollm2_llm)
    samples = store.read_parquet(sorted(out.glob("samples/*/chunk-*.parquet")))
    return out, stats, samples


def test_generate_records_teacher_topk_that_match_the_model(teacher_samples, smollm2_path):
    out, stats, samples = teacher_samples
    assert stats["teacher_logprobs"]["bytes_per_token"] <= 64 or stats["funnel"]["kept"] == 0
    assert "teacher_topk" not in store.read_parquet([out / "data" / "dropped.parquet"]).column_names
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32)
    agree, total = 0, 0
    for row in samples.select(range(4)):
        ids, lps, sampled = topk.decode(row["teacher_topk"])
        assert len(sampled) == row["completion_tokens"] and ids.shape == (len(sampled), 20)
        assert tokenizer.decode(sampled, skip_special_tokens=True) == row["completion"]
        prompt = tokenizer.apply_chat_template(row["messages"][:-1], add_generation_prompt=True, tokenize=False)
        head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([head + sampled.tolist()])).logits[0].float(), -1)
        ref = ref[len(head) - 1 : len(head) - 1 + len(sampled)]  # the distributions the sampled tokens came from
        agree += (ref.argmax(-1).numpy() == ids[:, 0]).sum()
        total += len(sampled)
        top1 = ref.gather(-1, torch.from_numpy(ids[:, :1])).squeeze(-1).numpy()
        assert np.abs(top1 - lps[:, 0]).mean() < 0.1  # bf16 engine vs fp32 reference, plus quantisation
    assert agree / total > 0.9


def write_traces(samples, path, rows):
    samples.select(rows).remove_columns(["keep", "drop_reason"]).to_parquet(str(path))
    return str(path)


def kl_to_teacher(student_path_or_model, teacher, rows, tokenizer) -> float:
    """Mean full-vocabulary KL(teacher || student) over the completion tokens of held-out traces."""
    student = student_path_or_model
    total, count = 0.0, 0
    for row in rows:
        prompt = tokenizer.apply_chat_template(row["messages"][:-1], add_generation_prompt=True, tokenize=False)
        head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([head + topk.decode(row["teacher_topk"])[2].tolist()])
        with torch.no_grad():
            t, s = kd_loss.full_distributions(student(ids).logits[0, len(head) - 1 : -1], teacher(ids).logits[0, len(head) - 1 : -1], 1.0)
        total += kd_loss.divergence(t, s, "forward_kl").sum().item()
        count += len(t)
    return total / count


@pytest.fixture(scope="module")
def other_tiny_llama(tiny_llama, tmp_path_factory):
    """A student: the teacher's architecture and tokenizer, different random weights."""
    config = LlamaConfig.from_pretrained(tiny_llama)
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("tiny-student")
    LlamaForCausalLM(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(path)
    return str(path)


def test_kd_brings_the_student_closer_to_the_teacher_than_sft(teacher_samples, smollm2_path, other_tiny_llama, tmp_path):
    _, _, samples = teacher_samples
    train = write_traces(samples, tmp_path / "train.parquet", range(0, 64))
    held = samples.select(range(64, 80))
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    teacher = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32)
    before = kl_to_teacher(AutoModelForCausalLM.from_pretrained(other_tiny_llama, dtype=torch.float32), teacher, held, tokenizer)
    after = {}
    for name, mode in (("sft", "none"), ("kd", "offline")):
        cfg = configlib.load(SFTStageConfig, None, [
            f"student={other_tiny_llama}", f"dataset={train}", f"output_dir={tmp_path / name}", "method=full",
            "learning_rate=3e-3", "num_train_epochs=3", "per_device_train_batch_size=8", "report_to=[none]",
            "max_length=256", "logging_steps=4", f"kd.mode={mode}", "kd.alpha=0"])
        result = sft.run(cfg)
        after[name] = kl_to_teacher(result.trainer.model.float(), teacher, held, tokenizer)
    log = result.trainer.state.log_history
    assert any("kd_loss" in entry for entry in log)
    assert before - after["kd"] > before - after["sft"] > 0, (before, after)


def test_kd_with_lora_and_online_teacher(teacher_samples, tiny_llama, other_tiny_llama, tmp_path):
    _, _, samples = teacher_samples
    train = write_traces(samples, tmp_path / "train.parquet", range(0, 16))
    for mode in ("offline", "online"):
        cfg = configlib.load(SFTStageConfig, None, [
            f"student={other_tiny_llama}", f"dataset={train}", f"output_dir={tmp_path / mode}", "max_steps=2",
            "per_device_train_batch_size=4", "report_to=[none]", "max_length=256", "logging_steps=1",
            f"kd.mode={mode}", f"kd.teacher={tiny_llama}", "kd.divergence=jsd"])
        metrics = sft.run(cfg).metrics
        assert metrics["global_step"] == 2 and math.isfinite(metrics["train_loss"])
        assert any("kd_loss" in entry for entry in metrics["log_history"])


def test_score_adds_the_same_logprobs_as_generate(teacher_samples, smollm2_llm, smollm2_path, tmp_path):
    _, _, samples = teacher_samples
    # a finished trace (ends with end-of-turn) scored after the fact gets the distributions generate saw
    row = next(r for r in samples if r["finish_reason"] == "stop")
    source = write_traces(samples, tmp_path / "traces.parquet", [list(samples["completion"]).index(row["completion"])])
    cfg = configlib.load(score.ScoreConfig, None, [f"model={smollm2_path}", f"dataset={source}", f"output_dir={tmp_path / 'scored'}"])
    stats = score.run(cfg, llm=smollm2_llm)
    scored = store.read_parquet([tmp_path / "scored" / "data" / "train.parquet"])[0]
    ids, lps, sampled = topk.decode(scored["teacher_topk"])
    g_ids, g_lps, g_sampled = topk.decode(row["teacher_topk"])
    assert stats["examples"] == 1 and scored["teacher"] == smollm2_path
    if sampled.tolist() == g_sampled.tolist():  # the text re-tokenizes to the sampled ids
        assert (ids[:, 0] == g_ids[:, 0]).mean() > 0.9 and np.abs(lps[:, 0] - g_lps[:, 0]).mean() < 0.1


@pytest.mark.parametrize("overrides, message", [
    (["kd.mode=offline"], "has no teacher log-probs .* teacher_logprobs: true"),
    (["kd.alpha=1.5"], r"kd.alpha must be in \[0, 1\]"),
    (["kd.temperature=0"], "kd.temperature must be > 0"),
    (["kd.mode=online"], "kd.mode online needs kd.teacher"),
    (["kd.mode=online", "kd.teacher=__QWEN2__", "kd.hidden_states.weight=1"],  # across tokenizers: logits only
     "tokenize differently.*kd.hidden_states needs one tokenizer"),
])
def test_bad_kd_input(overrides, message, teacher_samples, tiny_llama, tiny_qwen2, tmp_path):
    _, _, samples = teacher_samples
    plain = tmp_path / "plain.parquet"
    samples.select(range(4)).remove_columns(["teacher_topk"]).to_parquet(str(plain))
    with pytest.raises(ConfigError, match=message):
        cfg = configlib.load(SFTStageConfig, None, [
            f"student={tiny_llama}", f"dataset={plain}", f"output_dir={tmp_path / 'out'}", "max_length=1024",
            *[o.replace("__QWEN2__", tiny_qwen2) for o in overrides]])  # R1-Distill-Qwen's tokenizer
        sft.run(cfg)
    assert not (tmp_path / "out" / "model").exists()


def test_k_above_max_logprobs_is_refused(tiny_llama, tmp_path):
    with pytest.raises(ConfigError, match=r"logprobs_k must be in \[1, engine max_logprobs=20\]"):
        configlib.load(GenerateConfig, None, [f"model={tiny_llama}", "teacher_logprobs=true", "logprobs_k=50",
                                              "engine.extra={max_logprobs: 20}"])
