"""Logit-level knowledge distillation: its settings and the checks that run before any model loads.

Offline (the default): `generate` with `teacher_logprobs: true` records, in the same vLLM pass that
samples each trace, the teacher's top-k log-probs for every generated token (`seqdistill score` does
the same for traces from elsewhere, with vLLM prompt log-probs), stored compactly by seqdistill.engines.topk.
`sft` with `kd.mode: offline` then trains on them; `kd.mode: online` loads the teacher beside the
student and uses its full distribution at every step. The loss is in seqdistill.training.kd_loss.

Beyond logits (online teacher only; losses in seqdistill.training.kd_features), each added as weight * term:
hidden states (kd.hidden_states), self-attention distributions (kd.attention) and relations between
a sequence's tokens (kd.relations). Layers are numbered as `output_hidden_states` counts them:
0 the embeddings (hidden states only), 1..L the outputs of transformer blocks 1..L. With kd.on_policy
the student samples the completions of a share of the batches itself (GKD) and learns from the
teacher's distributions on them (seqdistill.training.kd_trainer).

Across tokenizers (kd.cross_tokenizer): offline, the teacher's stored ids are decoded with the teacher's
tokenizer (the dataset's `teacher` column names it) and the student tokenizes that text; online, each
conversation is rendered by both chat templates and its completion tokenized by both tokenizers, and the
teacher's top kd.topk at each position stand in for the stored top-k. The positions are aligned on common
byte boundaries (seqdistill.training.xtok) and the loss on them replaces the divergence: hybrid (the default;
seqdistill.training.kd_loss.hybrid_topk, GOLD's) compares the teacher's top-k tokens that the student's vocabulary also
has (same bytes) one to one by kd.divergence and the rest by ULD; uld (kd_loss.uld_topk) compares only the
sorted probabilities. Stored top-k loses the teacher's mass outside its
top-k: it is one bucket, shared tokens in it are not compared one to one, and both terms are lower bounds of
their full-vocabulary values (kd_loss's docstring).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from seqdistill.training import xtok
from seqdistill.config import ConfigError

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl")
MODES = ("none", "offline", "online")
HIDDEN_LOSSES = ("mse", "cosine")
RELATIONS = ("distance", "angle", "attention_relation")
CROSS_TOKENIZER = ("auto", "shared", "uld", "hybrid")  # not "off": YAML reads an unquoted off as false
KD_COLUMNS = ["teacher_topk", "kd_offset", "kd_positions",  # what the KD trainer's dataset carries beside TRL's columns
              "teacher_input_ids", "teacher_offset"]  # online across tokenizers: the teacher's tokens of the conversation


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
    cross_tokenizer: str = "auto"  # auto (hybrid when the teacher's tokenizer splits text differently) | shared (refuse that) | hybrid (always: kd.divergence on the top-k tokens both vocabularies share + ULD on the rest, GOLD's) | uld (always: ULD on sorted probabilities only)
    topk: int = 20  # online across tokenizers: the teacher's k most likely tokens per aligned position that the loss compares (the rest is one bucket, as offline)
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
        if self.topk < 1:
            errors.append(f"topk must be at least 1, got {self.topk}")
        if self.cross_tokenizer not in CROSS_TOKENIZER:
            errors.append(f"cross_tokenizer must be one of {', '.join(CROSS_TOKENIZER)}, got {self.cross_tokenizer!r}")
        if self.cross_tokenizer in ("uld", "hybrid"):
            errors += [f"cross_tokenizer {self.cross_tokenizer}: {p}" for p in self.cross_problems()]
        if self.mode == "online" and not self.teacher:
            errors.append("mode online needs kd.teacher (the teacher model to load beside the student)")
        for name in self.features() + (["on_policy"] if self.on_policy.fraction > 0 else []):
            if self.mode != "online":
                errors.append(f"{name} needs the teacher loaded beside the student (a dataset holds only its top-k "
                              f"log-probs on its own traces): set kd.mode online and kd.teacher (got kd.mode {self.mode})")
        return errors

    def cross_loss(self) -> str:
        """The loss across tokenizers: uld when asked for, else GOLD's hybrid."""
        return "uld" if self.cross_tokenizer == "uld" else "hybrid"

    def cross_problems(self) -> list[str]:
        """What cross-tokenizer KD (its loss on aligned tokens) cannot be combined with."""
        errors = []
        for name in self.features() + (["on_policy"] if self.on_policy.fraction > 0 else []):
            errors.append(f"kd.{name} needs one tokenizer (its terms compare positions or samples one to one): "
                          "set its weight/fraction to 0, or pick a teacher of the student's family")
        if self.cross_loss() == "uld" and self.divergence != "forward_kl":
            errors.append(f"the loss is ULD (sorted probabilities, L1), which has no kd.divergence: leave it at "
                          f"forward_kl (got {self.divergence})")
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


def check_logprobs_k(k: int, engine) -> list[str]:
    """vLLM refuses more log-probs than its max_logprobs (raised to k by default, unless the user set it)."""
    max_logprobs = engine.extra.get("max_logprobs", max(20, k))
    if not 1 <= k <= max_logprobs:
        return [f"logprobs_k must be in [1, engine max_logprobs={max_logprobs}], got {k}; "
                "lower it or raise engine.extra.max_logprobs"]
    return []


def tokenization_difference(student, teacher, texts: list[str], student_name: str, teacher_name: str) -> str | None:
    """Where the two tokenizers first split one of these texts into different ids, or None."""
    for text in texts:
        s = student(text, add_special_tokens=False)["input_ids"]
        t = teacher(text, add_special_tokens=False)["input_ids"]
        if s != t:
            i = next((j for j, (a, b) in enumerate(zip(s, t)) if a != b), min(len(s), len(t)))
            return (f"student {student_name} and teacher {teacher_name} tokenize differently (token {i}: "
                    f"{student.convert_ids_to_tokens(s[i:i + 1])} vs {teacher.convert_ids_to_tokens(t[i:i + 1])})")
    return None


def cross_tokenizer(cfg: KDConfig, student, teacher, texts: list[str], student_name: str, teacher_name: str | None) -> bool:
    """Whether logit KD runs across tokenizers (cfg.cross_loss() on aligned tokens); ConfigError where it cannot run.

    `teacher` is the teacher's tokenizer, None when the dataset names no teacher (then only today's
    shared-tokenizer path runs: uld and hybrid must decode the stored ids with the teacher's tokenizer)."""

    if teacher is None:
        if cfg.cross_tokenizer in ("uld", "hybrid"):
            raise ConfigError(f"kd.cross_tokenizer {cfg.cross_tokenizer} decodes the teacher's stored token ids with the "
                              "teacher's tokenizer, and the dataset names no teacher: add a `teacher` column (its hub id or "
                              "path) or set kd.cross_tokenizer auto (today's path, for a dataset scored with the student's "
                              "tokenizer)")
        return False
    differ = tokenization_difference(student, teacher, texts, student_name, teacher_name)
    if cfg.cross_tokenizer == "shared" or (cfg.cross_tokenizer == "auto" and differ is None):
        if differ:
            raise ConfigError(f"{differ}; kd.cross_tokenizer shared needs a shared tokenizer: set it to auto (hybrid "
                              "KL + ULD across tokenizers), pick a student of the teacher's family, or set kd.mode none")
        return False
    problems = [f"{differ}, and {p}" if differ else p for p in cfg.cross_problems()]
    problems += xtok.check_pair(student, teacher, student_name, teacher_name)
    if problems:
        raise ConfigError(problems)
    return True
