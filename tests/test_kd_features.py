"""KD beyond logits: skew KL, hidden-state, attention and relation losses against direct computations
on small tensors, and each term training through the real `seqdistill sft` path on tiny models."""

import numpy as np
import pytest
import torch

from seqdistill import kd

# ---------------------------------------------------------------- skew KL


def log_probs(seed, n=5, v=11):
    return torch.log_softmax(torch.randn(n, v, generator=torch.Generator().manual_seed(seed)) * 3, -1)


def test_skew_kl_is_kl_at_zero_skew():
    t, s = log_probs(0), log_probs(1)
    assert torch.allclose(kd.divergence(t, s, "skew_kl", skew_alpha=0.0), kd.divergence(t, s, "forward_kl"))
    assert torch.allclose(kd.divergence(t, s, "skew_reverse_kl", skew_alpha=0.0), kd.divergence(t, s, "reverse_kl"))


def test_skew_kl_matches_its_formula():
    t, s = log_probs(2), log_probs(3)
    p, q, a = t.exp().double(), s.exp().double(), 0.1
    skew = (p * (p / (a * p + (1 - a) * q)).log()).sum(-1)  # KL(p || a p + (1 - a) q)
    skew_reverse = (q * (q / (a * q + (1 - a) * p)).log()).sum(-1)  # KL(q || a q + (1 - a) p)
    assert torch.allclose(kd.divergence(t, s, "skew_kl", skew_alpha=a).double(), skew, atol=1e-5)
    assert torch.allclose(kd.divergence(t, s, "skew_reverse_kl", skew_alpha=a).double(), skew_reverse, atol=1e-5)
    # KL is convex in its second argument: KL(p || a p + (1 - a) q) <= (1 - a) KL(p || q)
    assert (kd.divergence(t, s, "skew_kl", skew_alpha=a) <= (1 - a) * kd.divergence(t, s, "forward_kl") + 1e-6).all()


def test_skew_kl_on_the_topk_path_equals_the_full_computation_when_k_is_the_vocabulary():
    student, teacher = torch.randn(5, 11) * 3, torch.randn(5, 11) * 3
    teacher_logp = torch.log_softmax(teacher, -1)
    ids = teacher_logp.argsort(-1, descending=True)
    t, s = kd.topk_buckets(student, ids, teacher_logp.gather(-1, ids), 1.0)
    full_t, full_s = kd.full_distributions(student, teacher, 1.0)
    for kind in ("skew_kl", "skew_reverse_kl"):
        assert torch.allclose(kd.divergence(t, s, kind), kd.divergence(full_t, full_s, kind), atol=1e-5)


def test_skew_alpha_is_validated():
    assert kd.KDConfig(divergence="skew_kl", skew_alpha=0.1).validate() == []
    assert any("skew_alpha must be in [0, 1)" in e for e in kd.KDConfig(skew_alpha=1.0).validate())
