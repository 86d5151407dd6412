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

from seqdistill.engines import engine, prompts, topk
from seqdistill.training import kd
from seqdistill import models, store
from seqdistill.config import ConfigError
from seqdistill.engines.engine import EngineConfig, SamplingConfig
from seqdistill.training.data import end_of_turn, load_table

log = logging.getLogger(__name__)
OUTPUT = store.Layout(owned=("chunks", "data", store.STATS_FILE), marker=store.STATS_FILE, ignore=engine.OPERATIONAL)


@dataclass
class ScoreConfig:
    model: str = models.DEFAULT_MODEL  # the teacher
    dataset: str = "outputs/generate-quickstart"  # a generate output dir, a local file, or a hub dataset (messages)
    dataset_split: str = "train"
    output_dir: str = "outputs/score"
    logprobs_k: int = 20
    batch_size: int = 256  # sequences per chunk: the unit of resume
    engine: EngineConfig = field(default_factory=EngineConfig)
    # the chat-template switches generate rendered the teacher's prompts with (prompt.chat_template_kwargs)
    chat_template_kwargs: dict = field(default_factory=dict)
    overwrite: bool = False

    def validate(self) -> list[str]:
        errors = [f"model: {p}" for p in models.check(self.model)]
        errors += kd.check_logprobs_k(self.logprobs_k, self.engine)
        errors += prompts.check_template_kwargs(self.chat_template_kwargs)
        if self.batch_size < 1:
            errors.append(f"batch_size must be at least 1, got {self.batch_size}")
        if self.engine.backend == "openai" and self.engine.api != "completions":
            errors.append("score sends token ids for prompt log-probs: set engine.api: completions (a vLLM server)")
        return errors


def run(cfg: ScoreConfig, llm=None) -> dict:
    out = Path(cfg.output_dir)
    # ---- everything that can fail is checked before the engine starts ----
    engine.check_devices(cfg.engine)  # data-parallel ranks the node can hold
    path = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(path)
    table, _ = load_table(cfg.dataset, cfg.dataset_split)
    if "messages" not in table.column_names:
        raise ConfigError(f"dataset {cfg.dataset} has no `messages` column; it has: {', '.join(table.column_names)}")
    eot_id = tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer, cfg.chat_template_kwargs))
    sequences, starts = [], []
    for msgs in table["messages"]:
        prompt = prompts.template_text(tokenizer, msgs[:-1], True, cfg.chat_template_kwargs)
        head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        sequences.append(head + tokenizer(msgs[-1]["content"], add_special_tokens=False)["input_ids"] + [eot_id])
        starts.append(len(head))
    batch = [engine.Prompt(str(i), token_ids=seq, score_from=start) for i, (seq, start) in enumerate(zip(sequences, starts))]
    engine.preflight(path, cfg.engine, {"prompt + completion": batch}, 1)
    vocab = models.vocab_size(path)
    OUTPUT.prepare(out, cfg, cfg.overwrite)

    # ---- one prompt-log-probs pass, in resumable chunks ----
    req = engine.Request(SamplingConfig(n=1, temperature=0.0, max_tokens=1), prompt_logprobs_k=cfg.logprobs_k)

    def to_rows(i: int, output: engine.Output) -> list[dict]:
        return [{"index": i, "teacher_topk": topk.encode(*output.prompt_topk, vocab)}]

    opener = lambda: engine.open_engine(path, cfg.engine, llm, max_logprobs=max(20, cfg.logprobs_k))  # noqa: E731
    with engine.lazy(opener) as get_engine:
        parts = engine.sample_in_chunks(get_engine, batch, out / "chunks", req, seed_key=(cfg.engine.seed,),
                                        chunk_size=cfg.batch_size, to_rows=to_rows, desc="score")
    if engine.chunk_summary(parts, cfg.engine)["failed_requests"]:
        raise ConfigError("some scoring requests failed after retries; rerun the same command to retry only those")
    blobs = store.read_parquet(parts).sort("index")["teacher_topk"]

    scored = table.remove_columns([c for c in ("teacher_topk", "prefill", "trace_teacher") if c in table.column_names])
    if "teacher" in scored.column_names:  # who wrote the traces; `teacher` is now whose log-probs they carry
        scored = scored.rename_column("teacher", "trace_teacher")
    scored = (scored.add_column("teacher_topk", blobs).add_column("prefill", [""] * len(blobs))
              .add_column("teacher", [cfg.model] * len(blobs)))
    store.write_parquet(scored, out / "data" / "train.parquet")
    stats = {"examples": len(blobs), "teacher_logprobs": topk.storage_stats(scored, cfg.logprobs_k, vocab)}
    store.write_text(out / store.STATS_FILE, json.dumps(stats, indent=2))
    log.info("scored %d traces: %s", len(blobs), stats["teacher_logprobs"])
    return stats
