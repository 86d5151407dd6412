"""`seqdistill score`: add a teacher's top-k log-probs to an existing traces dataset, for offline logit KD.

    seqdistill score --set model=deepseek-ai/DeepSeek-R1-Distill-Qwen-7B dataset=open-r1/OpenR1-Math-220k \
        output_dir=outputs/openr1-scored
    seqdistill sft --set dataset=outputs/openr1-scored kd.mode=offline ...

For traces written elsewhere (another tool, a hub dataset): one vLLM pass over each prompt +
completion with prompt log-probs, no sampling. The completion is tokenized with the teacher's
tokenizer and closed with its end-of-turn token, so the teacher's distribution at the end is kept
too. Writes OUTPUT_DIR/data/train.parquet (the input rows plus teacher_topk, teacher, prefill),
stats.json (bytes per token) and the resolved config; `sft` reads OUTPUT_DIR like a generate output.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from seqdistill import kd, models, store
from seqdistill.config import ConfigError
from seqdistill.models import EngineConfig

log = logging.getLogger(__name__)
IGNORE = ("overwrite",)


@dataclass
class ScoreConfig:
    model: str = models.DEFAULT_MODEL  # the teacher
    dataset: str = "outputs/generate-quickstart"  # a generate output dir, a local file, or a hub dataset (messages)
    dataset_split: str = "train"
    output_dir: str = "outputs/score"
    logprobs_k: int = 20
    batch_size: int = 256  # sequences per vLLM call (progress and memory)
    engine: EngineConfig = field(default_factory=EngineConfig)
    overwrite: bool = False

    def validate(self) -> list[str]:
        errors = [f"model: {p}" for p in models.check(self.model)]
        errors += kd.check_logprobs_k(self.logprobs_k, self.engine)
        if self.batch_size < 1:
            errors.append(f"batch_size must be at least 1, got {self.batch_size}")
        return errors


def run(cfg: ScoreConfig, llm=None) -> dict:
    from seqdistill.data import end_of_turn, load_table

    out = Path(cfg.output_dir)
    # ---- everything that can fail is checked before the engine starts ----
    path = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(path)
    table, _ = load_table(cfg.dataset, cfg.dataset_split)
    if "messages" not in table.column_names:
        raise ConfigError(f"dataset {cfg.dataset} has no `messages` column; it has: {', '.join(table.column_names)}")
    eot_id = tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer))
    sequences, starts = [], []
    for msgs in table["messages"]:
        prompt = tokenizer.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
        head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        sequences.append(head + tokenizer(msgs[-1]["content"], add_special_tokens=False)["input_ids"] + [eot_id])
        starts.append(len(head))
    models.check_context(path, cfg.engine, 1, {"prompt + completion": sequences})
    store.prepare(out, cfg, ignore=IGNORE, overwrite=cfg.overwrite, owned=["data", "stats.json"])

    # ---- one prompt-log-probs pass ----
    own = llm is None
    if own:
        llm = models.load_vllm(path, cfg.engine, max_logprobs=max(20, cfg.logprobs_k))
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=cfg.logprobs_k, flat_logprobs=True)
    vocab = models.vocab_size(path)
    blobs = []
    for i in range(0, len(sequences), cfg.batch_size):
        batch = sequences[i : i + cfg.batch_size]
        outputs = llm.generate([{"prompt_token_ids": s} for s in batch], params, use_tqdm=True)
        for seq, start, output in zip(batch, starts[i:], outputs):
            blobs.append(kd.encode(*kd.from_vllm(output.prompt_logprobs, seq, cfg.logprobs_k, first=start), vocab))
    if own:
        models.release_vllm(llm)

    scored = table.remove_columns([c for c in ("teacher_topk", "prefill", "trace_teacher") if c in table.column_names])
    if "teacher" in scored.column_names:  # who wrote the traces; `teacher` is now whose log-probs they carry
        scored = scored.rename_column("teacher", "trace_teacher")
    scored = (scored.add_column("teacher_topk", blobs).add_column("prefill", [""] * len(blobs))
              .add_column("teacher", [cfg.model] * len(blobs)))
    store.write_parquet(scored, out / "data" / "train.parquet")
    stats = {"examples": len(blobs), "teacher_logprobs": kd.storage_stats(scored, cfg.logprobs_k, vocab)}
    store.write_text(out / "stats.json", json.dumps(stats, indent=2))
    log.info("scored %d traces: %s", len(blobs), stats["teacher_logprobs"])
    return stats
