"""TRL's SFTTrainer with the knowledge-distillation loss of seqdistill.kd; nothing else changes.

Imported only when `sft` runs with `kd.mode` offline or online (it imports torch and TRL).
"""

from __future__ import annotations

import torch
from trl import SFTTrainer

from seqdistill import kd


class KDCollator:
    """TRL's collator, plus the teacher's top-k ids/log-probs laid out on the batch's token positions."""

    def __init__(self, base):
        self.base = base

    def __call__(self, examples):
        batch = self.base(examples)
        if "teacher_topk" not in examples[0]:
            return batch
        length = batch["input_ids"].shape[1]
        decoded = [kd.decode(ex["teacher_topk"]) for ex in examples]
        k = decoded[0][0].shape[1]
        ids = torch.zeros(len(examples), length, k, dtype=torch.long)
        logprobs = torch.full((len(examples), length, k), kd.LOGPROB_FLOOR)
        mask = torch.zeros(len(examples), length, dtype=torch.bool)
        for b, (ex, (t_ids, t_lps, _)) in enumerate(zip(examples, decoded)):
            start = ex["kd_offset"]
            n = max(0, min(len(t_ids), length - start))
            ids[b, start : start + n] = torch.from_numpy(t_ids[:n])
            logprobs[b, start : start + n] = torch.from_numpy(t_lps[:n])
            mask[b, start : start + n] = True
        batch.update(teacher_ids=ids, teacher_logprobs=logprobs, teacher_mask=mask)
        return batch


class KDTrainer(SFTTrainer):
    """loss = alpha * CE + (1 - alpha) * T^2 * divergence, per trained token (see seqdistill.kd)."""

    def __init__(self, *args, kd_config: kd.KDConfig, teacher_model=None, **kwargs):
        self.kd_config = kd_config
        super().__init__(*args, **kwargs)
        self.data_collator = KDCollator(self.data_collator)
        self.teacher_model = teacher_model
        if teacher_model is not None:
            self.teacher_model = teacher_model.to(self.accelerator.device).eval().requires_grad_(False)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = list(self._signature_columns) + kd.KD_COLUMNS

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        cfg = self.kd_config
        teacher = {key: inputs.pop(key) for key in ("teacher_ids", "teacher_logprobs", "teacher_mask") if key in inputs}
        labels = inputs.pop("labels")
        outputs = model(**inputs, use_cache=False)
        logits, targets = outputs.logits[:, :-1], labels[:, 1:]  # position t predicts token t + 1
        trained = targets != -100
        tokens = trained.sum() if num_items_in_batch is None else num_items_in_batch
        ce = torch.nn.functional.cross_entropy(logits[trained].float(), targets[trained], reduction="sum")
        if self.teacher_model is not None:
            with torch.no_grad():
                teacher_logits = self.teacher_model(**inputs, use_cache=False).logits[:, :-1]
            t, s = kd.full_distributions(logits[trained], teacher_logits[trained], cfg.temperature)
        else:
            if not teacher:
                raise ValueError("kd.mode offline needs teacher log-probs in every batch (column teacher_topk)")
            scored = teacher["teacher_mask"][:, 1:] & trained
            t, s = kd.topk_buckets(logits[scored], teacher["teacher_ids"][:, 1:][scored],
                                   teacher["teacher_logprobs"][:, 1:][scored], cfg.temperature)
        divergence = kd.divergence(t, s, cfg.divergence, cfg.beta, cfg.skew_alpha).sum()
        loss = (cfg.alpha * ce + (1 - cfg.alpha) * cfg.temperature**2 * divergence) / torch.as_tensor(tokens).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        mode = "train" if model.training else "eval"
        n = max(1, int(trained.sum()))
        self._metrics[mode]["ce_loss"].append(ce.item() / n)
        self._metrics[mode]["kd_loss"].append(divergence.item() / max(1, len(t)))
        return (loss, outputs) if return_outputs else loss
