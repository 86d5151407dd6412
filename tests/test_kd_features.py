"""KD beyond logits: skew KL, hidden-state, attention and relation losses against direct computations
on small tensors; each term, and on-policy batches, training through the real `seqdistill sft` path on
a tiny 2-layer student and 4-layer teacher of another hidden size; bad settings refused before loading."""

import numpy as np
import pytest
import torch

from seqdistill.training import kd, kd_loss
from seqdistill.training import kd_features as kf

# ---------------------------------------------------------------- skew KL


def log_probs(seed, n=5, v=11):
    return torch.log_softmax(torch.randn(n, v, generator=torch.Generator().manual_seed(seed)) * 3, -1)


def test_skew_kl_is_kl_at_zero_skew():
    t, s = log_probs(0), log_probs(1)
    assert torch.allclose(kd_loss.divergence(t, s, "skew_kl", skew_alpha=0.0), kd_loss.divergence(t, s, "forward_kl"))
    assert torch.allclose(kd_loss.divergence(t, s, "skew_reverse_kl", skew_alpha=0.0), kd_loss.divergence(t, s, "reverse_kl"))


def test_skew_kl_matches_its_formula():
    t, s = log_probs(2), log_probs(3)
    p, q, a = t.exp().double(), s.exp().double(), 0.1
    skew = (p * (p / (a * p + (1 - a) * q)).log()).sum(-1)  # KL(p || a p + (1 - a) q)
    skew_reverse = (q * (q / (a * q + (1 - a) * p)).log()).sum(-1)  # KL(q || a q + (1 - a) p)
    assert torch.allclose(kd_loss.divergence(t, s, "skew_kl", skew_alpha=a).double(), skew, atol=1e-5)
    assert torch.allclose(kd_loss.divergence(t, s, "skew_reverse_kl", skew_alpha=a).double(), skew_reverse, atol=1e-5)
    # KL is convex in its second argument: KL(p || a p + (1 - a) q) <= (1 - a) KL(p || q)
    assert (kd_loss.divergence(t, s, "skew_kl", skew_alpha=a) <= (1 - a) * kd_loss.divergence(t, s, "forward_kl") + 1e-6).all()


def test_skew_kl_on_the_topk_path_equals_the_full_computation_when_k_is_the_vocabulary():
    student, teacher = torch.randn(5, 11) * 3, torch.randn(5, 11) * 3
    teacher_logp = torch.log_softmax(teacher, -1)
    ids = teacher_logp.argsort(-1, descending=True)
    t, s = kd_loss.topk_buckets(student, ids, teacher_logp.gather(-1, ids), 1.0)
    full_t, full_s = kd_loss.full_distributions(student, teacher, 1.0)
    for kind in ("skew_kl", "skew_reverse_kl"):
        assert torch.allclose(kd_loss.divergence(t, s, kind), kd_loss.divergence(full_t, full_s, kind), atol=1e-5)


def test_skew_alpha_is_validated():
    assert kd.KDConfig(divergence="skew_kl", skew_alpha=0.1).validate() == []
    assert any("skew_alpha must be in [0, 1)" in e for e in kd.KDConfig(skew_alpha=1.0).validate())


# ---------------------------------------------------------------- losses on small tensors


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()


def standardise(x):
    x = x.double()
    return (x - x.mean(-1, keepdims=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdims=True) + 1e-5)


@pytest.mark.parametrize("normalize", [False, True])
def test_hidden_mse_with_and_without_projection(normalize):
    s, t = randn(6, 4, seed=1), randn(6, 4, seed=2)
    expected = ((standardise(s) - standardise(t)) ** 2 if normalize else (s.double() - t.double()) ** 2).mean()
    assert torch.allclose(kf.hidden_loss(s, t, "mse", normalize).double(), expected, atol=1e-5)
    proj = torch.nn.Linear(4, 7, bias=False)
    t7 = randn(6, 7, seed=3)
    projected = s.double() @ proj.weight.double().T
    expected = ((standardise(projected) - standardise(t7)) ** 2 if normalize else (projected - t7.double()) ** 2).mean()
    assert torch.allclose(kf.hidden_loss(s, t7, "mse", normalize, proj).double(), expected, atol=1e-5)


def test_hidden_cosine_with_and_without_projection():
    s, t = randn(6, 4, seed=4), randn(6, 4, seed=5)
    cos = [float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in zip(s.numpy(), t.numpy())]
    assert kf.hidden_loss(s, t, "cosine", True).item() == pytest.approx(1 - np.mean(cos), abs=1e-5)
    proj = torch.nn.Linear(4, 3, bias=False)
    t3 = randn(6, 3, seed=6)
    ps = (s @ proj.weight.T).detach().numpy()
    cos = [float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in zip(ps, t3.numpy())]
    assert kf.hidden_loss(s, t3, "cosine", False, proj).item() == pytest.approx(1 - np.mean(cos), abs=1e-5)


def test_hidden_states_loss_averages_mapped_layers_on_assistant_tokens_and_trains_the_projections():
    student = [randn(2, 5, 4, seed=i).requires_grad_() for i in range(3)]  # embeddings + 2 blocks
    teacher = [randn(2, 5, 6, seed=10 + i) for i in range(5)]
    rows = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]], dtype=torch.bool)
    pairs = [(1, 2), (2, 4)]
    projections = kf.projections(pairs, 4, 6)
    got = kf.hidden_states_loss(student, teacher, pairs, rows, "mse", False, projections)
    expected = np.mean([((student[s][rows] @ projections[f"student{s}_teacher{t}"].weight.T - teacher[t][rows]) ** 2)
                        .mean().item() for s, t in pairs])
    assert got.item() == pytest.approx(expected, rel=1e-5)
    got.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projections.parameters())
    assert student[0].grad is None and student[1].grad[~rows].abs().sum() == 0 and student[1].grad[rows].abs().sum() > 0
    assert kf.projections(pairs, 6, 6) is None  # same size: compared directly


def attention(b, h, n, seed):
    scores = randn(b, h, n, n, seed=seed) * 2
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    return torch.softmax(scores.masked_fill(~causal, float("-inf")), -1)


def direct_attention_kl(s, t, rows):
    total, count = 0.0, 0
    for b, i in zip(*np.nonzero(rows.numpy())):
        for h in range(s.shape[1]):
            p, q = t[b, h, i].double().numpy(), s[b, h, i].double().numpy()
            keep = p > 0
            total += float((p[keep] * np.log(p[keep] / q[keep])).sum())
            count += 1
    return total / count


def test_attention_kl_with_equal_head_counts_is_per_head():
    s, t = attention(2, 3, 5, seed=1), attention(2, 3, 5, seed=2)
    rows = torch.tensor([[0, 1, 1, 1, 1], [0, 0, 0, 1, 1]], dtype=torch.bool)
    assert kf.attention_kl(s, t, rows).item() == pytest.approx(direct_attention_kl(s, t, rows), rel=1e-5)
    assert kf.attention_kl(t, t, rows).item() == pytest.approx(0, abs=1e-6)


def test_attention_kl_with_different_head_counts_averages_the_heads():
    s, t = attention(2, 2, 5, seed=3), attention(2, 3, 5, seed=4)
    rows = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 0, 1, 1]], dtype=torch.bool)
    direct = direct_attention_kl(s.mean(1, keepdim=True), t.mean(1, keepdim=True), rows)
    assert kf.attention_kl(s, t, rows).item() == pytest.approx(direct, rel=1e-5)


def huber(a, b):
    d = np.abs(a - b)
    return float(np.where(d < 1, 0.5 * d**2, d - 0.5).mean())


def test_rkd_distance_matches_a_direct_computation():
    s, t = randn(5, 4, seed=1), randn(5, 7, seed=2)

    def normalised(x):
        x = x.double().numpy()
        d = np.array([[np.linalg.norm(a - b) for b in x] for a in x])
        return d / d[~np.eye(len(x), dtype=bool)].mean()
    assert kf.rkd_distance(s, t).item() == pytest.approx(huber(normalised(s), normalised(t)), rel=1e-4)
    assert kf.rkd_distance(s, s * 3).item() == pytest.approx(0, abs=1e-6)  # scale-free


def test_rkd_angle_matches_a_direct_computation():
    s, t = randn(4, 3, seed=3), randn(4, 6, seed=4)

    def angles(x):
        x = x.double().numpy()
        out = np.zeros((len(x),) * 3)
        for i in range(len(x)):
            for j in range(len(x)):
                for k in range(len(x)):
                    u, v = x[i] - x[j], x[k] - x[j]
                    if i != j and k != j:
                        out[j, i, k] = np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v)
        return out
    assert kf.rkd_angle(s, t).item() == pytest.approx(huber(angles(s), angles(t)), rel=1e-4)


def test_relation_loss_subsamples_assistant_tokens():
    s, t = randn(2, 9, 4, seed=5), randn(2, 9, 6, seed=6)
    rows = torch.zeros(2, 9, dtype=torch.bool)
    rows[0, 2:] = True
    rows[1, 4:8] = True
    got = kf.relation_loss(s, t, rows, "distance", max_tokens=4)
    first = torch.tensor([2, 4, 6, 8])  # 7 assistant tokens spread to 4
    expected = (kf.rkd_distance(s[0, first], t[0, first]) + kf.rkd_distance(s[1, 4:8], t[1, 4:8])) / 2
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_value_relation_matches_a_direct_computation():
    s, t = randn(1, 4, 4, seed=7), randn(1, 4, 6, seed=8)
    mask, rows = torch.ones(1, 4), torch.tensor([[0, 1, 1, 1]], dtype=torch.bool)

    def relation(v, heads):
        v = v[0].double().numpy()
        d = v.shape[1] // heads
        out = []
        for r in range(heads):
            x = v[:, r * d : (r + 1) * d]
            scores = x @ x.T / np.sqrt(d)
            rel = np.zeros_like(scores)
            for i in range(len(x)):
                e = np.exp(scores[i, : i + 1] - scores[i, : i + 1].max())
                rel[i, : i + 1] = e / e.sum()
            out.append(rel)
        return out
    total, count = 0.0, 0
    for ps, pt in zip(relation(s, 2), relation(t, 2)):
        for i in (1, 2, 3):
            p, q = pt[i, : i + 1], ps[i, : i + 1]
            total += float((p * np.log(p / q)).sum())
            count += 1
    assert kf.value_relation_loss(s, t, mask, rows, heads=2).item() == pytest.approx(total / count, rel=1e-4)


# ---------------------------------------------------------------- training through `seqdistill sft`


def build_llama(tokenizer, path, layers, hidden, heads, seed, init=0.02):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, head_dim=32, max_position_embeddings=512,
        initializer_range=init, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def pair(smollm2_path, tmp_path_factory):
    """A 2-layer student (hidden 64, 2 heads) and a 4-layer teacher (hidden 96, 3 heads), SmolLM2's tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    root = tmp_path_factory.mktemp("kd-features")
    student = build_llama(tokenizer, root / "student", layers=2, hidden=64, heads=2, seed=0)
    # larger initial weights: peaked attention and spread-out states, so there is something to distil
    teacher = build_llama(tokenizer, root / "teacher", layers=4, hidden=96, heads=3, seed=1, init=0.2)
    rows = [{"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                          {"role": "assistant", "content": f"{a} plus {b} makes {a + b}, so the answer is {a + b}."}],
             "problem_id": f"p{a}"} for a, b in zip(range(8), range(3, 11))]
    import datasets

    data = root / "train.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(data))
    return student, teacher, str(data)


def train(pair, out, *overrides, callbacks=None):
    from seqdistill import config as configlib
    from seqdistill import sft
    from seqdistill.sft import SFTStageConfig

    student, teacher, data = pair
    cfg = configlib.load(SFTStageConfig, None, [
        f"student={student}", f"dataset={data}", f"output_dir={out}", "method=full", "learning_rate=5e-3",
        "max_steps=6", "per_device_train_batch_size=4", "report_to=[none]", "max_length=128", "logging_steps=1",
        "warmup_steps=0", "lr_scheduler_type=constant", "kd.mode=online", f"kd.teacher={teacher}", "kd.alpha=0",
        *overrides])
    return sft.run(cfg, callbacks=callbacks)


def curve(result, key):
    return [entry[key] for entry in result.trainer.state.log_history if key in entry]


class Grads:
    """Records, at the first optimizer step, which optimizer parameters hold a non-zero gradient."""

    def __init__(self):
        from transformers import TrainerCallback

        self.seen = None
        outer = self

        class Callback(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
                if outer.seen is None:
                    outer.seen = {id(p): p.grad is not None and bool(p.grad.abs().sum() > 0)
                                  for group in optimizer.param_groups for p in group["params"]}
        self.callback = Callback()


@pytest.mark.parametrize("name, overrides", [
    ("attention", ["kd.attention.weight=10"]),
    ("relations", ["kd.relations.weight=100", "kd.relations.kind=distance", "learning_rate=1e-3"]),
    ("relations", ["kd.relations.weight=100", "kd.relations.kind=attention_relation", "kd.divergence=skew_kl"]),
    ("hidden_states", ["method=lora", "kd.hidden_states.weight=10", "kd.hidden_states.loss=cosine",
                       "kd.hidden_states.layers=[[0,0],[2,4]]"]),
    ("relations", ["method=lora", "kd.relations.weight=100", "kd.relations.kind=angle", "kd.relations.max_tokens=8",
                   "learning_rate=1e-3"]),
], ids=["attention", "distance", "value-relation", "lora-cosine", "lora-angle"])
def test_each_term_trains(pair, tmp_path, name, overrides):
    result = train(pair, tmp_path / "out", "learning_rate=2e-2", "gradient_checkpointing=false", *overrides)
    values = curve(result, f"{name}_loss")
    assert len(values) == 6 and values[-1] < 0.9 * values[0], values


def test_hidden_states_train_with_projections_and_the_student_reloads_without_them(pair, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    grads = Grads()
    teacher_before = load_file(f"{pair[1]}/model.safetensors")
    result = train(pair, tmp_path / "a", "learning_rate=2e-2", "kd.hidden_states.weight=10", "save_steps=3",
                   callbacks=[grads.callback])
    values = curve(result, "hidden_states_loss")
    assert len(values) == 6 and values[-1] < 0.9 * values[0], values
    trainer = result.trainer
    # gradients reach the student and the projections (both in the optimizer), never the teacher
    projections = list(trainer.kd_projections.parameters())
    assert len(projections) == 2 and all(grads.seen[id(p)] for p in projections)
    assert any(grads.seen[id(p)] for p in trainer.model.parameters())
    assert all(p.grad is None and not p.requires_grad for p in trainer.teacher_model.parameters())
    teacher_after = trainer.teacher_model.state_dict()
    assert all(torch.equal(teacher_before[k], teacher_after[k]) for k in teacher_before)
    # the projections are saved beside the student, not in it; the student reloads and generates on its own
    model_dir = tmp_path / "a" / "model"
    saved = load_file(str(model_dir / kf.PROJECTIONS))
    assert sorted(saved) == ["student1_teacher2.weight", "student2_teacher4.weight"]
    assert saved["student2_teacher4.weight"].shape == (96, 64)
    assert torch.equal(saved["student1_teacher2.weight"], trainer.kd_projections["student1_teacher2"].weight.detach().cpu())
    assert not any("teacher" in k for k in load_file(str(model_dir / "model.safetensors")))
    student = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer("What is 2 plus 3?", return_tensors="pt")
    out = student.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4
    assert any("hidden_states_loss" in entry for entry in result.metrics["log_history"])
    assert "+ 10 * hidden_states (mse, normalized, layers auto)" in (model_dir / "README.md").read_text()
    # each checkpoint holds them too, and --resume puts them back
    halfway = tmp_path / "a" / "checkpoints" / "checkpoint-3" / kf.PROJECTIONS
    assert not torch.equal(load_file(str(halfway))["student1_teacher2.weight"], saved["student1_teacher2.weight"])
    trainer._load_from_checkpoint(str(halfway.parent))
    assert torch.equal(trainer.kd_projections["student1_teacher2"].weight.detach().cpu(),
                       load_file(str(halfway))["student1_teacher2.weight"])


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("overrides, message", [
    (["kd.mode=offline", "kd.hidden_states.weight=1"], "kd.hidden_states needs the teacher loaded beside the student.*set kd.mode online"),
    (["kd.attention.weight=-1"], r"kd.attention.weight must be >= 0"),
    (["kd.hidden_states.loss=l1"], "kd.hidden_states.loss must be one of mse, cosine"),
    (["kd.hidden_states.layers=[[1, 2, 3]]"], r"kd.hidden_states.layers must be auto or a list of \[student_layer"),
    (["kd.attention.layers=[[0, 1]]"], "integers >= 1"),
    (["kd.relations.kind=triangle"], "kd.relations.kind must be one of distance, angle, attention_relation"),
    (["kd.attention.weight=1", "attn_implementation=sdpa"], "kd.attention needs attention weights.*set it to eager"),
    (["kd.mode=offline", "kd.on_policy.fraction=0.5"], "kd.on_policy needs the teacher loaded beside the student"),
    (["kd.on_policy.fraction=1.5"], r"kd.on_policy.fraction must be in \[0, 1\]"),
])
def test_bad_settings_are_refused_when_the_config_is_read(overrides, message, pair):
    from seqdistill import config as configlib
    from seqdistill.config import ConfigError
    from seqdistill.sft import SFTStageConfig

    with pytest.raises(ConfigError, match=message):
        configlib.load(SFTStageConfig, None, [f"student={pair[0]}", "kd.mode=online", f"kd.teacher={pair[1]}", *overrides])


@pytest.mark.parametrize("overrides, message", [
    (["kd.hidden_states.weight=1", "kd.hidden_states.layers=[[2, 5]]"],
     r"kd.hidden_states.layers pair \[2, 5\] is outside the models: the student has layers 0..2, the teacher 0..4"),
    (["kd.attention.weight=1", "kd.attention.layers=[[3, 1]]"], r"pair \[3, 1\] is outside"),
    (["kd.attention.weight=1", "kd.attention.max_length=16"],
     r"O\(T\^2\) memory.*T=\d+ > kd.attention.max_length 16: lower max_length or raise kd.attention.max_length"),
    (["kd.relations.weight=1", "kd.relations.kind=attention_relation", "kd.relations.heads=5"],
     "kd.relations.heads 5 does not divide the student's value size 64"),
    (["kd.on_policy.fraction=0.5", "assistant_only_loss=false"], "kd.on_policy .* set assistant_only_loss true"),
    (["kd.relations.weight=1", "kd.relations.kind=attention_relation", "kd.relations.max_length=16"],
     r"T=\d+ > kd.relations.max_length 16: lower max_length or raise kd.relations.max_length"),
])
def test_bad_layers_and_lengths_are_refused_before_the_models_load(overrides, message, pair, tmp_path):
    from seqdistill.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        train(pair, tmp_path / "out", *overrides)
    assert not (tmp_path / "out" / "model").exists() and not (tmp_path / "out" / "checkpoints").exists()


# ---------------------------------------------------------------- on-policy


def test_on_policy_batches_train_on_the_students_own_samples(pair, tmp_path, monkeypatch):
    from seqdistill.training import kd_trainer

    seen = []
    sample = kd_trainer.KDTrainer.sample_completions

    def spy(self, model, inputs):
        out = sample(self, model, inputs)
        seen.append((inputs, out))
        return out

    monkeypatch.setattr(kd_trainer.KDTrainer, "sample_completions", spy)
    result = train(pair, tmp_path / "op", "kd.on_policy.fraction=0.5", "kd.on_policy.max_new_tokens=6",
                   "kd.alpha=0.5", "gradient_checkpointing=false")
    share = curve(result, "on_policy")
    assert len(share) == 6 and 0 < sum(share) < 6 and len(seen) == sum(share)  # seeded: some batches, not all
    losses = curve(result, "kd_loss")
    assert all(np.isfinite(losses))
    for batch, out in seen:
        starts = [int((row != -100).nonzero()[0]) for row in batch["labels"]]  # prompt lengths
        width = max(starts)
        for b, start in enumerate(starts):  # each prompt, left-padded, then only sampled tokens are trained on
            assert torch.equal(out["input_ids"][b, width - start : width], batch["input_ids"][b, :start])
        assert (out["labels"][:, :width] == -100).all()
        assert 0 < (out["labels"] != -100).sum(1).min() and (out["labels"] != -100).sum(1).max() <= 6
        assert out["input_ids"].shape[1] <= width + 6
        assert (out["position_ids"][:, width - 1] == torch.tensor(starts) - 1).all()
