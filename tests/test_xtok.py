"""Logit KD across tokenizers: token alignment on the real Qwen2 (R1-Distill) and SmolLM2 tokenizers, the ULD
loss against hand computations, gradients that reach only the student, identity alignment for one tokenizer,
and the kd.cross_tokenizer decision made before any model loads."""

import math

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from seqdistill import kd, kd_loss, topk, xtok
from seqdistill.config import ConfigError

TEXTS = [
    "The answer is 12345.678, not 1,000,000.",
    "a  b   c\n\n\n  d\t\te",  # runs of spaces, newlines and tabs: the two split them differently
    "naïve café 東京 ∑ x²",  # characters split into byte pieces, differently on each side
    "<think>\nOK</think> done!",  # one added token for Qwen2, five pieces for SmolLM2
]


@pytest.fixture(scope="module")
def qwen(r1_qwen_tokenizer):
    return AutoTokenizer.from_pretrained(r1_qwen_tokenizer)


@pytest.fixture(scope="module")
def smol(smollm2_path):
    return AutoTokenizer.from_pretrained(smollm2_path)


@pytest.fixture(scope="module")
def aligner(smol, qwen):
    return xtok.Aligner(smol, qwen)  # student SmolLM2, teacher Qwen2


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------- alignment


@pytest.mark.parametrize("text", TEXTS)
def test_aligned_pairs_have_read_the_same_text_and_miss_no_common_boundary(text, aligner, qwen, smol):
    t, s = ids(qwen, text), ids(smol, text)
    t_idx, s_idx = aligner.pairs(t, s, text)
    pairs = set(zip(t_idx.tolist(), s_idx.tolist()))
    # the oracle: the tokenizers' own decode of every prefix
    t_prefix = [qwen.decode(t[:i]) for i in range(len(t))]
    s_prefix = [smol.decode(s[:j]) for j in range(len(s))]
    for i, j in pairs:
        assert t_prefix[i] == s_prefix[j], (i, j)
    whole = {p for p in t_prefix if "\ufffd" not in p} & {p for p in s_prefix if "\ufffd" not in p}
    expected = {(t_prefix.index(p), s_prefix.index(p)) for p in whole}
    assert expected <= pairs
    assert t_idx.tolist() == sorted(t_idx.tolist()) and s_idx.tolist() == sorted(s_idx.tolist())


def test_where_the_real_tokenizers_split_differently(aligner, qwen, smol):
    def aligned(text):
        t, s = ids(qwen, text), ids(smol, text)
        t_idx, s_idx = aligner.pairs(t, s, text)
        return [(qwen.convert_ids_to_tokens(t[i]), smol.convert_ids_to_tokens(s[j])) for i, j in zip(t_idx, s_idx)], t, s

    pairs, t, s = aligned(TEXTS[0])  # both split numbers into digits: every token 1:1
    assert qwen.convert_ids_to_tokens(t) == smol.convert_ids_to_tokens(s) and t != s and len(pairs) == len(t)
    pairs, t, s = aligned(TEXTS[1])
    # Qwen2 keeps "\n\n\n" whole, SmolLM2 splits "\n\n" + "\n " (then both " d"); one group each, aligned at its start
    assert ("ĊĊĊ", "ĊĊ") in pairs and ("Ġ", "ĊĠ") not in pairs and ("Ġd", "Ġd") in pairs
    assert len(pairs) == 9 and len(t) == 10 and len(s) == 11
    pairs, t, s = aligned(TEXTS[2])
    # "naïve": Qwen2 na|ï|ve, SmolLM2 na|ïve; 東 as " \xe6\x9d"|"\xb1" vs " \xe6"|"\x9d"|"\xb1": the byte boundary before
    # "\xb1" is common, so ± aligns inside the character; 京 whole vs two pieces
    assert pairs[:4] == [("na", "na"), ("Ã¯", "Ã¯ve"), ("ĠcafÃ©", "ĠcafÃ©"), ("ĠæĿ", "Ġæ")]
    assert ("±", "±") in pairs and ("äº¬", "äº") in pairs and ("Â²", "Â²") in pairs
    assert len(pairs) == 10 and len(t) == 11 and len(s) == 12
    pairs, _, _ = aligned(TEXTS[3])
    assert pairs[0] == ("<think>", "<") and ("</think>", "</") in pairs and pairs[-1] == ("!", "!")


@pytest.mark.parametrize("which", ["qwen", "smol"])
def test_the_same_tokenizer_aligns_as_the_identity(which, qwen, smol):
    tokenizer = {"qwen": qwen, "smol": smol}[which]
    same = xtok.Aligner(tokenizer, tokenizer)
    for text in TEXTS:
        n = len(ids(tokenizer, text))
        t_idx, s_idx = same.pairs(ids(tokenizer, text), ids(tokenizer, text), text)
        assert t_idx.tolist() == s_idx.tolist() == list(range(n)), text
    head = [5, 6, 7]
    sampled = ids(tokenizer, " ".join(TEXTS)) + [tokenizer.eos_token_id]  # a finished sample
    row, positions = same.row(head, sampled, tokenizer.eos_token_id)
    assert row == head + sampled and positions == [len(head) + i for i in range(len(sampled))]


def test_rows_across_the_real_pair(aligner, qwen, smol):
    text = " ".join(TEXTS)
    head, eot = [11, 12], smol.convert_tokens_to_ids("<|im_end|>")
    sampled = ids(qwen, text) + [qwen.eos_token_id]
    row, positions = aligner.row(head, sampled, eot)
    assert row == head + ids(smol, text) + [eot]  # the teacher's text in the student's tokens, closed by its end of turn
    assert len(positions) == len(sampled) and positions[-1] == len(row) - 1  # teacher's end of turn on the student's
    for i, p in enumerate(positions[:-1]):
        if p >= 0:
            assert qwen.decode(sampled[:i]) == smol.decode(row[len(head):p])
    assert 0 < positions.count(-1) < len(sampled) / 4
    # a teacher that sampled a split the tokenizer would not make (" caf" + "é"), and stopped in the middle of 東:
    # the cut character is dropped, the token that holds it still aligns (both have read " café" before it)
    odd = qwen.convert_tokens_to_ids(["Ġcaf", "Ã©", "ĠæĿ"])
    row, positions = aligner.row(head, odd, eot)
    assert smol.convert_ids_to_tokens(row[len(head):]) == ["ĠcafÃ©", "Ġ", "<|im_end|>"] and positions == [2, -1, 3]


def test_a_tokenizer_that_is_not_byte_level_is_refused(smol):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"▁a": 0, "<unk>": 1}, unk_token="<unk>"))
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    metaspace = PreTrainedTokenizerFast(tokenizer_object=backend)
    assert xtok.check_pair(smol, smol, "s", "t") == []
    (problem,) = xtok.check_pair(smol, metaspace, "s", "spm-teacher")
    assert "teacher spm-teacher's is not" in problem and "byte-level" in problem


def test_ids_of_another_tokenizer_are_refused(smol, qwen):
    text = "The answer is 12345.678, naïve café"
    assert xtok.Aligner(smol, qwen).check([ids(qwen, text)], [text], "qwen") == []
    (problem,) = xtok.Aligner(qwen, smol).check([ids(qwen, text)], [text], "smollm2")  # wrong teacher named
    assert "does not name the model that scored it" in problem


# ---------------------------------------------------------------- loss


def test_uld_equals_the_hand_computation():
    teacher = torch.tensor([[0.1, 0.7, 0.2]])
    student = torch.tensor([[0.05, 0.5, 0.3, 0.1, 0.05]])
    # sorted: [.7 .2 .1 0 0] vs [.5 .3 .1 .05 .05]
    assert kd_loss.uld(teacher, student).item() == pytest.approx(0.2 + 0.1 + 0 + 0.05 + 0.05)
    assert kd_loss.uld(student, teacher).item() == pytest.approx(0.4)  # symmetric, whichever is longer
    assert kd_loss.uld(teacher, teacher[:, [2, 0, 1]]).item() == pytest.approx(0)  # blind to which token has the mass


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_uld_on_stored_topk_equals_the_hand_computation(temperature):
    t_probs, s_probs = [0.5, 0.3], [0.1, 0.6, 0.2, 0.1]  # teacher top-2 (rest 0.2), student full
    teacher = torch.tensor([t_probs]).log()
    student = torch.tensor([s_probs]).log()

    def temper(p):
        w = [x ** (1 / temperature) for x in p]
        return [x / sum(w) for x in w]

    t = temper(t_probs + [1 - sum(t_probs)])  # top-k + the rest as one bucket
    s = sorted(temper(s_probs), reverse=True)
    hand = abs(t[0] - s[0]) + abs(t[1] - s[1]) + abs(t[2] - (1 - s[0] - s[1]))
    assert kd_loss.uld_topk(student, teacher, temperature).item() == pytest.approx(hand, abs=1e-6)
    if temperature == 1.0:
        assert hand == pytest.approx(0.1 + 0.1 + 0.0)


def test_uld_on_topk_is_exact_with_every_token_and_a_lower_bound_with_fewer():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 40, generator=g) * 3, torch.randn(6, 30, generator=g) * 3
    t_logp = torch.log_softmax(teacher, -1)
    full = kd_loss.uld(t_logp.exp(), torch.softmax(student, -1))
    every = t_logp.sort(-1, descending=True).values
    assert torch.allclose(kd_loss.uld_topk(student, every, 1.0), full, atol=1e-5)
    for k in (1, 5, 20):
        assert (kd_loss.uld_topk(student, every[:, :k], 1.0) <= full + 1e-4).all()  # rest < 1e-5 counts as 0


def test_gradients_reach_only_the_student():
    g = torch.Generator().manual_seed(1)
    student = (torch.randn(4, 50, generator=g) * 2).requires_grad_()
    teacher = torch.log_softmax(torch.randn(4, 50, generator=g), -1).topk(8).values.requires_grad_()
    (kd_loss.uld_topk(student, teacher, 1.5).sum() + kd_loss.uld(teacher.exp(), torch.softmax(student, -1)).sum()).backward()
    assert teacher.grad is None  # the teacher is a target, never trained through
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


def test_forced_uld_on_one_tokenizer_lays_the_teacher_as_identity_and_matches_the_hand_loss(smol):
    from seqdistill.kd_trainer import KDCollator, offline_term

    same = xtok.Aligner(smol, smol)
    head, eot = ids(smol, "<|im_start|>assistant\n"), smol.convert_tokens_to_ids("<|im_end|>")
    sampled = ids(smol, "Step 1: 12345.678 naïve  café") + [eot]
    row, positions = same.row(head, sampled, eot)
    rng = np.random.default_rng(0)
    k, n = 3, len(sampled)
    t_ids = np.stack([rng.choice(64, k, replace=False) for _ in range(n)])  # inside the logits below
    t_lps = np.log(np.sort(rng.dirichlet(np.ones(k + 2), n)[:, :k], 1)[:, ::-1]).astype(np.float32)
    blob = topk.encode(t_ids, t_lps, np.asarray(sampled), len(smol))
    base = lambda exs: {"input_ids": torch.tensor([e["input_ids"] for e in exs])}  # noqa: E731
    example = {"input_ids": row, "teacher_topk": blob, "kd_offset": len(head)}
    aligned = KDCollator(base)([{**example, "kd_positions": positions}])
    shared = KDCollator(base)([example])  # today's layout from kd_offset
    for key in ("teacher_ids", "teacher_logprobs", "teacher_mask"):
        assert torch.equal(aligned[key], shared[key]), key

    logits = torch.randn(1, len(row), 64, generator=torch.Generator().manual_seed(2))
    trained = torch.zeros(1, len(row) - 1, dtype=torch.bool)
    trained[0, len(head) - 1:] = True  # targets: the completion tokens
    cfg = kd.KDConfig(mode="offline", cross_tokenizer="uld")
    got = offline_term(logits[:, :-1], trained, aligned, cfg, uld=True)
    stored = topk.decode(blob)[1]
    hand = []
    for i in range(n):
        s = sorted(torch.softmax(logits[0, len(head) + i - 1].double(), -1).tolist(), reverse=True)[:k]
        t = sorted(math.exp(x) for x in stored[i])[::-1]
        t.append(max(0.0, 1 - sum(t)) if 1 - sum(t) > 1e-5 else 0.0)
        norm = sum(t)
        t = [x / norm for x in t]
        hand.append(sum(abs(a - b) for a, b in zip(s, t)) + abs((1 - sum(s)) - t[-1]))
    assert got.tolist() == pytest.approx(hand, abs=1e-5)
    kl = offline_term(logits[:, :-1], trained, aligned, kd.KDConfig(mode="offline"), uld=False)
    assert not torch.allclose(got, kl)  # a different loss from the KL path, on the same positions


# ---------------------------------------------------------------- settings


def test_cross_tokenizer_settings():
    assert any("cross_tokenizer must be one of auto, shared, uld" in e for e in kd.KDConfig(cross_tokenizer="on").validate())
    errors = kd.KDConfig(mode="online", teacher="t", cross_tokenizer="uld").validate()
    assert any("set kd.mode offline" in e for e in errors)
    assert any("leave it at forward_kl" in e for e in kd.KDConfig(cross_tokenizer="uld", divergence="jsd").validate())
    assert kd.KDConfig(mode="offline", cross_tokenizer="uld").validate() == []


def test_which_path_each_setting_takes(smol, qwen):
    texts = TEXTS

    def decide(tokenizer, **settings):
        return kd.cross_tokenizer(kd.KDConfig(mode="offline", **settings), smol, tokenizer, texts, "smollm2", "r1-qwen")

    assert decide(qwen) is True  # auto, different tokenizers: ULD
    assert decide(smol) is False  # auto, one tokenizer: today's KL path
    assert decide(smol, cross_tokenizer="uld") is True  # forced
    with pytest.raises(ConfigError, match="tokenize differently.*kd.cross_tokenizer shared needs a shared tokenizer"):
        decide(qwen, cross_tokenizer="shared")
    with pytest.raises(ConfigError, match="names no teacher"):
        decide(None, cross_tokenizer="uld")
    assert decide(None) is False
    with pytest.raises(ConfigError, match="tokenize differently.*set kd.mode offline"):
        kd.cross_tokenizer(kd.KDConfig(mode="online", teacher="t"), smol, qwen, texts, "smollm2", "r1-qwen")


# ---------------------------------------------------------------- dataset rows and training


def scored_traces(traces_path, teacher_path, out):
    """The `traces` conversations as a teacher would have written them: its sampled ids (its own tokenization of
    the completion, closed by its end-of-sentence token) and its top-8 log-probs there, from the real model."""
    import json

    from transformers import AutoModelForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    model = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float32)
    rows = []
    for line in traces_path.read_text().splitlines():
        row = json.loads(line)
        prompt = tokenizer.apply_chat_template(row["messages"][:-1], tokenize=False, add_generation_prompt=True)
        head = ids(tokenizer, prompt)
        sampled = ids(tokenizer, row["messages"][-1]["content"]) + [tokenizer.eos_token_id]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([head + sampled])).logits[0, len(head) - 1 : -1].float(), -1)
        top = logp.topk(8)
        blob = topk.encode(top.indices.numpy(), top.values.numpy(), np.asarray(sampled), len(tokenizer))
        rows.append({**row, "teacher": teacher_path, "prefill": "", "teacher_topk": blob})
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(out))
    return str(out)


def load_rows(student, dataset, *overrides):
    from seqdistill import config as configlib
    from seqdistill import models
    from seqdistill.data import TrainingData
    from seqdistill.sft import SFTStageConfig

    cfg = configlib.load(SFTStageConfig, None, [f"student={student}", f"dataset={dataset}", "kd.mode=offline",
                                                "max_length=512", *overrides])
    return TrainingData.load(cfg, models.load_tokenizer(student)).train


def test_offline_rows_across_tokenizers(traces, tiny_qwen2, tiny_llama, tmp_path):
    """Needs seqdistill/data.py to build rows through xtok.Aligner (check_kd returns it, to_kd_rows uses it)."""
    qwen_scored = scored_traces(traces, tiny_qwen2, tmp_path / "qwen.parquet")
    smol = AutoTokenizer.from_pretrained(tiny_llama)
    rows = load_rows(tiny_llama, qwen_scored)  # auto: the tokenizers differ
    assert "kd_positions" in rows.column_names
    for row, conversation in zip(rows, [m for m in __import__("datasets").Dataset.from_parquet(qwen_scored)["messages"]]):
        completion = ids(smol, conversation[-1]["content"])
        assert row["input_ids"][row["kd_offset"]:] == completion + [smol.convert_tokens_to_ids("<|im_end|>")]
        positions = row["kd_positions"]
        assert positions[0] == row["kd_offset"] and positions[-1] == len(row["input_ids"]) - 1
        assert sum(p >= 0 for p in positions) / len(positions) > 0.7
    with pytest.raises(ConfigError, match="tokenize differently"):
        load_rows(tiny_llama, qwen_scored, "kd.cross_tokenizer=shared")

    smol_scored = scored_traces(traces, tiny_llama, tmp_path / "smol.parquet")
    shared = load_rows(tiny_llama, smol_scored)  # auto, one tokenizer: today's rows
    forced = load_rows(tiny_llama, smol_scored, "kd.cross_tokenizer=uld")
    assert "kd_positions" not in shared.column_names
    for a, b in zip(shared, forced):
        assert a["input_ids"] == b["input_ids"]
        assert b["kd_positions"] == list(range(a["kd_offset"], len(a["input_ids"])))  # the identity


@pytest.mark.slow
def test_kd_trains_across_tokenizers(traces, tiny_qwen2, tiny_llama, tmp_path):
    """A SmolLM2-tokenizer student learns from a Qwen2-tokenizer teacher's stored top-k through real TRL."""
    from seqdistill import config as configlib
    from seqdistill import sft
    from seqdistill.sft import SFTStageConfig

    dataset = scored_traces(traces, tiny_qwen2, tmp_path / "qwen.parquet")
    cfg = configlib.load(SFTStageConfig, None, [
        f"student={tiny_llama}", f"dataset={dataset}", f"output_dir={tmp_path / 'out'}", "max_steps=2",
        "per_device_train_batch_size=4", "report_to=[none]", "max_length=256", "logging_steps=1", "kd.mode=offline"])
    result = sft.run(cfg)
    assert result.trainer.uld
    kd_losses = [e["kd_loss"] for e in result.metrics["log_history"] if "kd_loss" in e]
    assert kd_losses and all(0 < v <= 2 for v in kd_losses)  # ULD is an L1 of two probability vectors: at most 2
    assert result.metrics["global_step"] == 2 and math.isfinite(result.metrics["train_loss"])
