"""Feature and relation distillation losses (online teacher): hidden states, attention, token relations.

Imported only by seqdistill.training.kd_trainer (it imports torch). Every function takes the two models' outputs
for one batch and `rows`, the (B, T) mask of assistant tokens (labels != -100), and returns one scalar:
a mean over those tokens (and layers, heads or sequences), so a term's size does not grow with the batch.

- hidden states: MSE (optionally on standardised vectors) or 1 - cosine between the student's layer,
  through a learned linear projection when hidden sizes differ (FitNets, DistillKit), and the teacher's.
- attention (MiniLM): KL(teacher || student) between self-attention rows. Equal head counts compare
  head by head; otherwise each model's heads are averaged first (an average of distributions is one).
- relations (RKD): pairwise distances (normalised by their mean) or angles between a sequence's tokens
  in the last hidden state, Huber loss; attention_relation (MiniLMv2): the last block's value vectors
  split into R relation heads, softmax(V V^T / sqrt(d)) rows compared by KL, causal as the model is.
  Relations need no projection: they compare N x N matrices, whatever the hidden sizes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PROJECTIONS = "kd_projections.safetensors"  # beside the saved student, never merged into it


def projections(pairs: list[tuple[int, int]], student_size: int, teacher_size: int) -> torch.nn.ModuleDict | None:
    """One learned student -> teacher linear map per mapped layer, or None when the sizes agree."""
    if student_size == teacher_size:
        return None
    return torch.nn.ModuleDict({projection_key(s, t): torch.nn.Linear(student_size, teacher_size, bias=False)
                                for s, t in pairs})


def projection_key(student_layer: int, teacher_layer: int) -> str:
    return f"student{student_layer}_teacher{teacher_layer}"


def hidden_loss(student, teacher, kind: str, normalize: bool, projection=None):
    """Mean over rows of the loss between (N, Ds) student and (N, Dt) teacher hidden states."""
    s, t = student.float(), teacher.float()
    if projection is not None:
        s = projection(s)
    if kind == "cosine":
        return (1 - F.cosine_similarity(s, t, dim=-1)).mean()
    if normalize:
        s, t = F.layer_norm(s, s.shape[-1:]), F.layer_norm(t, t.shape[-1:])
    return ((s - t) ** 2).mean()


def hidden_states_loss(student_states, teacher_states, pairs, rows, kind: str, normalize: bool, projections=None):
    """Mean over mapped (student, teacher) layers of hidden_loss on the assistant tokens."""
    losses = [hidden_loss(student_states[s][rows], teacher_states[t][rows], kind, normalize,
                          projections[projection_key(s, t)] if projections is not None else None)
              for s, t in pairs]
    return torch.stack(losses).mean()


def attention_kl(student, teacher, rows):
    """KL(teacher || student) between (B, H, T, T) attention weights at the query positions `rows`, mean over heads."""
    if student.shape[1] != teacher.shape[1]:
        student, teacher = student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)
    s, t = student.float().transpose(1, 2)[rows], teacher.float().transpose(1, 2)[rows]  # (N, H, T)
    return (torch.special.xlogy(t, t) - t * s.clamp(min=1e-12).log()).sum(-1).mean()


def attention_loss(student_attentions, teacher_attentions, pairs, rows):
    """Mean over mapped (student, teacher) blocks (1..L) of attention_kl."""
    return torch.stack([attention_kl(student_attentions[s - 1], teacher_attentions[t - 1], rows) for s, t in pairs]).mean()


def spread(n: int, most: int, device=None):
    """At most `most` indices evenly spaced over 0..n-1 (all of them when n <= most)."""
    if n <= most:
        return torch.arange(n, device=device)
    return torch.linspace(0, n - 1, most, device=device).round().long()


def rkd_distance(student, teacher):
    """RKD distance loss between (N, Ds) and (N, Dt) token representations."""
    def normalised(x):
        d = torch.cdist(x.float(), x.float())
        off = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
        return d / d[off].mean().clamp(min=1e-12)
    return F.smooth_l1_loss(normalised(student), normalised(teacher))


def rkd_angle(student, teacher):
    """RKD angle loss: cosines of the angle at token j between tokens i and k, for all (i, j, k)."""
    def angles(x):
        e = F.normalize(x.float()[None] - x.float()[:, None], p=2, dim=-1)  # e[j, i] = unit(x_i - x_j)
        return torch.bmm(e, e.transpose(1, 2))  # [j, i, k] = cos of the angle x_i, x_j, x_k
    return F.smooth_l1_loss(angles(student), angles(teacher))


def relation_loss(student_last, teacher_last, rows, kind: str, max_tokens: int):
    """Mean over sequences of the RKD loss between the last hidden states of their assistant tokens."""
    rkd = rkd_distance if kind == "distance" else rkd_angle
    losses = []
    for b in range(rows.shape[0]):
        idx = rows[b].nonzero().squeeze(-1)
        if len(idx) < 3:
            continue
        idx = idx[spread(len(idx), max_tokens, idx.device)]
        losses.append(rkd(student_last[b, idx], teacher_last[b, idx]))
    return torch.stack(losses).mean() if losses else student_last.sum() * 0


def value_relations(values, attention_mask, heads: int):
    """(B, T, D) values -> (B, R, T, T) log of softmax(V_r V_r^T / sqrt(D/R)) over each query's visible keys."""
    b, n, d = values.shape
    v = values.float().view(b, n, heads, d // heads).transpose(1, 2)  # (B, R, T, d)
    scores = v @ v.transpose(-1, -2) / math.sqrt(d // heads)
    visible = torch.ones(n, n, dtype=torch.bool, device=v.device).tril()[None, None] & attention_mask.bool()[:, None, None]
    return torch.log_softmax(scores.masked_fill(~visible, -1e9), -1)  # finite: masked keys get probability 0


def value_relation_loss(student_values, teacher_values, attention_mask, rows, heads: int):
    """MiniLMv2 value relation: KL(teacher || student) of the value-relation rows at the assistant queries."""
    s = value_relations(student_values, attention_mask, heads).transpose(1, 2)[rows]  # (N, R, T)
    t = value_relations(teacher_values, attention_mask, heads).transpose(1, 2)[rows]
    return (t.exp() * (t - s)).sum(-1).mean()
