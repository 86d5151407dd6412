"""The logit KD loss: divergences between teacher and student over top-k buckets or full distributions.

Per trained (assistant) token:  alpha * CE + (1 - alpha) * T^2 * D(teacher_T || student_T),
D = forward KL, reverse KL, the generalized Jensen-Shannon divergence (beta), or DistiLLM's skew KL
KL(p || a p + (1 - a) q) / skew reverse KL KL(q || a q + (1 - a) p) (p teacher, q student, a = skew_alpha),
which stay finite where the student puts almost no mass and equal KL / reverse KL at a = 0. Offline, D is taken
over k + 1 buckets: the teacher's top-k tokens and one "rest" bucket holding all other mass (for the
teacher 1 - sum of its top-k probabilities, for the student the exact mass it puts outside those k
tokens). This is exact when the teacher's mass is all in its top-k, and otherwise a lower bound of
D over the full vocabulary (coarse-graining cannot raise a divergence). With T != 1 the rest bucket
is tempered as if it were one token. The trainer that adds it to SFT is seqdistill.training.kd_trainer.

Across tokenizers (seqdistill.training.xtok aligns the positions) the two vocabularies share no index, so the
loss is Universal Logit Distillation (Boizard et al. 2024): sort both probability vectors descending,
pad the shorter with zeros, sum |p_s - p_t| (the closed form ULD takes for the Wasserstein distance). It
compares the shapes of the distributions, not which token gets what mass, so it is a different loss
from the KL above, not a variant of it: it is 0 for any student whose sorted probabilities are the
teacher's, whatever tokens carry them (the cross-entropy on the trace supplies which), and at most 2.
It enters as (1 - alpha) * ULD, with no T^2 factor (that factor restores the gradient scale of a
tempered KL, which an L1 of probabilities does not share).

GOLD's hybrid (TRL's GOLDTrainer with uld_use_hybrid_loss) splits the two vocabularies: tokens that decode to
the same bytes on both sides (seqdistill.training.xtok.id_map) are compared one to one, the rest by shape. Over the
teacher's stored top-k, per aligned token:  hybrid = T^2 * D(matched buckets) + ULD(unmatched).
  matched buckets: the teacher's top-k tokens that have a student twin, each against that twin's student
    probability, plus one bucket each side for all other mass (D is kd.divergence; with one tokenizer every
    top-k token is matched and this is exactly the k + 1 bucket divergence above);
  unmatched: what that bucket holds, by shape: the teacher's u unmatched top-k probabilities sorted, then
    its mass outside the top-k, against the student's u largest probabilities off the matched tokens, then
    the rest of its mass off them (ULD as above; with nothing matched it is uld_topk).
What storing only the top-k loses: the teacher's mass outside its top-k is one bucket, so a shared token
outside the top-k is not compared one to one (its mass sits in the bucket), and both parts are lower bounds
of the same terms over the full vocabularies (coarse-graining lowers a divergence; the L1 of k + 1 sorted
entries is at most the full one), exact when the teacher's mass is all in its top-k.
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

    student = torch.log_softmax(student_logits.float() / temperature, -1)
    unmatched = torch.full(teacher_logprobs.shape, -1, dtype=torch.long, device=student.device)
    return unmatched_uld(twins(student, unmatched), teacher_logprobs, temperature)


def hybrid_topk(student_logits, student_ids, teacher_logprobs, temperature: float, kind: str = "forward_kl",
                beta: float = 0.5, skew_alpha: float = 0.1):
    """Per-row GOLD hybrid (module docstring): T^2 * D over the matched buckets + ULD over the unmatched rest.

    student_ids: (N, k) the student id of each of the teacher's top-k tokens (-1: no student token has its bytes)."""
    import torch

    student = torch.log_softmax(student_logits.float() / temperature, -1)
    twin = twins(student, student_ids)  # once: it copies the (N, V) log-probs
    t, s = matched_buckets(twin, teacher_logprobs, temperature)
    matched = divergence(t, s, kind, beta, skew_alpha)
    return temperature**2 * matched + unmatched_uld(twin, teacher_logprobs, temperature)


def twins(student, student_ids):
    """Which of the teacher's top-k have a student twin, and an index into the student's log-probs padded with one
    -inf column (where the others point, so gather and scatter stay one tensor op)."""
    import torch

    width = student.shape[-1]
    matched = (student_ids >= 0) & (student_ids < width)
    padded = torch.nn.functional.pad(student, (0, 1), value=float("-inf"))
    return matched, padded, torch.where(matched, student_ids, width)


def matched_buckets(twin, teacher_logprobs, temperature: float):
    """(N, k+1) log-probs of teacher and student: each matched top-k token, then one bucket for all other mass.

    `twin`: twins() of the student's tempered log-probs. Unmatched columns hold the same tiny value on both sides,
    so they add nothing to any divergence and carry no gradient."""
    import torch

    tiny = np.log(1e-20)
    matched, padded, index = twin
    teacher = teacher_with_rest(teacher_logprobs.detach(), temperature)
    t_top = torch.where(matched, teacher[:, :-1], tiny)
    t_rest = torch.cat([teacher[:, -1:], teacher[:, :-1].masked_fill(matched, float("-inf"))], -1).logsumexp(-1, keepdim=True)
    s_top = torch.where(matched, padded.gather(-1, index), tiny)
    s_rest = padded.scatter(-1, index, float("-inf")).logsumexp(-1, keepdim=True).clamp(min=tiny)
    return torch.cat([t_top, t_rest], -1), torch.cat([s_top, s_rest], -1)


def unmatched_uld(twin, teacher_logprobs, temperature: float):
    """Per-row ULD over what the matched buckets leave in their rest bucket (module docstring): the teacher's u
    unmatched top-k sorted + its mass outside the top-k, against the student's u largest probabilities off the
    matched tokens + the rest of its mass off them. `twin`: twins() of the student's tempered log-probs."""
    import torch

    matched, padded, index = twin
    teacher = teacher_with_rest(teacher_logprobs.detach(), temperature).exp()
    t_top = teacher[:, :-1].masked_fill(matched, 0).sort(-1, descending=True).values
    others = padded.exp().scatter(-1, index, 0.0)  # the student's probabilities off the matched tokens
    k = t_top.shape[-1]
    s_top = others.topk(min(k, others.shape[-1]), -1).values
    s_top = torch.nn.functional.pad(s_top, (0, k - s_top.shape[-1]))
    kept = torch.arange(k, device=s_top.device) < (~matched).sum(-1, keepdim=True)  # u of them
    s_top = torch.where(kept, s_top, 0.0)
    s_rest = (others.sum(-1) - s_top.sum(-1)).clamp(min=0)
    return (s_top - t_top).abs().sum(-1) + (s_rest - teacher[:, -1]).abs()


def full_distributions(student_logits, teacher_logits, temperature: float):
    """(N, V) tempered log-probs of both, over the vocabulary they share (padding rows sliced off)."""
    import torch

    v = min(student_logits.shape[-1], teacher_logits.shape[-1])
    return (torch.log_softmax(teacher_logits[..., :v].float() / temperature, -1),
            torch.log_softmax(student_logits[..., :v].float() / temperature, -1))
