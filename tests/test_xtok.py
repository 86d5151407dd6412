"""Logit KD across tokenizers: token alignment and the shared-vocabulary id map on the real Qwen2 (R1-Distill) and
SmolLM2 tokenizers, the ULD and hybrid losses against hand computations, gradients that reach only the student,
identity alignment for one tokenizer, and the kd.cross_tokenizer decision made before any model loads."""

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from seqdistill.config import ConfigError
from seqdistill.engines import topk
from seqdistill.training import kd, kd_loss, xtok

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


def test_the_shared_vocabulary_on_the_real_pair(aligner, qwen, smol):
    to_student = aligner.to_student
    assert len(to_student) == len(aligner.teacher_pieces)
    for token in ["7", "Ġthe", "Ġanswer", ".", "Ċ"]:  # a digit, common words, punctuation: the student's same-bytes token
        assert to_student[qwen.convert_tokens_to_ids(token)] == smol.convert_tokens_to_ids(token), token
    assert to_student[qwen.convert_tokens_to_ids("<think>")] == -1  # an added token SmolLM2 does not have
    (cjk,) = ids(qwen, "東京")[-1:]  # 京 is one Qwen2 token; SmolLM2 has no token of its bytes (it splits it)
    assert aligner.teacher_pieces[cjk] == "京".encode() and to_student[cjk] == -1
    matched = to_student[to_student >= 0]
    assert len(set(matched.tolist())) == len(matched)  # one teacher id per student id: no mass counted twice
    assert 0.1 < len(matched) / len(smol) <= 1  # a good share of the student's vocabulary is shared
    for i in np.flatnonzero(to_student >= 0)[::997]:
        assert aligner.teacher_pieces[i] == aligner.student_pieces[to_student[i]]


def test_one_tokenizer_maps_every_id_to_itself(smol):
    pieces = xtok.vocab_bytes(smol)
    assert len(set(pieces)) == len(pieces)  # SmolLM2 spells every token differently
    assert xtok.Aligner(smol, smol).to_student.tolist() == list(range(len(pieces)))


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
    twins = torch.tensor([[3, -1, 7, 9, -1, 11, 2, -1]] * 4)
    (kd_loss.uld_topk(student, teacher, 1.5).sum() + kd_loss.uld(teacher.exp(), torch.softmax(student, -1)).sum()
     + kd_loss.hybrid_topk(student, twins, teacher, 1.5).sum()).backward()
    assert teacher.grad is None  # the teacher is a target, never trained through
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


def test_hybrid_equals_the_hand_computation():
    # student vocabulary of 4; the teacher's top-3 at p = .4, .3, .2 (rest .1): its first token is student 1,
    # its second has no student twin, its third is student 3
    student = torch.tensor([[0.1, 0.5, 0.25, 0.15]]).log()
    teacher = torch.tensor([[0.4, 0.3, 0.2]]).log()
    twins = torch.tensor([[1, -1, 3]])
    # matched buckets: teacher [.4, .2, rest .3 + .1], student [.5, .15, rest .1 + .25]
    kl = 0.4 * math.log(0.4 / 0.5) + 0.2 * math.log(0.2 / 0.15) + 0.4 * math.log(0.4 / 0.35)
    # unmatched (u = 1): teacher [.3] + its mass outside the top-k .1; student off tokens 1 and 3: [.25] + .1
    uld = abs(0.25 - 0.3) + abs(0.1 - 0.1)
    assert kd_loss.hybrid_topk(student, twins, teacher, 1.0).item() == pytest.approx(kl + uld, abs=1e-6)
    reverse = 0.5 * math.log(0.5 / 0.4) + 0.15 * math.log(0.15 / 0.2) + 0.35 * math.log(0.35 / 0.4)
    assert kd_loss.hybrid_topk(student, twins, teacher, 1.0, "reverse_kl").item() == pytest.approx(reverse + uld, abs=1e-6)
    # T = 2: every probability tempered (the rest as one token), the KL part scaled by T^2
    t = [x ** 0.5 for x in (0.4, 0.3, 0.2, 0.1)]
    t = [x / sum(t) for x in t]
    s = [x ** 0.5 for x in (0.1, 0.5, 0.25, 0.15)]
    s = [x / sum(s) for x in s]
    kl2 = t[0] * math.log(t[0] / s[1]) + t[2] * math.log(t[2] / s[3]) + (t[1] + t[3]) * math.log((t[1] + t[3]) / (s[0] + s[2]))
    hand = 4 * kl2 + abs(s[2] - t[1]) + abs(s[0] - t[3])
    assert kd_loss.hybrid_topk(student, twins, teacher, 2.0).item() == pytest.approx(hand, abs=1e-6)


def test_hybrid_with_nothing_shared_is_uld_and_with_everything_shared_is_the_topk_kl():
    g = torch.Generator().manual_seed(3)
    student = torch.randn(5, 30, generator=g) * 2
    teacher = torch.log_softmax(torch.randn(5, 30, generator=g) * 2, -1).topk(6)
    none = torch.full_like(teacher.indices, -1)
    assert torch.allclose(kd_loss.hybrid_topk(student, none, teacher.values, 1.5), kd_loss.uld_topk(student, teacher.values, 1.5),
                          atol=1e-5)
    for kind in ("forward_kl", "jsd"):
        log_s = torch.log_softmax(student / 1.5, -1)
        t, s = kd_loss.matched_buckets(kd_loss.twins(log_s, teacher.indices), teacher.values, 1.5)
        t0, s0 = kd_loss.topk_buckets(student, teacher.indices, teacher.values, 1.5)
        assert torch.allclose(t, t0, atol=1e-6) and torch.allclose(s, s0, atol=1e-6)
        assert torch.allclose(kd_loss.divergence(t, s, kind), kd_loss.divergence(t0, s0, kind), atol=1e-6)


def one_tokenizer_batch(smol, to_student=None):
    """A completion scored on SmolLM2's own tokenizer, collated as a cross-tokenizer row (the identity alignment, ids
    through `to_student`) and as today's row from kd_offset; random student logits; which logits predict it."""
    from seqdistill.training.kd_trainer import KDCollator

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
    aligned = KDCollator(base, to_student)([{**example, "kd_positions": positions}])
    shared = KDCollator(base)([example])  # today's layout from kd_offset
    for key in ("teacher_ids", "teacher_logprobs", "teacher_mask"):
        assert torch.equal(aligned[key], shared[key]), key
    logits = torch.randn(1, len(row), 64, generator=torch.Generator().manual_seed(2))
    trained = torch.zeros(1, len(row) - 1, dtype=torch.bool)
    trained[0, len(head) - 1:] = True  # targets: the completion tokens
    predicting = [logits[0, len(head) + i - 1].double() for i in range(n)]  # the logits that predict token i
    return aligned, shared, logits[:, :-1], trained, predicting, t_ids, topk.decode(blob)[1]


def test_forced_uld_on_one_tokenizer_lays_the_teacher_as_identity_and_matches_the_hand_loss(smol):
    from seqdistill.training.kd_trainer import offline_term

    aligned, _, logits, trained, predicting, _, stored = one_tokenizer_batch(smol)
    got = offline_term(logits, trained, aligned, kd.KDConfig(mode="offline", cross_tokenizer="uld"), cross="uld")
    hand = []
    for row_logits, lps in zip(predicting, stored):
        s = sorted(torch.softmax(row_logits, -1).tolist(), reverse=True)[:len(lps)]
        t = sorted(math.exp(x) for x in lps)[::-1]
        t.append(max(0.0, 1 - sum(t)) if 1 - sum(t) > 1e-5 else 0.0)
        norm = sum(t)
        t = [x / norm for x in t]
        hand.append(sum(abs(a - b) for a, b in zip(s, t)) + abs((1 - sum(s)) - t[-1]))
    assert got.tolist() == pytest.approx(hand, abs=1e-5)
    kl = offline_term(logits, trained, aligned, kd.KDConfig(mode="offline"))
    assert not torch.allclose(got, kl)  # a different loss from the KL path, on the same positions


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl"])
def test_forced_hybrid_on_one_tokenizer_is_todays_topk_kl_plus_the_rest_bucket(smol, divergence):
    """One tokenizer: every top-k token has its twin (itself), so the KL part is today's k + 1 bucket divergence on
    the same numbers, and the ULD part has only the two rest buckets left to compare."""
    from seqdistill.training.kd_trainer import offline_term

    to_student = xtok.Aligner(smol, smol).to_student
    aligned, shared, logits, trained, predicting, t_ids, stored = one_tokenizer_batch(smol, to_student)
    cfg = kd.KDConfig(mode="offline", cross_tokenizer="hybrid", divergence=divergence)
    hybrid = offline_term(logits, trained, aligned, cfg, cross="hybrid")
    kl = offline_term(logits, trained, shared, kd.KDConfig(mode="offline", divergence=divergence))
    rest = []
    for row_logits, top_ids, lps in zip(predicting, t_ids, stored):
        s_rest = 1 - torch.softmax(row_logits, -1)[top_ids].sum().item()
        t_rest = 1 - sum(math.exp(x) for x in lps)
        rest.append(abs(s_rest - t_rest))
    assert hybrid.tolist() == pytest.approx((kl + torch.tensor(rest)).tolist(), abs=1e-5)


# ---------------------------------------------------------------- settings


def test_cross_tokenizer_settings():
    errors = kd.KDConfig(cross_tokenizer="on").validate()
    assert any("cross_tokenizer must be one of auto, shared, uld, hybrid" in e for e in errors)
    assert kd.KDConfig(mode="online", teacher="t", cross_tokenizer="hybrid").validate() == []
    errors = kd.KDConfig(mode="online", teacher="t", cross_tokenizer="uld", on_policy=kd.OnPolicyKD(fraction=0.5)).validate()
    assert errors == ["cross_tokenizer uld: kd.on_policy needs one tokenizer (its terms compare positions or samples one to "
                      "one): set its weight/fraction to 0, or pick a teacher of the student's family"]
    assert kd.KDConfig(mode="online", teacher="t", topk=0).validate() == ["topk must be at least 1, got 0"]
    assert any("leave it at forward_kl" in e for e in kd.KDConfig(cross_tokenizer="uld", divergence="jsd").validate())
    assert kd.KDConfig(mode="offline", cross_tokenizer="uld").validate() == []
    assert kd.KDConfig(mode="offline", cross_tokenizer="hybrid", divergence="jsd").validate() == []  # its KL part's D
    assert kd.KDConfig(cross_tokenizer="auto").cross_loss() == "hybrid" == kd.KDConfig(cross_tokenizer="hybrid").cross_loss()


def test_which_path_each_setting_takes(smol, qwen):
    texts = TEXTS

    def decide(tokenizer, **settings):
        return kd.cross_tokenizer(kd.KDConfig(mode="offline", **settings), smol, tokenizer, texts, "smollm2", "r1-qwen")

    assert decide(qwen) is True  # auto, different tokenizers: hybrid
    assert decide(smol) is False  # auto, one tokenizer: today's KL path
    assert decide(smol, cross_tokenizer="uld") is True and decide(smol, cross_tokenizer="hybrid") is True  # forced
    with pytest.raises(ConfigError, match="tokenize differently.*kd.cross_tokenizer shared needs a shared tokenizer"):
        decide(qwen, cross_tokenizer="shared")
    with pytest.raises(ConfigError, match="names no teacher"):
        decide(None, cross_tokenizer="uld")
    with pytest.raises(ConfigError, match="hybrid decodes.*names no teacher"):
        decide(None, cross_tokenizer="hybrid")
    assert decide(None) is False
    online = kd.KDConfig(mode="online", teacher="t")
    assert kd.cross_tokenizer(online, smol, qwen, texts, "smollm2", "r1-qwen") is True  # online: the teacher's top kd.topk
    online.hidden_states.weight = 1.0
    with pytest.raises(ConfigError, match="tokenize differently.*, and kd.hidden_states needs one tokenizer"):
        kd.cross_tokenizer(online, smol, qwen, texts, "smollm2", "r1-qwen")


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
    from seqdistill.sft import SFTStageConfig
    from seqdistill.training.data import TrainingData

    cfg = configlib.load(SFTStageConfig, None, [f"student={student}", f"dataset={dataset}", "kd.mode=offline",
                                                "max_length=512", *overrides])
    return TrainingData.load(cfg, models.load_tokenizer(student)).train


def test_offline_rows_across_tokenizers(traces, tiny_qwen2, tiny_llama, tmp_path):
    """Needs seqdistill/training/data.py to build rows through xtok.Aligner (check_kd returns it, to_kd_rows uses it)."""
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
@pytest.mark.parametrize("cross", ["auto", "uld"])
def test_kd_trains_across_tokenizers(traces, tiny_qwen2, tiny_llama, tmp_path, cross):
    """A SmolLM2-tokenizer student learns from a Qwen2-tokenizer teacher's stored top-k through real TRL (auto: hybrid)."""
    from seqdistill import config as configlib
    from seqdistill import sft
    from seqdistill.sft import SFTStageConfig

    dataset = scored_traces(traces, tiny_qwen2, tmp_path / "qwen.parquet")
    cfg = configlib.load(SFTStageConfig, None, [
        f"student={tiny_llama}", f"dataset={dataset}", f"output_dir={tmp_path / 'out'}", "max_steps=2",
        "per_device_train_batch_size=4", "report_to=[none]", "max_length=256", "logging_steps=1", "kd.mode=offline",
        f"kd.cross_tokenizer={cross}"])
    result = sft.run(cfg)
    assert result.trainer.cross == {"auto": "hybrid", "uld": "uld"}[cross]
    kd_losses = [e["kd_loss"] for e in result.metrics["log_history"] if "kd_loss" in e]
    assert kd_losses and all(0 < v < math.inf for v in kd_losses)
    if cross == "uld":
        assert all(v <= 2 for v in kd_losses)  # ULD is an L1 of two probability vectors: at most 2
    assert result.metrics["global_step"] == 2 and math.isfinite(result.metrics["train_loss"])


# ---------------------------------------------------------------- online, across tokenizers


def test_online_rows_across_tokenizers(traces, tiny_qwen2, tiny_llama):
    """Each conversation in both models' own tokens and chat templates; every aligned pair has read the same text."""
    rows = load_rows(tiny_llama, str(traces), "kd.mode=online", f"kd.teacher={tiny_qwen2}")
    qwen, smol = AutoTokenizer.from_pretrained(tiny_qwen2), AutoTokenizer.from_pretrained(tiny_llama)
    for row, conversation in zip(rows, [json.loads(line)["messages"] for line in traces.read_text().splitlines()]):
        prompt = qwen.decode(row["teacher_input_ids"][:row["teacher_offset"]])
        assert prompt.endswith(conversation[0]["content"] + "<｜Assistant｜>")  # R1-Distill's template
        teacher = row["teacher_input_ids"][row["teacher_offset"]:]
        assert qwen.decode(teacher) == conversation[-1]["content"] + "<｜end▁of▁sentence｜>"
        head = len(row["input_ids"]) - sum(row["completion_mask"])
        assert smol.decode(row["input_ids"][head:]) == conversation[-1]["content"] + "<|im_end|>"
        positions = row["kd_positions"]
        assert len(positions) == len(teacher) and positions[-1] == len(row["input_ids"]) - 1  # end of turn on end of turn
        for i, p in enumerate(positions[:-1]):
            if p >= 0:
                assert qwen.decode(teacher[:i]) == smol.decode(row["input_ids"][head:p])
        assert sum(p >= 0 for p in positions) / len(positions) > 0.7


def test_the_teacher_reads_only_as_far_as_the_cut_student_row(traces, tiny_qwen2, tiny_llama):
    """A student row cut at max_length cuts its teacher's tokens after the last one the loss reads; each kept
    student position points at a teacher position inside them, and the uncut row keeps all of them."""
    from seqdistill.training.kd_trainer import teacher_tokens

    row = dict(load_rows(tiny_llama, str(traces), "kd.mode=online", f"kd.teacher={tiny_qwen2}")[0])
    full = teacher_tokens([row], len(row["input_ids"]))
    assert full["teacher_input_ids"].shape[1] == len(row["teacher_input_ids"]) - 1  # its last token predicts nothing
    head = len(row["input_ids"]) - sum(row["completion_mask"])
    cut = head + sum(row["completion_mask"]) // 2  # halfway into the completion
    short = teacher_tokens([row], cut)
    width = short["teacher_input_ids"].shape[1]
    reads = short["teacher_source"][short["teacher_source"] >= 0]
    assert width < len(row["teacher_input_ids"]) - 1 and int(reads.max()) == width - 1
    assert short["teacher_input_ids"][0].tolist() == row["teacher_input_ids"][:width] and bool(short["teacher_attention_mask"].all())


def test_a_template_that_opens_the_think_block_itself(aligner, qwen, smol):
    """Current R1-Distill templates put "<think>\n" in the prompt: the teacher's completion is the end of the student's,
    and both are laid on the student's (longer) text; the other way round too."""
    text = "<think>\nStep 1: 12345.678\n</think>\nThe answer is 7."
    rest = text[len("<think>\n"):]
    s, t = ids(smol, text), ids(qwen, rest)
    positions = aligner.positions(t, rest, s, text, head=10)
    assert len(positions) == len(t) + 1 and positions[-1] == 10 + len(s)
    for i, p in enumerate(positions[:-1]):
        if p >= 0:
            assert "<think>\n" + qwen.decode(t[:i]) == smol.decode(s[:p - 10])
    assert sum(p >= 0 for p in positions[:-1]) >= len(t) - 2
    t_idx, s_idx = aligner.tails(ids(qwen, text), text, ids(smol, rest), rest)  # the student's prompt opened it
    assert s_idx[0] == 0 and qwen.decode(ids(qwen, text)[:t_idx[0]]) == "<think>\n"


@pytest.mark.parametrize("overrides, message", [
    (["kd.hidden_states.weight=1"], "tokenize differently.*, and kd.hidden_states needs one tokenizer"),
    (["thinking=off"], "thinking off can't be combined with kd.mode online across tokenizers"),
])
def test_bad_online_combinations_across_tokenizers(traces, tiny_qwen2, tiny_llama, tmp_path, overrides, message):
    """Refused in one line while the data loads, before either model does."""
    from unittest import mock

    from seqdistill import config as configlib
    from seqdistill import sft
    from seqdistill.sft import SFTStageConfig

    cfg = configlib.load(SFTStageConfig, None, [
        f"student={tiny_llama}", f"dataset={traces}", f"output_dir={tmp_path / 'out'}", "report_to=[none]", "max_length=256",
        "kd.mode=online", f"kd.teacher={tiny_qwen2}", *overrides])
    with mock.patch("transformers.AutoModelForCausalLM.from_pretrained", side_effect=AssertionError("a model loaded")):
        with pytest.raises(ConfigError, match=message):
            sft.run(cfg)


@pytest.mark.slow
def test_online_kd_trains_across_tokenizers(traces, tiny_qwen2, tiny_llama, tmp_path):
    """A SmolLM2-tokenizer student learns from a Qwen2-tokenizer teacher loaded beside it, through real TRL."""
    from seqdistill import config as configlib
    from seqdistill import sft
    from seqdistill.sft import SFTStageConfig

    cfg = configlib.load(SFTStageConfig, None, [
        f"student={tiny_llama}", f"dataset={traces}", f"output_dir={tmp_path / 'out'}", "max_steps=2",
        "per_device_train_batch_size=4", "report_to=[none]", "max_length=256", "logging_steps=1",
        "kd.mode=online", f"kd.teacher={tiny_qwen2}", "kd.topk=8"])
    result = sft.run(cfg)
    trainer = result.trainer
    assert trainer.cross == "hybrid" and trainer.teacher_model is not None
    kd_losses = [e["kd_loss"] for e in result.metrics["log_history"] if "kd_loss" in e]
    assert len(kd_losses) == 2 and all(0 < v < math.inf for v in kd_losses)
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32).state_dict()
    for name, p in trainer.teacher_model.named_parameters():  # the teacher is a target: no gradient, no update
        assert not p.requires_grad and p.grad is None, name
        assert torch.equal(p.detach().cpu().float(), before[name]), name
    assert result.metrics["global_step"] == 2 and math.isfinite(result.metrics["train_loss"])
