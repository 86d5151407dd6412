"""`seqdistill generate`: sample reasoning traces from a teacher with vLLM into a verified, filtered dataset.

    seqdistill generate --config pipelines/generate-quickstart.yaml
    seqdistill generate --set model=Qwen/Qwen2.5-7B-Instruct problems.preset=gsm8k problems.source= \
        problems.split=train output_dir=outputs/gsm8k-traces

Writes OUTPUT_DIR/data/train.parquet (kept traces in TRL's `messages` format, with provenance),
OUTPUT_DIR/data/dropped.parquet (every dropped sample with its reason), a dataset card
(OUTPUT_DIR/README.md, so `datasets.load_dataset(OUTPUT_DIR)` works), stats.json and the resolved
config. Work is written chunk by chunk under OUTPUT_DIR/samples/; rerunning the same command
resumes. `num_shards`/`shard_index` split a run into disjoint parts for N jobs on N machines.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from seqdistill import card, filters, kd, models, problems as problemslib, prompts, store
from seqdistill.config import ConfigError
from seqdistill.filters import FilterConfig
from seqdistill.models import EngineConfig, SamplingConfig
from seqdistill.problems import ProblemsConfig
from seqdistill.prompts import PromptConfig
from seqdistill.verify import AnswerConfig

log = logging.getLogger(__name__)
# Files this stage owns in its output directory (what --overwrite clears).
OWNED = ["samples", "data", "README.md", "stats.json"]
IGNORE = ("overwrite", "shard_index", "push_to_hub")  # settings that don't change the dataset


@dataclass
class GenerateConfig:
    model: str = models.DEFAULT_MODEL  # the teacher: hub id, local dir, .gguf, or embedded:NAME
    output_dir: str = "outputs/generate"
    problems: ProblemsConfig = field(default_factory=ProblemsConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    answer: AnswerConfig = field(default_factory=AnswerConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    teacher_logprobs: bool = False  # also store the teacher's top-k log-probs per token, for logit KD in sft
    logprobs_k: int = 20  # k of those top-k log-probs
    chunk_size: int = 256  # problems per part file: the unit of resume
    num_shards: int = 1  # split the problems into N disjoint parts (one job each) ...
    shard_index: int = 0  # ... and run this one
    overwrite: bool = False
    push_to_hub: str | None = None  # hub dataset repo to push the result to

    def validate(self) -> list[str]:
        errors = [f"model: {p}" for p in models.check(self.model)]
        if self.chunk_size < 1:
            errors.append(f"chunk_size must be at least 1, got {self.chunk_size}")
        if self.teacher_logprobs:
            errors += kd.check_logprobs_k(self.logprobs_k, self.engine)
        if not 0 <= self.shard_index < self.num_shards:
            errors.append(f"shard_index must be in [0, num_shards={self.num_shards}), got {self.shard_index}")
        return errors


def run(cfg: GenerateConfig, llm=None) -> dict:
    """Generate, filter and write the dataset; returns the stats. `llm` reuses a running engine (tests)."""
    out = Path(cfg.output_dir)
    # ---- everything that can fail is checked before the engine starts ----
    model_path = models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(model_path)
    rows = select_problems(cfg)
    template = prompts.load_template(cfg.prompt.template)
    users = [prompts.render(template, row) for row in rows]
    token_ids = [prompts.encode(tokenizer, u, cfg.prompt) for u in users]
    models.check_context(model_path, cfg.engine, cfg.sampling.max_tokens, {"problems": token_ids})
    think = cfg.filters.require_think if cfg.filters.require_think is not None else f"<{cfg.answer.think_tag}>" in cfg.prompt.prefill
    store.prepare(out, cfg, ignore=IGNORE, overwrite=cfg.overwrite, owned=OWNED)

    # ---- sample chunk by chunk; each finished chunk is one atomic file ----
    shard_dir = out / "samples" / f"shard-{cfg.shard_index:05d}-of-{cfg.num_shards:05d}"
    chunks = [range(i, min(i + cfg.chunk_size, len(rows))) for i in range(0, len(rows), cfg.chunk_size)]
    todo = [k for k in range(len(chunks)) if not (shard_dir / f"chunk-{k:05d}.parquet").exists()]
    log.info("%d problems in %d chunks, %d to sample (%d done)", len(rows), len(chunks), len(todo), len(chunks) - len(todo))
    own_engine = bool(todo) and llm is None
    if own_engine:
        llm = models.load_vllm(model_path, cfg.engine, max_logprobs=max(20, cfg.logprobs_k))
    params = cfg.sampling.params(**({"logprobs": cfg.logprobs_k, "flat_logprobs": True} if cfg.teacher_logprobs else {}))
    vocab = models.vocab_size(model_path) if cfg.teacher_logprobs else 0
    for k in todo:
        idx = chunks[k]
        models.start_chunk(llm, cfg.engine.seed, cfg.shard_index, cfg.num_shards, k)  # resumes draw the same samples
        start = time.perf_counter()
        outputs = llm.generate([{"prompt_token_ids": token_ids[i]} for i in idx], params, use_tqdm=True)
        seconds = time.perf_counter() - start
        tagged = []
        for i, output in zip(idx, outputs):
            samples = build_samples(cfg, rows[i], users[i], output, len(token_ids[i]), vocab)
            tagged += filters.apply(samples, rows[i]["answer"], cfg.filters, cfg.answer, think)
        tokens = sum(s["completion_tokens"] for s in tagged)
        store.write_text(shard_dir / f"chunk-{k:05d}.json", json.dumps({"seconds": seconds, "tokens": tokens}))
        store.write_parquet(tagged, shard_dir / f"chunk-{k:05d}.parquet", features=sample_features())
        log.info("chunk %d/%d: %d samples, %d kept, %.0f generated tok/s",
                 k + 1, len(chunks), len(tagged), sum(s["keep"] for s in tagged), tokens / seconds)
    if own_engine:
        models.release_vllm(llm)  # before a later stage starts its own engine
    store.write_text(shard_dir / "DONE", json.dumps({"chunks": len(chunks), "problems": len(rows)}))
    return assemble(cfg, out)


def select_problems(cfg: GenerateConfig) -> list[dict]:
    """The problems of this shard: loaded, decontaminated, then every num_shards-th one."""
    rows = problemslib.load(cfg.problems)
    for i, row in enumerate(rows):
        row["_index"] = i
    if cfg.filters.decontaminate:
        index = filters.contamination_index(cfg.filters.decontaminate, cfg.filters.decontaminate_ngram)
        clean = [r for r in rows if not filters.is_contaminated(r["question"], index, cfg.filters.decontaminate_ngram)]
        log.info("decontamination against %s removed %d of %d problems", cfg.filters.decontaminate, len(rows) - len(clean), len(rows))
        rows = clean
    rows = rows[cfg.shard_index :: cfg.num_shards]
    if not rows:
        raise ConfigError(f"no problems left for shard {cfg.shard_index} of {cfg.num_shards}; use fewer shards")
    return rows


def build_samples(cfg: GenerateConfig, row: dict, user: str, output, prompt_tokens: int, vocab: int) -> list[dict]:
    msgs = prompts.messages(user, cfg.prompt)
    samples = []
    for j, completion in enumerate(output.outputs):
        text = cfg.prompt.prefill + completion.text
        samples.append({
            "messages": [*msgs, {"role": "assistant", "content": text}],
            "problem_id": row["id"],
            "problem_index": row["_index"],
            "sample_index": j,
            "question": row["question"],
            "gold": row["answer"],
            "completion": text,
            "finish_reason": str(completion.finish_reason),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(completion.token_ids),
            "teacher": cfg.model,
            "prefill": cfg.prompt.prefill,
            "teacher_topk": (kd.encode(*kd.from_vllm(completion.logprobs, completion.token_ids, cfg.logprobs_k), vocab)
                             if cfg.teacher_logprobs else None),
        })
    return samples


def sample_features():
    """The schema of every sample row (explicit, so a chunk whose answers are all None still matches)."""
    from datasets import Features, List, Value

    text, integer = Value("string"), Value("int64")
    return Features({
        "messages": List({"role": text, "content": text}), "problem_id": text, "problem_index": integer,
        "sample_index": integer, "question": text, "gold": text, "completion": text, "finish_reason": text,
        "prompt_tokens": integer, "completion_tokens": integer, "teacher": text, "prefill": text,
        "teacher_topk": Value("binary"), "answer": text,
        "correct": Value("bool"), "keep": Value("bool"), "drop_reason": text,
    })


def assemble(cfg: GenerateConfig, out: Path) -> dict:
    """Join every shard's chunks into data/train.parquet and data/dropped.parquet, once all shards are done."""
    shard_dirs = [out / "samples" / f"shard-{i:05d}-of-{cfg.num_shards:05d}" for i in range(cfg.num_shards)]
    missing = [d.name for d in shard_dirs if not (d / "DONE").exists()]
    if missing:
        log.info("shard done; waiting for %s before joining the dataset", ", ".join(missing))
        return {"waiting_for": missing}
    parts = sorted(p for d in shard_dirs for p in d.glob("chunk-*.parquet"))
    samples = store.read_parquet(parts).sort(["problem_index", "sample_index"])
    timings = [json.loads(p.with_suffix(".json").read_text()) for p in parts if p.with_suffix(".json").exists()]
    train = samples.filter(lambda keep: keep, input_columns="keep")
    dropped = samples.filter(lambda keep: not keep, input_columns="keep").remove_columns("teacher_topk")
    store.write_parquet(train, out / "data" / "train.parquet")
    store.write_parquet(dropped, out / "data" / "dropped.parquet")
    stats = card.stats(samples, timings)
    if cfg.teacher_logprobs:
        stats["teacher_logprobs"] = kd.storage_stats(train, cfg.logprobs_k, models.vocab_size(models.resolve(cfg.model)))
    store.write_text(out / "stats.json", json.dumps(stats, indent=2))
    store.write_text(out / "README.md", card.dataset_card(cfg, stats))
    if cfg.push_to_hub:
        import datasets

        datasets.DatasetDict({"train": train, "dropped": dropped}).push_to_hub(cfg.push_to_hub)
    return stats
