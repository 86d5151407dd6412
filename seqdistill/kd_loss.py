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
    rest = 1 - teacher_logprobs.float().exp().sum(-1, keepdim=True)
    t_rest = torch.log(torch.where(rest > 1e-5, rest, 1e-20))  # below 1e-5 it is float rounding: no rest
    teacher = torch.log_softmax(torch.cat([teacher_logprobs.float(), t_rest], -1) / temperature, -1)
    return teacher, torch.cat([s_top, s_rest], -1)


def full_distributions(student_logits, teacher_logits, temperature: float):
    """(N, V) tempered log-probs of both, over the vocabulary they share (padding rows sliced off)."""
    import torch

    v = min(student_logits.shape[-1], teacher_logits.shape[-1])
    return (torch.log_softmax(teacher_logits[..., :v].float() / temperature, -1),
            torch.log_softmax(student_logits[..., :v].float() / temperature, -1))
