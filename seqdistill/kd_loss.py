"""The logit KD loss: divergences between teacher and student over top-k buckets or full distributions.

Per trained (assistant) token:  alpha * CE + (1 - alpha) * T^2 * D(teacher_T || student_T),
D = forward KL, reverse KL, the generalized Jensen-Shannon divergence (beta), or DistiLLM's skew KL
KL(p || a p + (1 - a) q) / skew reverse KL KL(q || a q + (1 - a) p) (p teacher, q student, a = skew_alpha),
which stay finite where the student puts almost no mass and equal KL / reverse KL at a = 0. Offline, D is taken
over k + 1 buckets: the teacher's top-k tokens and one "rest" bucket holding all other mass (for the
teacher 1 - sum of its top-k probabilities, for the student the exact mass it puts outside those k
tokens). This is exact when the teacher's mass is all in its top-k, and otherwise a lower bound of
D over the full vocabulary (coarse-graining cannot raise a divergence). With T != 1 the rest bucket
is tempered as if it were one token. The trainer that adds it to SFT is seqdistill.kd_trainer.

Across tokenizers (seqdistill.xtok aligns the positions) the two vocabularies share no index, so the
loss is Universal Logit Distillation (Boizard et al. 2024): sort both probability vectors descending,
pad the shorter with zeros, sum |p_s - p_t| (the closed form ULD takes for the Wasserstein distance). It
compares the shapes of the distributions, not which token gets what mass, so it is a different loss
from the KL above, not a variant of it: it is 0 for any student whose sorted probabilities are the
teacher's, whatever tokens carry them (the cross-entropy on the trace supplies which), and at most 2.
It enters as (1 - alpha) * ULD, with no T^2 factor (that factor restores the gradient scale of a
tempered KL, which an L1 of probabilities does not share).
"""

from __future__ import annotations

import numpy as np


def divergence(teacher, student, kind: str, beta: float = 0.5, skew_alpha: float = 0.1):
    """Per-row divergence between two (N, C) log-probability tensors (finite values)."""
    if kind == "forward_kl":
        return kl(teacher, student)
    if kind == "reverse_kl":
        return kl(student, teacher)
    if kind == "skew_kl":  # KL(p || a p + (1 - a) q)
        return kl(teacher, log_mixture(teacher, student, skew_alpha))
    if kind == "skew_reverse_kl":  # KL(q || a q + (1 - a) p)
        return kl(student, log_mixture(student, teacher, skew_alpha))
    mix = log_mixture(teacher, student, beta)
    return beta * kl(teacher, mix) + (1 - beta) * kl(student, mix)


def kl(p, q):
    """Per-row KL(p || q) of two log-probability tensors."""
    return (p.exp() * (p - q)).sum(-1)


def log_mixture(p, q, weight: float):
    """log(weight * e^p + (1 - weight) * e^q), exact at weight 0."""
    import torch

    if weight == 0:
        return q
    return torch.logsumexp(torch.stack([p + np.log(weight), q + np.log(1 - weight)]), 0)


def topk_buckets(student_logits, teacher_ids, teacher_logprobs, temperature: float):
    """(N, k+1) log-probs of teacher and student over the teacher's top-k tokens plus a rest bucket."""
    import torch

    tiny = np.log(1e-20)
    student = torch.log_softmax(student_logits.float() / temperature, -1)
    s_top = student.gather(-1, teacher_ids)
    s_rest = student.scatter(-1, teacher_ids, float("-inf")).logsumexp(-1, keepdim=True).clamp(min=tiny)
    return teacher_with_rest(teacher_logprobs, temperature), torch.cat([s_top, s_rest], -1)


def teacher_with_rest(teacher_logprobs, temperature: float):
    """(N, k+1) tempered log-probs of the teacher's top-k tokens and one bucket for the rest of its mass."""
    import torch

    rest = 1 - teacher_logprobs.float().exp().sum(-1, keepdim=True)
    t_rest = torch.log(torch.where(rest > 1e-5, rest, 1e-20))  # below 1e-5 it is float rounding: no rest
    return torch.log_softmax(torch.cat([teacher_logprobs.float(), t_rest], -1) / temperature, -1)


def uld(teacher_probs, student_probs):
    """Per-row ULD distance between (N, Vt) and (N, Vs) probability vectors over different vocabularies:
    both sorted descending, the shorter padded with zeros, L1. The teacher is detached: gradients reach only the student.
    Full-vocabulary ULD: the reference `uld_topk` (what training uses, on stored top-k) is tested against."""
    import torch

    t = teacher_probs.detach().float().sort(-1, descending=True).values
    s = student_probs.float().sort(-1, descending=True).values
    width = max(t.shape[-1], s.shape[-1])
    t, s = (torch.nn.functional.pad(x, (0, width - x.shape[-1])) for x in (t, s))
    return (s - t).abs().sum(-1)


def uld_topk(student_logits, teacher_logprobs, temperature: float):
    """Per-row ULD distance between the student's full distribution and the teacher's stored top-k.

    The teacher's vector is its k probabilities sorted, then the rest of its mass as one bucket (tempered as in
    topk_buckets); the student's is its own k largest probabilities, then the rest of its mass. Over these k + 1
    entries the L1 is a lower bound of ULD over the full vocabularies (the tail ranks' |p_s - p_t| sum to at least
    |s_rest - t_rest|), exact when the teacher's mass is all in its top-k. The student's top-k are its own largest
    tokens, not the teacher's ids, which name tokens of another vocabulary."""
    import torch

    teacher = teacher_with_rest(teacher_logprobs.detach(), temperature).exp()
    t_top = teacher[:, :-1].sort(-1, descending=True).values
    student = torch.softmax(student_logits.float() / temperature, -1)
    k = t_top.shape[-1]
    s_top = student.topk(min(k, student.shape[-1]), -1).values
    s_top = torch.nn.functional.pad(s_top, (0, k - s_top.shape[-1]))
    s_rest = (1 - s_top.sum(-1)).clamp(min=0)
    return (s_top - t_top).abs().sum(-1) + (s_rest - teacher[:, -1]).abs()


def full_distributions(student_logits, teacher_logits, temperature: float):
    """(N, V) tempered log-probs of both, over the vocabulary they share (padding rows sliced off)."""
    import torch

    v = min(student_logits.shape[-1], teacher_logits.shape[-1])
    return (torch.log_softmax(teacher_logits[..., :v].float() / temperature, -1),
            torch.log_softmax(student_logits[..., :v].float() / temperature, -1))
