"""TRL's SFTTrainer with the knowledge-distillation loss of seqdistill.training.kd_loss; nothing else changes.

Imported only when `sft` runs with `kd.mode` offline or online (it imports torch and TRL).
loss = alpha * CE + (1 - alpha) * T^2 * D (per token) + the weighted feature terms of seqdistill.training.kd_features;
across tokenizers (rows with kd_positions, seqdistill.training.xtok) alpha * CE + (1 - alpha) * (GOLD's hybrid or ULD) on the
aligned tokens, against stored top-k or, online, the teacher's top kd.topk on its own tokens of the conversation;
hidden-state projections (when hidden sizes differ) are trained in the same optimizer and saved as
kd_projections.safetensors beside the student (and in each checkpoint, so --resume restores them).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch
from transformers import TrainerCallback
from trl import SFTTrainer

from seqdistill.training import kd, kd_features, kd_loss
from seqdistill.engines import topk
from seqdistill import models
from seqdistill.config import ConfigError

log = logging.getLogger(__name__)


def prepare_online(cfg, student: str, longest: int, model_kwargs: dict) -> dict:
    """Before any model loads: feature and on-policy settings against both models' configs; eager attention if needed.

    Returns the teacher's extra from_pretrained keywords; sets the student's in model_kwargs."""
    from transformers import AutoConfig

    configs = [AutoConfig.from_pretrained(path) for path in (student, models.resolve(cfg.kd.teacher))]
    errors = kd.check_models(cfg.kd, *configs, min(cfg.max_length, longest))
    if cfg.kd.on_policy.fraction > 0 and not cfg.assistant_only_loss:
        errors.append("kd.on_policy samples new completions for the dataset's prompts, which it tells apart by the "
                      "assistant-only loss mask: set assistant_only_loss true")
    if errors:
        raise ConfigError(errors)
    if cfg.kd.attention.weight == 0:
        return {}
    log.info("kd.attention: student and teacher load with attn_implementation=eager, the only one that returns "
             "attention weights (O(T^2) memory per layer)")
    model_kwargs["attn_implementation"] = "eager"
    return {"attn_implementation": "eager"}


class KDCollator:
    """TRL's collator, plus the teacher's top-k ids/log-probs laid out on the batch's token positions: from
    kd_offset on (shared tokenizer), or each teacher token on its aligned student position (kd_positions), its
    top-k ids turned into the student's by `to_student` (xtok.Aligner.to_student; -1: no student twin).
    Online across tokenizers, the teacher's own tokens of each conversation instead (teacher_tokens)."""

    def __init__(self, base, to_student=None):
        self.base = base
        self.to_student = None if to_student is None else torch.as_tensor(to_student, dtype=torch.long)

    def __call__(self, examples):
        batch = self.base(examples)
        if "teacher_input_ids" in examples[0]:
            batch.update(teacher_tokens(examples, batch["input_ids"].shape[1]))
        if "teacher_topk" not in examples[0]:
            return batch
        length = batch["input_ids"].shape[1]
        decoded = [topk.decode(ex["teacher_topk"]) for ex in examples]
        k = decoded[0][0].shape[1]
        ids = torch.zeros(len(examples), length, k, dtype=torch.long)
        logprobs = torch.full((len(examples), length, k), topk.LOGPROB_FLOOR)
        mask = torch.zeros(len(examples), length, dtype=torch.bool)
        for b, (ex, (t_ids, t_lps, _)) in enumerate(zip(examples, decoded)):
            if ex.get("kd_positions") is not None:
                positions = torch.as_tensor(ex["kd_positions"], dtype=torch.long)
                on = (positions >= 0) & (positions < length)  # aligned, and not cut off at max_length
                t_ids = torch.from_numpy(t_ids)
                ids[b, positions[on]] = (t_ids if self.to_student is None else student_ids(self.to_student, t_ids))[on]
                logprobs[b, positions[on]] = torch.from_numpy(t_lps)[on]
                mask[b, positions[on]] = True
                continue
            start = ex["kd_offset"]
            n = max(0, min(len(t_ids), length - start))
            ids[b, start : start + n] = torch.from_numpy(t_ids[:n])
            logprobs[b, start : start + n] = torch.from_numpy(t_lps[:n])
            mask[b, start : start + n] = True
        batch.update(teacher_ids=ids, teacher_logprobs=logprobs, teacher_mask=mask)
        return batch


class KDTrainer(SFTTrainer):
    """loss = alpha * CE + (1 - alpha) * T^2 * divergence, per trained token (see seqdistill.training.kd_loss), + feature terms."""

    def __init__(self, *args, kd_config: kd.KDConfig, teacher_model=None, aligner=None, **kwargs):
        self.kd_config = kd_config
        super().__init__(*args, **kwargs)
        self.to_student = None if aligner is None else torch.as_tensor(aligner.to_student, dtype=torch.long)
        self.data_collator = KDCollator(self.data_collator, self.to_student)
        self.cross = None if aligner is None else kd_config.cross_loss()  # rows built by seqdistill.training.xtok: uld | hybrid
        self.teacher_model = teacher_model
        if teacher_model is not None:
            self.teacher_model = self.place_teacher(teacher_model.eval().requires_grad_(False))
        self.kd_projections = None
        self.on_policy_rng = random.Random(self.args.seed)  # which batches the student samples (GKD's lambda)
        self.on_policy_batch = False
        self.values = {}  # attention_relation: the last block's value vectors, caught by forward hooks
        if kd_config.features():
            self.setup_features()

    def setup_features(self):
        teacher = self.accelerator.unwrap_model(self.teacher_model).config.get_text_config()  # a DeepSpeed engine's module
        cfg, student = self.kd_config, self.model.config.get_text_config()
        self.hidden_pairs = kd.layer_pairs(cfg.hidden_states.layers, student.num_hidden_layers, teacher.num_hidden_layers)
        self.attention_pairs = kd.layer_pairs(cfg.attention.layers, student.num_hidden_layers, teacher.num_hidden_layers)
        if cfg.hidden_states.weight > 0:
            self.kd_projections = kd_features.projections(self.hidden_pairs, student.hidden_size, teacher.hidden_size)
        if self.kd_projections is not None:
            self.kd_projections.to(self.accelerator.device)
            self.add_callback(ProjectionGrads(self.kd_projections))  # the Trainer syncs and zeroes only the model's
        if cfg.relations.weight > 0 and cfg.relations.kind == "attention_relation":
            for name, model in (("student", self.model), ("teacher", self.teacher_model)):
                last = [m for n, m in model.named_modules() if n.endswith("self_attn.v_proj")]
                if not last:
                    raise ConfigError(f"kd.relations attention_relation needs a self_attn.v_proj module in the {name}; "
                                      "this architecture has none: use kind distance or angle")
                last[-1].register_forward_hook(lambda module, args, out, name=name: self.values.__setitem__(name, out))

    def place_teacher(self, teacher):
        """Each process holds the teacher on its own device; under ZeRO-3 or FSDP it is sharded like the student,
        as TRL places its reference and teacher models (GKD, DPO)."""
        if self.is_deepspeed_enabled:
            from trl.models.utils import prepare_deepspeed

            return prepare_deepspeed(teacher, self.accelerator)
        if self.is_fsdp_enabled:
            from trl.models.utils import prepare_fsdp

            return prepare_fsdp(teacher, self.accelerator)
        return teacher.to(self.accelerator.device)

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.kd_projections is not None and not getattr(self, "projections_in_optimizer", False):
            optimizer.add_param_group({"params": list(self.kd_projections.parameters()), "weight_decay": 0.0})
            self.projections_in_optimizer = True
        return optimizer

    def save_model(self, output_dir=None, _internal_call=False):
        super().save_model(output_dir, _internal_call)
        if self.kd_projections is not None and self.args.should_save:
            from safetensors.torch import save_file

            state = {k: v.detach().cpu().contiguous() for k, v in self.kd_projections.state_dict().items()}
            save_file(state, str(Path(output_dir or self.args.output_dir) / kd_features.PROJECTIONS))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = Path(resume_from_checkpoint) / kd_features.PROJECTIONS
        if self.kd_projections is not None and path.is_file():
            from safetensors.torch import load_file

            self.kd_projections.load_state_dict(load_file(str(path)))

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = list(self._signature_columns) + kd.KD_COLUMNS

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        cfg = self.kd_config
        teacher = {key: inputs.pop(key) for key in ("teacher_ids", "teacher_logprobs", "teacher_mask", "teacher_input_ids",
                                                    "teacher_attention_mask", "teacher_source") if key in inputs}
        labels = inputs.pop("labels")
        rkd = cfg.relations.weight > 0 and cfg.relations.kind != "attention_relation"
        extra = {"output_hidden_states": cfg.hidden_states.weight > 0 or rkd, "output_attentions": cfg.attention.weight > 0}
        outputs = model(**inputs, use_cache=False, **extra)
        logits, targets = outputs.logits[:, :-1], labels[:, 1:]  # position t predicts token t + 1
        trained = targets != -100
        tokens = trained.sum() if num_items_in_batch is None else num_items_in_batch
        ce = torch.nn.functional.cross_entropy(logits[trained].float(), targets[trained], reduction="sum")
        teacher_out = None
        if self.teacher_model is not None and self.cross:
            per_token = self.online_cross_term(logits, trained, teacher)
        elif self.teacher_model is not None:
            with torch.no_grad():
                teacher_out = self.teacher_model(**inputs, use_cache=False, **extra)
            t, s = kd_loss.full_distributions(logits[trained], teacher_out.logits[:, :-1][trained], cfg.temperature)
            per_token = kd_loss.divergence(t, s, cfg.divergence, cfg.beta, cfg.skew_alpha)
        else:
            if not teacher:
                raise ValueError("kd.mode offline needs teacher log-probs in every batch (column teacher_topk)")
            per_token = offline_term(logits, trained, teacher, cfg, self.cross)
        divergence = per_token.sum()
        alpha = 0.0 if self.on_policy_batch and model.training else cfg.alpha  # the student's own tokens: no CE
        scale = 1.0 if self.cross else cfg.temperature**2  # ULD is an L1 of probabilities; hybrid_topk scales its own KL
        loss = (alpha * ce + (1 - alpha) * scale * divergence) / torch.as_tensor(tokens).clamp(min=1)
        terms = self.feature_terms(outputs, teacher_out, labels != -100, inputs) if cfg.features() else {}
        if terms:  # each term is a mean over this batch: weigh it by the batch's share of the accumulated tokens
            share = trained.sum() / torch.as_tensor(tokens).clamp(min=1)
            loss = loss + share * sum(getattr(cfg, name).weight * value for name, value in terms.items())
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        mode = "train" if model.training else "eval"
        n = max(1, int(trained.sum()))
        self._metrics[mode]["ce_loss"].append(ce.item() / n)
        self._metrics[mode]["kd_loss"].append(divergence.item() / max(1, len(per_token)))
        for name, value in terms.items():
            self._metrics[mode][f"{name}_loss"].append(value.item())
        if cfg.on_policy.fraction > 0 and model.training:
            self._metrics[mode]["on_policy"].append(float(self.on_policy_batch))
        return (loss, outputs) if return_outputs else loss

    def online_cross_term(self, logits, trained, teacher: dict):
        """Online across tokenizers: the teacher reads its own tokens of each conversation (no gradient), and its top
        kd.topk at each aligned position, in the student's ids, stand in for stored top-k: offline's loss."""
        cfg = self.kd_config
        with torch.no_grad():
            t_logits = self.teacher_model(input_ids=teacher["teacher_input_ids"], use_cache=False,
                                          attention_mask=teacher["teacher_attention_mask"]).logits
        source = teacher["teacher_source"][:, 1:]  # position t predicts token t + 1
        scored = (source >= 0) & trained
        top = torch.log_softmax(t_logits[scored.nonzero(as_tuple=True)[0], source[scored]].float(), -1).topk(cfg.topk, -1)
        if self.to_student.device != top.indices.device:  # once: the collator keeps its own copy on the CPU
            self.to_student = self.to_student.to(top.indices.device)
        ids = student_ids(self.to_student, top.indices)
        return topk_term(logits[scored], ids, top.values, cfg, self.cross)

    def training_step(self, model, inputs, num_items_in_batch=None):
        policy = self.kd_config.on_policy
        self.on_policy_batch = policy.fraction > 0 and self.on_policy_rng.random() < policy.fraction
        if self.on_policy_batch:
            inputs = self.sample_completions(model, inputs)
            num_items_in_batch = None  # the accumulated token count was the dataset's; this batch averages its own
        return super().training_step(model, inputs, num_items_in_batch)

    def sample_completions(self, model, inputs) -> dict:
        """GKD on-policy: the student samples completions for the batch's prompts; they replace the dataset's.

        TRL's GKDTrainer.generate_on_policy_outputs does the sampling (left-padded prompts, labels -100 on the
        prompt and after the end-of-turn token); positions count from each row's first real token."""
        import warnings

        from transformers import GenerationConfig
        from trl.models.utils import unwrap_model_for_generation

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TRL's warning that trl.experimental may change
            from trl.experimental.gkd import GKDTrainer

        policy, tokenizer = self.kd_config.on_policy, self.processing_class
        inputs = self._prepare_inputs(inputs)  # on the model's device (accelerate's loader usually did it already)
        real = inputs["attention_mask"].bool()
        starts = [int((row != -100).nonzero()[0]) if (row != -100).any() else int(r.sum())
                  for row, r in zip(inputs["labels"], real)]  # the first completion token of each row
        width = max(starts)
        end = tokenizer.convert_tokens_to_ids(self.args.eos_token) if self.args.eos_token else tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
        prompts = torch.full((len(starts), width), pad, dtype=torch.long, device=real.device)
        prompt_mask = torch.zeros_like(prompts)
        for b, start in enumerate(starts):
            prompts[b, width - start :] = inputs["input_ids"][b, :start]
            prompt_mask[b, width - start :] = 1
        generation = GenerationConfig(max_new_tokens=policy.max_new_tokens, do_sample=True, temperature=policy.temperature,
                                      top_k=0, top_p=1.0, pad_token_id=pad, eos_token_id=end)
        with torch.no_grad(), unwrap_model_for_generation(
                model, self.accelerator, gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs) as unwrapped:
            ids, mask, labels = GKDTrainer.generate_on_policy_outputs(
                unwrapped, {"prompts": prompts, "prompt_attention_mask": prompt_mask}, generation)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "position_ids": positions}

    def feature_terms(self, student, teacher, rows, inputs) -> dict:
        """Each feature term that is on, by its kd setting's name (unweighted, a mean over assistant tokens)."""
        cfg, terms = self.kd_config, {}
        if cfg.hidden_states.weight > 0:
            terms["hidden_states"] = kd_features.hidden_states_loss(
                student.hidden_states, teacher.hidden_states, self.hidden_pairs, rows,
                cfg.hidden_states.loss, cfg.hidden_states.normalize, self.kd_projections)
        if cfg.attention.weight > 0:
            if not student.attentions or not teacher.attentions:
                raise RuntimeError("kd.attention: a model returned no attention weights (only eager attention does)")
            terms["attention"] = kd_features.attention_loss(student.attentions, teacher.attentions, self.attention_pairs, rows)
        if cfg.relations.weight > 0 and cfg.relations.kind == "attention_relation":
            terms["relations"] = kd_features.value_relation_loss(
                self.values["student"], self.values["teacher"], inputs.get("attention_mask", rows | True), rows, cfg.relations.heads)
        elif cfg.relations.weight > 0:
            terms["relations"] = kd_features.relation_loss(student.hidden_states[-1], teacher.hidden_states[-1], rows,
                                                           cfg.relations.kind, cfg.relations.max_tokens)
        return terms


def offline_term(logits, trained, teacher: dict, cfg, cross: str | None = None):
    """The per-token KD term against stored top-k at the trained positions that carry a teacher distribution:
    the divergence over the teacher's k + 1 buckets, or across tokenizers (cross) GOLD's hybrid on the ids the
    collator turned into the student's, or the ULD distance (ids unused)."""
    scored = teacher["teacher_mask"][:, 1:] & trained  # position t predicts token t + 1
    ids, logprobs = teacher["teacher_ids"][:, 1:][scored], teacher["teacher_logprobs"][:, 1:][scored]
    return topk_term(logits[scored], ids, logprobs, cfg, cross)


def topk_term(student_logits, ids, logprobs, cfg, cross: str | None):
    """Per row, the KD term of the student's logits against the teacher's top-k (ids in the student's vocabulary,
    -1 where it has none), offline or online: kd.divergence over k + 1 buckets, GOLD's hybrid or ULD."""
    if cross == "uld":
        return kd_loss.uld_topk(student_logits, logprobs, cfg.temperature)
    if cross == "hybrid":
        return kd_loss.hybrid_topk(student_logits, ids, logprobs, cfg.temperature, cfg.divergence, cfg.beta, cfg.skew_alpha)
    t, s = kd_loss.topk_buckets(student_logits, ids, logprobs, cfg.temperature)
    return kd_loss.divergence(t, s, cfg.divergence, cfg.beta, cfg.skew_alpha)


def student_ids(to_student, teacher_ids):
    """Teacher token ids as the student's (xtok.Aligner.to_student); -1 where the student has no token of the same
    bytes, or past the teacher tokenizer's vocabulary (a model's padding rows)."""
    inside = teacher_ids < len(to_student)
    return torch.where(inside, to_student[teacher_ids.clamp(max=len(to_student) - 1)], -1)


def teacher_tokens(examples, length: int) -> dict:
    """Online across tokenizers: the teacher's tokens of each conversation (right-padded), up to the last one whose
    logits the loss reads (a student row cut at max_length cuts its teacher's too), and, per student position,
    the teacher position whose logits predict the teacher token aligned with it (-1: none)."""
    source = torch.full((len(examples), length), -1, dtype=torch.long)
    needed = []
    for b, ex in enumerate(examples):
        positions = torch.as_tensor(ex["kd_positions"], dtype=torch.long)
        on = (positions >= 0) & (positions < length)  # aligned, and not cut off at max_length
        reads = (ex["teacher_offset"] - 1 + torch.arange(len(positions)))[on]
        source[b, positions[on]] = reads
        needed.append(int(reads.max()) + 1 if len(reads) else 1)
    width = max(needed)
    ids = torch.zeros(len(examples), width, dtype=torch.long)
    mask = torch.zeros(len(examples), width, dtype=torch.long)
    for b, (ex, n) in enumerate(zip(examples, needed)):
        ids[b, :n], mask[b, :n] = torch.as_tensor(ex["teacher_input_ids"][:n]), 1
    return {"teacher_input_ids": ids, "teacher_attention_mask": mask, "teacher_source": source}


class ProjectionGrads(TrainerCallback):
    """Averages the projections' gradients over processes before each optimizer step (DDP reduces only the
    model's) and clears them after it, as the Trainer does for the model's."""

    def __init__(self, module):
        self.module = module

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if torch.distributed.is_available() and torch.distributed.is_initialized() and args.world_size > 1:
            for p in self.module.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)  # a sum (gloo has no average)
                    p.grad /= args.world_size

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.module.zero_grad(set_to_none=True)
