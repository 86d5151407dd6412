"""Logit-level knowledge distillation: the teacher's top-k log-probs, stored compactly, and the KD loss.

Offline (the default): `generate` with `teacher_logprobs: true` records, in the same vLLM pass that
samples each trace, the teacher's top-k log-probs for every generated token (`seqdistill score` does
the same for traces from elsewhere, with vLLM prompt log-probs). `sft` with `kd.mode: offline` then
trains on them; `kd.mode: online` loads the teacher beside the student and uses its full
distribution at every step.

Loss, per trained (assistant) token:  alpha * CE + (1 - alpha) * T^2 * D(teacher_T || student_T),
D = forward KL, reverse KL, the generalized Jensen-Shannon divergence (beta), or DistiLLM's skew KL
KL(p || a p + (1 - a) q) / skew reverse KL KL(q || a q + (1 - a) p) (p teacher, q student, a = skew_alpha),
which stay finite where the student puts almost no mass and equal KL / reverse KL at a = 0. Offline, D is taken
over k + 1 buckets: the teacher's top-k tokens and one "rest" bucket holding all other mass (for the
teacher 1 - sum of its top-k probabilities, for the student the exact mass it puts outside those k
tokens). This is exact when the teacher's mass is all in its top-k, and otherwise a lower bound of
D over the full vocabulary (coarse-graining cannot raise a divergence). With T != 1 the rest bucket
is tempered as if it were one token.

Storage, per sample, one bytes value: a 20-byte header (n tokens, k, id bits, log-prob bits, number
of sampled tokens outside the top-k), the top-k ids at ceil(log2(vocab)) bits, the log-probs
quantised uniformly on [LOGPROB_FLOOR, 0] (8 bits; 7 when ids need 18 bits, so a pair fits in 25
bits), the rank of the sampled token in the top-k (k meaning "not in it"), and the sampled ids that
fell outside, as uint32. k=20 on a 49,152-token vocabulary: 60.6 bytes/token; on 262,144: 63.1.

Beyond logits (online teacher only; losses in seqdistill.kd_features), each added as weight * term:
hidden states (kd.hidden_states), self-attention distributions (kd.attention) and relations between
a sequence's tokens (kd.relations). Layers are numbered as `output_hidden_states` counts them:
0 the embeddings (hidden states only), 1..L the outputs of transformer blocks 1..L. With kd.on_policy
the student samples the completions of a share of the batches itself (GKD) and learns from the
teacher's distributions on them (seqdistill.kd_trainer).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

LOGPROB_FLOOR = -20.0  # log-probs below are stored as this (probability < 2.1e-9)
HEADER = struct.Struct("<5I")
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl")
MODES = ("none", "offline", "online")
HIDDEN_LOSSES = ("mse", "cosine")
RELATIONS = ("distance", "angle", "attention_relation")
KD_COLUMNS = ["teacher_topk", "kd_offset"]  # what the KD trainer's dataset carries beside TRL's columns


@dataclass
class HiddenStatesKD:
    weight: float = 0.0  # > 0 adds weight * mean over mapped layers and assistant tokens of the hidden-state loss
    layers: str | list[list[int]] = "auto"  # auto (student blocks spread evenly over the teacher's, last onto last) | [[student, teacher], ...]
    loss: str = "mse"  # mse | cosine (1 - cosine similarity); other hidden sizes go through a learned projection per pair
    normalize: bool = True  # mse only: standardise each token's vector (layer norm without weights) before comparing

    def validate(self) -> list[str]:
        errors = check_weight(self.weight) + check_layer_spec(self.layers, first=0)
        if self.loss not in HIDDEN_LOSSES:
            errors.append(f"loss must be one of {', '.join(HIDDEN_LOSSES)}, got {self.loss!r}")
        return errors


@dataclass
class AttentionKD:
    weight: float = 0.0  # > 0 adds weight * KL(teacher || student) of self-attention rows (MiniLM), assistant queries
    layers: str | list[list[int]] = "auto"  # auto | [[student_block, teacher_block], ...] (blocks 1..L); other head counts: heads averaged
    max_length: int = 1024  # longest sequence allowed: eager attention keeps batch x heads x T x T per layer (O(T^2) memory)

    def validate(self) -> list[str]:
        errors = check_weight(self.weight) + check_layer_spec(self.layers, first=1)
        if self.max_length < 1:
            errors.append(f"max_length must be at least 1, got {self.max_length}")
        return errors


@dataclass
class RelationsKD:
    weight: float = 0.0  # > 0 adds weight * relation loss per sequence (last hidden state, assistant tokens)
    kind: str = "distance"  # distance | angle (RKD, Huber loss) | attention_relation (MiniLMv2 value relation, last block)
    max_tokens: int = 64  # tokens per sequence, evenly spaced: distance O(N^2), angle O(N^3) memory
    heads: int = 4  # attention_relation only: relation heads; must divide both models' value sizes (kv heads x head dim)
    max_length: int = 1024  # attention_relation only: longest sequence allowed (batch x heads x T^2 memory)

    def validate(self) -> list[str]:
        errors = check_weight(self.weight)
        if self.kind not in RELATIONS:
            errors.append(f"kind must be one of {', '.join(RELATIONS)}, got {self.kind!r}")
        if self.max_tokens < 3:
            errors.append(f"max_tokens must be at least 3, got {self.max_tokens}")
        if self.heads < 1:
            errors.append(f"heads must be at least 1, got {self.heads}")
        if self.max_length < 1:
            errors.append(f"max_length must be at least 1, got {self.max_length}")
        return errors


@dataclass
class OnPolicyKD:
    fraction: float = 0.0  # share of training batches whose completions the student samples itself (GKD's lambda); 0 = off
    max_new_tokens: int = 256  # longest completion the student samples (with the training model's own generate)
    temperature: float = 1.0  # sampling temperature of those completions

    def validate(self) -> list[str]:
        errors = []
        if not 0 <= self.fraction <= 1:
            errors.append(f"fraction must be in [0, 1], got {self.fraction}")
        if self.max_new_tokens < 1:
            errors.append(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            errors.append(f"temperature must be > 0, got {self.temperature}")
        return errors


@dataclass
class KDConfig:
    mode: str = "none"  # none | offline (top-k log-probs stored by generate/score) | online (teacher loaded in training)
    alpha: float = 0.5  # weight of the cross-entropy on the teacher's tokens; 1 - alpha goes to the KD term
    temperature: float = 1.0  # softens both distributions; the KD term is scaled by T^2
    divergence: str = "forward_kl"  # forward_kl | reverse_kl | jsd | skew_kl | skew_reverse_kl
    beta: float = 0.5  # jsd only: mixture weight of the teacher, in (0, 1)
    skew_alpha: float = 0.1  # skew_kl / skew_reverse_kl only: share a of the target kept in the mixture, in [0, 1)
    teacher: str | None = None  # online: the teacher model (hub id, dir, .gguf, embedded:NAME)
    check_samples: int = 32  # examples whose tokenization must agree between teacher and student
    hidden_states: HiddenStatesKD = field(default_factory=HiddenStatesKD)  # online: match hidden states (off by default)
    attention: AttentionKD = field(default_factory=AttentionKD)  # online: match self-attention (forces eager attention)
    relations: RelationsKD = field(default_factory=RelationsKD)  # online: match token-to-token relations
    on_policy: OnPolicyKD = field(default_factory=OnPolicyKD)  # online: distil on the student's own samples (GKD)

    def validate(self) -> list[str]:
        errors = []
        if self.mode not in MODES:
            errors.append(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0 <= self.alpha <= 1:
            errors.append(f"alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            errors.append(f"temperature must be > 0, got {self.temperature}")
        if self.divergence not in DIVERGENCES:
            errors.append(f"divergence must be one of {', '.join(DIVERGENCES)}, got {self.divergence!r}")
        if not 0 < self.beta < 1:
            errors.append(f"beta must be in (0, 1), got {self.beta}")
        if not 0 <= self.skew_alpha < 1:
            errors.append(f"skew_alpha must be in [0, 1), got {self.skew_alpha}")
        if self.mode == "online" and not self.teacher:
            errors.append("mode online needs kd.teacher (the teacher model to load beside the student)")
        for name in self.features() + (["on_policy"] if self.on_policy.fraction > 0 else []):
            if self.mode != "online":
                errors.append(f"{name} needs the teacher loaded beside the student (a dataset holds only its top-k "
                              f"log-probs on its own traces): set kd.mode online and kd.teacher (got kd.mode {self.mode})")
        return errors

    def features(self) -> list[str]:
        """The feature and relation terms that are on."""
        return [name for name in ("hidden_states", "attention", "relations") if getattr(self, name).weight > 0]


def describe(cfg: KDConfig) -> str:
    """The divergence's own parameter and the feature terms, for the model card."""
    params = {"jsd": f" (beta {cfg.beta})", "skew_kl": f" (skew alpha {cfg.skew_alpha})",
              "skew_reverse_kl": f" (skew alpha {cfg.skew_alpha})"}.get(cfg.divergence, "")
    h, a, r = cfg.hidden_states, cfg.attention, cfg.relations
    terms = {"hidden_states": f"hidden_states ({h.loss}{', normalized' if h.normalize and h.loss == 'mse' else ''}, layers {h.layers})",
             "attention": f"attention KL (layers {a.layers})", "relations": f"relations ({r.kind})"}
    on_policy = (f"; on {cfg.on_policy.fraction:g} of the batches the student samples the completions (GKD, "
                 f"temperature {cfg.on_policy.temperature}) and CE is left out" if cfg.on_policy.fraction > 0 else "")
    return params + "".join(f" + {getattr(cfg, name).weight:g} * {terms[name]}" for name in cfg.features()) + on_policy


def check_weight(weight: float) -> list[str]:
    return [] if weight >= 0 else [f"weight must be >= 0, got {weight}"]


def check_layer_spec(layers, first: int) -> list[str]:
    if layers == "auto":
        return []
    if (isinstance(layers, list) and layers and all(isinstance(p, list) and len(p) == 2 for p in layers)
            and all(isinstance(i, int) and i >= first for p in layers for i in p)):
        return []
    return [f"layers must be auto or a list of [student_layer, teacher_layer] pairs of integers >= {first}, got {layers!r}"]


def layer_pairs(layers, n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """auto: student blocks 1..Ls onto teacher blocks round(i * Lt / Ls), so the last goes onto the last."""
    if layers == "auto":
        return [(i, max(1, (i * n_teacher + n_student // 2) // n_student)) for i in range(1, n_student + 1)]
    return [(s, t) for s, t in layers]


def check_models(cfg: KDConfig, student, teacher, length: int) -> list[str]:
    """What needs both models' configs (transformers PretrainedConfig) and the longest training sequence."""
    if not cfg.features():
        return []
    student, teacher = (c.get_text_config() if hasattr(c, "get_text_config") else c for c in (student, teacher))
    errors = []
    n_s, n_t = student.num_hidden_layers, teacher.num_hidden_layers
    for name, first in (("hidden_states", 0), ("attention", 1)):
        term = getattr(cfg, name)
        if term.weight == 0 or term.layers == "auto":
            continue
        for s, t in layer_pairs(term.layers, n_s, n_t):
            if not (first <= s <= n_s and first <= t <= n_t):
                errors.append(f"kd.{name}.layers pair [{s}, {t}] is outside the models: the student has layers "
                              f"{first}..{n_s}, the teacher {first}..{n_t}")
    if cfg.attention.weight > 0 and length > cfg.attention.max_length:
        errors.append(f"kd.attention keeps batch x heads x T x T attention weights per layer (O(T^2) memory) and the longest "
                      f"training sequence has T={length} > kd.attention.max_length {cfg.attention.max_length}: "
                      "lower max_length or raise kd.attention.max_length")
    if cfg.relations.weight > 0 and cfg.relations.kind == "attention_relation":
        if length > cfg.relations.max_length:
            errors.append(f"kd.relations attention_relation keeps batch x heads x T x T relations (O(T^2) memory) and the "
                          f"longest training sequence has T={length} > kd.relations.max_length {cfg.relations.max_length}: "
                          "lower max_length or raise kd.relations.max_length")
        for name, c in (("student", student), ("teacher", teacher)):
            size = value_size(c)
            if size % cfg.relations.heads:
                errors.append(f"kd.relations.heads {cfg.relations.heads} does not divide the {name}'s value size {size} "
                              "(key-value heads x head dim): pick a divisor of both")
    return errors


def value_size(config) -> int:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return (getattr(config, "num_key_value_heads", None) or heads) * head_dim


# ---------------------------------------------------------------- storage


def check_logprobs_k(k: int, engine) -> list[str]:
    """vLLM refuses more log-probs than its max_logprobs (raised to k by default, unless the user set it)."""
    max_logprobs = engine.extra.get("max_logprobs", max(20, k))
    if not 1 <= k <= max_logprobs:
        return [f"logprobs_k must be in [1, engine max_logprobs={max_logprobs}], got {k}; "
                "lower it or raise engine.extra.max_logprobs"]
    return []


def id_bits(vocab_size: int) -> int:
    return max(1, (vocab_size - 1).bit_length())


def pack(values: np.ndarray, bits: int) -> bytes:
    v = np.asarray(values, dtype=np.uint64).ravel()
    planes = ((v[:, None] >> np.arange(bits, dtype=np.uint64)) & 1).astype(np.uint8)
    return np.packbits(planes.ravel(), bitorder="little").tobytes()


def unpack(data: bytes, bits: int, count: int) -> np.ndarray:
    planes = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[: count * bits].reshape(count, bits)
    return (planes.astype(np.uint64) << np.arange(bits, dtype=np.uint64)).sum(1).astype(np.int64)


def encode(ids: np.ndarray, logprobs: np.ndarray, sampled: np.ndarray, vocab_size: int) -> bytes:
    """(n, k) top-k ids and log-probs plus the n sampled ids -> one compact bytes value."""
    n, k = ids.shape
    ib = id_bits(vocab_size)
    lb = 8 if ib <= 17 else 7
    levels = (1 << lb) - 1
    q = np.rint(np.clip(logprobs, LOGPROB_FLOOR, 0) / LOGPROB_FLOOR * levels)
    hit = ids == sampled[:, None]
    rank = np.where(hit.any(1), hit.argmax(1), k)
    outside = sampled[rank == k].astype("<u4")
    return b"".join([HEADER.pack(n, k, ib, lb, len(outside)), pack(ids, ib), pack(q, lb),
                     pack(rank, k.bit_length()), outside.tobytes()])


def decode(blob: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """bytes -> (n, k) top-k ids, (n, k) float32 log-probs, (n,) sampled ids."""
    n, k, ib, lb, n_out = HEADER.unpack_from(blob)
    pos = HEADER.size
    sections = []
    for count, bits in ((n * k, ib), (n * k, lb), (n, k.bit_length())):
        size = (count * bits + 7) // 8
        sections.append(unpack(blob[pos : pos + size], bits, count))
        pos += size
    ids, q, rank = sections
    ids = ids.reshape(n, k)
    logprobs = (q.reshape(n, k) * (LOGPROB_FLOOR / ((1 << lb) - 1))).astype(np.float32)
    sampled = np.empty(n, np.int64)
    inside = rank < k
    sampled[inside] = ids[inside, rank[inside]]
    sampled[~inside] = np.frombuffer(blob[pos : pos + 4 * n_out], "<u4")
    return ids, logprobs, sampled


def max_quantisation_error(vocab_size: int) -> float:
    """Largest |stored - true| log-prob (nats) for log-probs >= LOGPROB_FLOOR."""
    return -LOGPROB_FLOOR / ((1 << (8 if id_bits(vocab_size) <= 17 else 7)) - 1) / 2


def storage_stats(table, k: int, vocab_size: int) -> dict:
    """Bytes per stored token of a dataset's teacher_topk column, and the quantisation error bound."""
    blobs = [b for b in table["teacher_topk"] if b]
    tokens = sum(HEADER.unpack_from(b)[0] for b in blobs)
    return {"k": k, "vocab_size": vocab_size, "id_bits": id_bits(vocab_size), "tokens": tokens,
            "bytes": sum(len(b) for b in blobs), "bytes_per_token": round(sum(len(b) for b in blobs) / max(1, tokens), 2),
            "max_logprob_error_nats": round(max_quantisation_error(vocab_size), 4), "logprob_floor": LOGPROB_FLOOR}


def from_vllm(flat, token_ids, k: int, first: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k arrays from vLLM's FlatLogprobs (flat_logprobs=True) for positions first.. of `token_ids`."""
    starts = np.asarray(flat.start_indices[first:], np.int64)
    ends = np.asarray(flat.end_indices[first:], np.int64)
    n = len(starts)
    lo, hi = (int(starts[0]), int(ends[-1])) if n else (0, 0)
    ids = np.asarray(flat.token_ids[lo:hi], np.int64)
    lps = np.asarray(flat.logprobs[lo:hi], np.float32)
    ranks = np.asarray([r or 0 for r in flat.ranks[lo:hi]], np.int64)
    pos = np.repeat(np.arange(n), ends - starts)
    top = (ranks >= 1) & (ranks <= k)
    out_ids = np.zeros((n, k), np.int64)
    out_lps = np.full((n, k), LOGPROB_FLOOR, np.float32)
    out_ids[pos[top], ranks[top] - 1] = ids[top]
    out_lps[pos[top], ranks[top] - 1] = lps[top]
    return out_ids, out_lps, np.asarray(token_ids[first : first + n], np.int64)


# ---------------------------------------------------------------- loss


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


def check_tokenizers(student, teacher, texts: list[str], student_name: str, teacher_name: str) -> None:
    """Logit KD compares distributions token by token: both must split these texts into the same ids."""
    from seqdistill.config import ConfigError

    for text in texts:
        s = student(text, add_special_tokens=False)["input_ids"]
        t = teacher(text, add_special_tokens=False)["input_ids"]
        if s != t:
            i = next((j for j, (a, b) in enumerate(zip(s, t)) if a != b), min(len(s), len(t)))
            raise ConfigError(
                f"student {student_name} and teacher {teacher_name} tokenize differently (token {i}: "
                f"{student.convert_ids_to_tokens(s[i:i + 1])} vs {teacher.convert_ids_to_tokens(t[i:i + 1])}); "
                "logit KD needs a shared tokenizer: pick a student of the teacher's family, or set kd.mode none")
