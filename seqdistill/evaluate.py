"""`seqdistill eval`: score teachers and students on reasoning benchmarks with vLLM, side by side.

    seqdistill eval --config pipelines/eval-quickstart.yaml
    seqdistill eval --set 'models=[{model: Qwen/Qwen2.5-1.5B-Instruct}]' 'benchmarks=[{name: gsm8k}, {name: math-500}]'

For every model and benchmark: k samples per problem from vLLM, answers extracted and
checked with math-verify (code: the tests; reasoning-gym: the task's own checker), and pass@1 (mean over the k samples, with its standard error), unbiased
pass@k, maj@k (equivalent answers vote together), the share of responses cut at max_tokens and the
mean response length. Writes OUTPUT_DIR/MODEL/BENCHMARK/{samples.parquet,results.json},
OUTPUT_DIR/results.json and OUTPUT_DIR/results.md (a side-by-side table). Problems are sampled in
chunks of `chunk_size`, each written whole to MODEL/BENCHMARK/chunks/ and seeded on its own: a
rerun skips the pairs already scored and the chunks already sampled, and draws what an
uninterrupted run would have. A model entry with `checkpoints: SFT_OUTPUT_DIR` scores every
checkpoint-STEP sft saved (LoRA adapters served on the base, unmerged) as a row NAME@STEP, and draws pass@1
by step in OUTPUT_DIR/pass_at_1_by_step.png, so the best checkpoint can be picked, not the last. With
`thinking_budget: [B1, B2, ...]` every benchmark is scored again under each budget as BENCHMARK@thinkB (the think
block cut at B tokens, closed, and the answer forced: s1's budget forcing, see `thinking`), and pass@1 against the
budget is drawn in OUTPUT_DIR/pass_at_1_by_budget.png.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from seqdistill import card, hub, metrics, models, store, trackers
from seqdistill.engines import engine, prompts, thinking
from seqdistill.checking import judge
from seqdistill.sources import problems as problemslib
from seqdistill.checking import verify
from seqdistill import config as configlib
from seqdistill.checking.code import CodeConfig, check_sandbox
from seqdistill.config import ConfigError
from seqdistill.engines.engine import EngineConfig, SamplingConfig
from seqdistill.hub import HubConfig
from seqdistill.sources.problems import PRESETS, ProblemSource
from seqdistill.engines.prompts import PromptConfig
from seqdistill.checking.verify import AnswerConfig

log = logging.getLogger(__name__)
EMBEDDED_HELDOUT = "embedded-heldout"
STEPS_FIGURE = "pass_at_1_by_step.png"  # pass@1 against the training step of `checkpoints` entries
BUDGET_FIGURE = "pass_at_1_by_budget.png"  # pass@1 against thinking_budget
BUDGET_MARK = "@think"  # BENCHMARK@thinkB: a benchmark scored under thinking budget B
STALE = "stale"  # pairs scored on weights that have changed since: kept, not read


@dataclass
class ModelEntry:
    model: str  # hub id, local dir, .gguf, or embedded:NAME (with LoRA checkpoints: the base student they were trained on)
    name: str | None = None  # label in the table; default: the last part of the model (or adapter, or checkpoints) path
    adapter: str | None = None  # a LoRA adapter directory, served through vLLM's LoRA support
    # an sft output_dir (or its checkpoints/ folder): one entry per checkpoint-STEP in it, named NAME@STEP, each a LoRA
    # adapter on `model` (a full fine-tune's: a model of its own); the checkpoints only, not the final OUTPUT_DIR/model
    checkpoints: str | None = None
    engine: EngineConfig | None = None  # this model's own engine (e.g. a served model: backend openai); None: eval's
    # not a setting (no annotation): {"of": NAME, "step": STEP} for an entry expanded from `checkpoints`
    checkpoint = None

    def label(self) -> str:
        path = Path(self.adapter or self.checkpoints or self.model)
        path = path.parent if self.checkpoints and path.name == "checkpoints" else path  # named after the sft run
        return self.name or path.name.replace("embedded:", "")


@dataclass
class BenchmarkConfig(ProblemSource):
    """A benchmark: a preset name (gsm8k, math-500, aime24, ...), embedded-heldout, or any problem source."""

    name: str = ""
    source: str = ""  # empty: the preset's hub dataset (or the embedded held-out set)
    samples: int | None = None  # k samples per problem; None: the preset's default, else sampling.n
    # think-block tokens before it is closed and the answer forced (eval's thinking_budget makes one entry per
    # budget); None: no budget
    thinking_budget: int | None = None

    def validate(self) -> list[str]:
        known = [*PRESETS, EMBEDDED_HELDOUT]
        if not self.name:
            return ["every benchmark needs a name"]
        if BUDGET_MARK in self.name and self.thinking_budget is None:
            return [f"benchmark {self.name}: names with {BUDGET_MARK} are kept for the entries thinking_budget makes; rename it"]
        if self.name not in known and not self.source and not self.preset:
            return [f"unknown benchmark {self.name!r}: known ones are {', '.join(known)}; "
                    "or give a preset (a slice of it: offset, num_problems) or a source file with its field mapping"]
        return super().validate()

    def problems_config(self) -> ProblemSource:
        import dataclasses

        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(ProblemSource)}
        if self.name == EMBEDDED_HELDOUT:
            fields.update(source="embedded", split="heldout")
        elif self.name in PRESETS and self.preset is None:
            fields["preset"] = self.name
        return ProblemSource(**fields)


@dataclass
class EvalConfig:
    models: list[ModelEntry] = field(default_factory=lambda: [ModelEntry(models.DEFAULT_MODEL)])
    benchmarks: list[BenchmarkConfig] = field(default_factory=lambda: [BenchmarkConfig(name=EMBEDDED_HELDOUT, num_problems=100)])
    output_dir: str = "outputs/eval"
    prompt: PromptConfig = field(default_factory=PromptConfig)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(n=4))  # R1: temperature 0.6, top_p 0.95
    engine: EngineConfig = field(default_factory=EngineConfig)
    answer: AnswerConfig = field(default_factory=AnswerConfig)
    code: CodeConfig = field(default_factory=CodeConfig)  # the sandbox that runs code benchmarks' tests
    pass_k: list[int] = field(default_factory=lambda: [1])  # pass@k and maj@k for each k (k <= samples); n always added
    greedy: bool = False  # temperature 0 and one sample per problem
    # s1's budget forcing: each benchmark scored again under each budget B as BENCHMARK@thinkB: the think block is cut
    # at B tokens (or ends), closed with </think>, and the answer sampled after it; pass@1 by budget is drawn
    thinking_budget: list[int] = field(default_factory=list)
    # a think block that ends sooner is continued after "Wait" (s1; at most 4 times, within the budget); 0: never
    min_thinking_tokens: int = 0
    answer_tokens: int = 256  # under a budget (or min_thinking_tokens): the answer's tokens after the think block
    # written after the closed think block to start the answer (s1: "Final Answer:"), e.g. "The answer is \\boxed{"
    answer_prefix: str = ""
    compare: list[list[str]] = field(default_factory=list)  # [[baseline, model], ...] by name: pass@1 difference ± paired s.e. and flipped problems
    chunk_size: int = 256  # problems per part file: the unit of resume (each chunk is seeded on its own)
    overwrite: bool = False
    push_to_hub: str | None = None  # hub dataset repo (user/name): results, an eval card and per-sample details
    hub: HubConfig = field(default_factory=HubConfig)  # how push_to_hub pushes
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])  # pass@k, maj@k to: tensorboard, wandb, trackio, none
    run_name: str | None = None  # the trackers' run group (wandb group); a pipeline sets its own
    # not a setting (no annotation: not a dataclass field): directories an earlier stage of the pipeline writes
    # (PipelineConfig sets them), so a model or adapter under one (e.g. RUN_DIR/sft/merged) need not exist yet
    planned = ()

    def validate(self) -> list[str]:
        errors = hub.check(self.push_to_hub) + trackers.check(self.report_to) + judge.check(self.answer.judge)
        entries = []
        for m in self.models:  # each checkpoint is checked as the model entry it becomes
            problems = checkpoint_problems(m, self.planned)
            errors += [f"models[{m.label()}]: {p}" for p in problems]
            if not problems:
                entries += expand([m])
        for m in entries:
            errors += [f"models[{m.label()}]: {p}" for p in engine.check_backend(self.engine_of(m), self.sampling, self.prompt.prefill)]
            errors += [f"models[{m.label()}]: {p}" for p in prompts.check_served_chat(self.prompt, self.engine_of(m))]
            if m.adapter and self.engine_of(m).backend == "openai":
                errors.append(f"models[{m.label()}]: an adapter can't be loaded into a server from here; serve it "
                              "(vllm serve --lora-modules NAME=DIR) and name it in engine.served_model")
            errors += [f"models[{m.label()}]: {p}" for p in models.check(m.model, planned=self.planned)]
            if m.adapter and not models.will_exist(m.adapter, self.planned) and not (Path(m.adapter) / "adapter_config.json").is_file():
                errors.append(f"models[{m.label()}]: adapter {m.adapter} has no adapter_config.json")
        labels = [m.label() for m in entries]
        if len(set(labels)) != len(labels):
            errors.append(f"model names must be unique, got {labels}; set name: for each")
        if self.chunk_size < 1:
            errors.append(f"chunk_size must be at least 1, got {self.chunk_size}")
        budgets = [*self.thinking_budget, *(b.thinking_budget for b in self.benchmarks if b.thinking_budget is not None)]
        errors += thinking.check([self.engine_of(m) for m in entries], budgets, self.min_thinking_tokens,
                                 self.answer_tokens)
        if len(set(self.thinking_budget)) != len(self.thinking_budget):
            errors.append(f"thinking_budget lists a budget twice: {self.thinking_budget}")
        if not self.models or not self.benchmarks:
            errors.append("give at least one model and one benchmark")
        errors += self.compare_problems()
        for b in self.benchmarks:
            n = 1 if self.greedy else self.samples(b)
            errors += [f"benchmarks[{b.name}]: pass@{k} needs k <= samples per problem ({n}); "
                       "raise samples or lower pass_k" for k in self.pass_k if k > n]
        return errors

    def compare_problems(self) -> list[str]:
        labels, errors = [m.label() for m in expand(self.models)], []
        # NAME@STEP of checkpoints a pipeline's sft has yet to write: known at run time (with_checkpoints checks it then)
        later = tuple(f"{m.label()}@" for m in self.models if m.checkpoints and models.will_exist(m.checkpoints, self.planned))
        for i, pair in enumerate(self.compare):
            unknown = [name for name in pair if name not in labels
                       and not (name.startswith(later) and name.rpartition("@")[2].isdigit())]
            if len(pair) != 2 or pair[0] == pair[1]:
                errors.append(f"compare[{i}] must name two different models as [baseline, model], got {pair}")
            elif unknown:
                errors.append(f"compare[{i}]: no model named {unknown[0]!r}; models are {', '.join(labels)}")
        return errors

    def engine_of(self, m: ModelEntry) -> EngineConfig:
        return m.engine or self.engine

    def samples(self, b: BenchmarkConfig) -> int:
        if self.greedy:
            return 1
        preset = b.problems_config().preset  # a benchmark named freely keeps its preset's samples
        return b.samples or (PRESETS[preset].samples if preset in PRESETS else self.sampling.n)

    def thinks(self, b: BenchmarkConfig) -> bool:
        """`b` is sampled in phases (a think block with a budget or a minimum, then the answer)."""
        return b.thinking_budget is not None or self.min_thinking_tokens > 0

    def max_response_tokens(self, b: BenchmarkConfig) -> int:
        if not self.thinks(b):
            return self.sampling.max_tokens
        # the prefix's characters bound its tokens
        return thinking.longest(b.thinking_budget or self.sampling.max_tokens, self.answer_tokens + len(self.answer_prefix))


# ---------------------------------------------------------------- thinking budgets


def budgeted(cfg: EvalConfig) -> list[BenchmarkConfig]:
    """Each benchmark without a budget of its own once per `thinking_budget`, as NAME@thinkB (all as they are without)."""
    out = []
    for b in cfg.benchmarks:
        if b.thinking_budget is not None or not cfg.thinking_budget:
            out.append(b)
            continue
        source = {f.name: getattr(b.problems_config(), f.name) for f in dataclasses.fields(ProblemSource)}
        out += [BenchmarkConfig(**source, name=f"{b.name}{BUDGET_MARK}{budget}", samples=cfg.samples(b),
                                thinking_budget=budget) for budget in cfg.thinking_budget]
    return out


def budget_series(results: dict) -> dict[str, dict[int, dict]]:
    """The budgeted benchmarks by model and budget: {MODEL: {B: {benchmark: result}}} (benchmark without @thinkB)."""
    series = {}
    for model, per_bench in results.items():
        for bench, r in per_bench.items():
            budget = (r.get("thinking") or {}).get("budget")
            if budget is not None:
                base = bench.rpartition(BUDGET_MARK)[0] if BUDGET_MARK in bench else bench
                series.setdefault(model, {}).setdefault(budget, {})[base] = r
    return {model: dict(sorted(b.items())) for model, b in series.items() if len(b) > 1}


# ---------------------------------------------------------------- every checkpoint of an sft run


def checkpoint_dirs(path: str) -> list[tuple[int, Path]]:
    """TRL's checkpoint-STEP folders in an sft output_dir's checkpoints/ (or in `path` itself), by step."""
    root = Path(path).expanduser()
    root = root / "checkpoints" if (root / "checkpoints").is_dir() else root
    return sorted((int(p.name.split("-", 1)[1]), p) for p in root.glob("checkpoint-*")
                  if p.is_dir() and p.name.split("-", 1)[1].isdigit())


def checkpoint_problems(m: ModelEntry, planned=()) -> list[str]:
    """A `checkpoints` setting: without `adapter`, and (unless a pipeline's sft writes it: only the shape is checked)
    a folder that holds checkpoints, whose LoRA adapters go on a base model, not on another adapter."""
    if not m.checkpoints:
        return []
    if m.adapter:
        return [f"checkpoints and adapter can't be combined: every checkpoint in {m.checkpoints} is evaluated as its own "
                "adapter on model (the base student); drop adapter"]
    if models.will_exist(m.checkpoints, planned):
        return []
    if not Path(m.checkpoints).expanduser().is_dir():
        return [f"checkpoints {m.checkpoints} does not exist; point at an sft output_dir (or its checkpoints/ folder)"]
    found = checkpoint_dirs(m.checkpoints)
    if not found:
        return [f"checkpoints {m.checkpoints} holds no checkpoint-STEP folder (sft writes one every save_steps, keeping "
                "save_total_limit); lower save_steps, or evaluate the final model with model or adapter"]
    if (found[0][1] / "adapter_config.json").is_file() and (Path(m.model).expanduser() / "adapter_config.json").is_file():
        return [f"model {m.model} is a LoRA adapter; with LoRA checkpoints, model is the base student they were trained on"]
    return []


def expand(entries: list[ModelEntry]) -> list[ModelEntry]:
    """Each entry with `checkpoints` as one entry per checkpoint, by step: NAME@STEP, an adapter on its `model`
    (a full fine-tune's checkpoint: the model itself). An entry whose checkpoints don't exist yet stays as it is."""
    out = []
    for m in entries:
        found = checkpoint_dirs(m.checkpoints) if m.checkpoints else []
        if not found:
            out.append(m)
        for step, path in found:
            lora = (path / "adapter_config.json").is_file()
            entry = ModelEntry(m.model if lora else str(path), name=f"{m.label()}@{step}",
                               adapter=str(path) if lora else None, engine=m.engine)
            entry.checkpoint = {"of": m.label(), "step": step}
            out.append(entry)
    return out


def with_checkpoints(cfg: EvalConfig) -> EvalConfig:
    """`cfg` with its `checkpoints` and thinking budgets expanded, checked again: in a pipeline checkpoints exist only
    once sft has run."""
    if not any(m.checkpoints for m in cfg.models) and not cfg.thinking_budget:
        return cfg
    # nothing is planned any more: all must exist now
    work = dataclasses.replace(cfg, models=expand(cfg.models), benchmarks=budgeted(cfg))
    errors = work.validate()
    if errors:
        raise ConfigError(errors)
    return work


def output_layout(cfg: EvalConfig) -> store.Layout:
    per_model = tuple(f"models.*.{key}" for key in engine.OPERATIONAL)  # a model's own engine, as eval's
    samples = tuple(m.label() for m in expand(cfg.models))  # compare is read off the saved samples: changing it samples nothing
    return store.Layout(owned=(*samples, store.RESULTS_FILE, store.RESULTS_TABLE, STEPS_FIGURE, BUDGET_FIGURE, "runs",
                               STALE, hub.MARKER),
                        marker=store.RESULTS_FILE,
                        ignore=(*engine.OPERATIONAL, *per_model, *judge.OPERATIONAL, "push_to_hub", "hub", "report_to",
                                "run_name"),
                        rebuild=("compare",), parts=samples)


def check(cfg: EvalConfig):
    """Everything checked before any engine starts or request is sent (`seqdistill run` calls it before its first
    stage): (benchmark rows, resolved models, engine groups, prompts per group and benchmark)."""
    for m in cfg.models:
        engine.check_devices(cfg.engine_of(m))  # data-parallel ranks the node can hold
    benchmarks = {b.name: load_benchmark(b) for b in cfg.benchmarks}
    for b in cfg.benchmarks:
        verify.check_golds(benchmarks[b.name], cfg.answer, f"benchmarks[{b.name}]", b.source or b.name)
    judge.preflight(cfg.answer, [row for rows in benchmarks.values() for row in rows])  # answer.judge's server
    check_sandbox(cfg.code, [row for rows in benchmarks.values() for row in rows])  # refused here, not after sampling
    resolved = {m.model: models.resolve(m.model) for m in cfg.models}
    for m in cfg.models:
        check_adapter(m, resolved[m.model])
    template = prompts.load_template(cfg.prompt.template)
    users = {b.name: [prompts.render(template, row) for row in benchmarks[b.name]] for b in cfg.benchmarks}
    groups = {}  # one engine per base model and engine settings (a model's adapters share it)
    for m in cfg.models:
        groups.setdefault((m.model, json.dumps(configlib.to_dict(cfg.engine_of(m)), sort_keys=True)), []).append(m)
    batches = {}  # group -> benchmark -> prompts, as that group's backend takes them
    for key, entries in groups.items():
        base, eng_cfg = key[0], cfg.engine_of(entries[0])
        batches[key] = {name: engine.make_prompts(resolved[base], eng_cfg, cfg.prompt, texts, range(len(texts)))
                        for name, texts in users.items()}
        longest = max(cfg.max_response_tokens(b) for b in cfg.benchmarks)  # under a budget: all phases together
        engine.preflight(resolved[base], eng_cfg, batches[key], longest)
    return benchmarks, resolved, groups, batches


def run(cfg: EvalConfig, llms: dict | None = None) -> dict:
    """Score every model on every benchmark; `llms` maps a model reference to a running vLLM engine (tests)."""
    out = Path(cfg.output_dir)
    work = with_checkpoints(cfg)  # the models to score; cfg, as the user gave it, is what is saved and compared
    benchmarks, resolved, groups, batches = check(work)
    output_layout(cfg).prepare(out, cfg, cfg.overwrite)

    failures = []
    for key, entries in groups.items():
        base, eng_cfg, batch = key[0], cfg.engine_of(entries[0]), batches[key]
        lora = [m for m in entries if m.adapter]
        extra = {"enable_lora": True, "max_lora_rank": max(adapter_rank(m.adapter) for m in lora)} if lora else {}
        opener = lambda: engine.open_engine(resolved[base], eng_cfg, (llms or {}).get(base), **extra)  # noqa: E731
        with engine.lazy(opener) as get_engine:
            for m in entries:
                for b in work.benchmarks:
                    if not scored(out, m, b):
                        failures += evaluate(cfg, get_engine, m, b, entries.index(m), benchmarks[b.name], batch[b.name], out)
    if failures:
        raise ConfigError(f"{len(failures)} requests failed after retries (first: {failures[0]}); "
                          "rerun the same command to retry only those")
    results = collect(work, out)
    if not cfg.planned:  # `seqdistill run` does this itself, after its eval stage
        scores_on_sft_cards(work, out)
    trackers.log_figures(cfg.report_to, out, "eval", cfg.run_name, figures(results), configlib.to_dict(cfg))
    hub.push("eval", cfg)
    return results


def scores_on_sft_cards(cfg: EvalConfig, out: Path) -> None:
    """A model that is an sft output (SFT_DIR/model or SFT_DIR/merged, with its card) gets its scores on its model
    cards, pushed again where that sft pushed them: what `seqdistill run` does after its eval stage."""
    dirs = {Path(m.adapter or m.model).expanduser().resolve().parent for m in cfg.models
            if Path(m.adapter or m.model).name in ("model", "merged")}
    for sft_dir in sorted(d for d in dirs if (d / "metrics.json").is_file()):
        for path in card.add_eval_results(sft_dir, out):
            log.info("eval results -> %s", path)
        hub.push_saved_cards(sft_dir, "eval")


def weights_stamp(m: ModelEntry) -> str | None:
    """What a scored pair remembers of the weights it scored: the names, sizes and modification times of a local model's
    (or adapter's) weight files; None for a hub id or an embedded model, which don't change under it."""
    path = Path(m.adapter or m.model).expanduser()
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf")) if path.is_dir() else []
    if not files:
        return None
    what = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha1(json.dumps(what).encode()).hexdigest()[:16]


def scored(out: Path, m: ModelEntry, b: BenchmarkConfig) -> bool:
    """Whether the pair is scored, on the weights it names now. A pair scored on weights that have changed since (sft
    trained again into the same folder) is moved, whole, to OUTPUT_DIR/stale/ and scored again."""
    where = out / m.label() / b.name
    if not (where / store.RESULTS_FILE).is_file():
        return False
    stamp = weights_stamp(m)
    if json.loads((where / store.RESULTS_FILE).read_text()).get("weights", stamp) == stamp:
        return True
    aside = out / STALE / f"{m.label()}-{b.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    aside.parent.mkdir(parents=True, exist_ok=True)
    where.rename(aside)
    log.warning("%s changed since it was scored on %s: scoring it again (the earlier scores are kept in %s)",
                m.adapter or m.model, b.name, aside)
    return False


def figures(results: dict) -> dict:
    """The trackers' figures: pass@k, maj@k, truncated share and speed per model and benchmark."""
    keep = lambda k: k.startswith(("pass@", "maj@")) or k in ("truncated_share", "generated_tokens_per_second")  # noqa: E731
    return {f"{model}/{bench}/{k}": v for model, per_bench in results.items() for bench, r in per_bench.items()
            for k, v in r.items() if keep(k)}


def load_benchmark(b: BenchmarkConfig) -> list[dict]:
    rows = problemslib.load(b.problems_config())
    if not rows:
        raise ConfigError(f"benchmark {b.name} has no problems")
    return rows


def check_adapter(m: ModelEntry, base_path: str) -> None:
    """An adapter must have been trained on the model it is paired with."""
    if not m.adapter:
        return
    trained_on = adapter_config(m.adapter).get("base_model_name_or_path")
    same = trained_on in (m.model, base_path) or (trained_on and Path(trained_on).exists() and Path(base_path).exists()
                                                  and Path(trained_on).resolve() == Path(base_path).resolve())
    if trained_on and not same:
        raise ConfigError(f"adapter {m.adapter} was trained on {trained_on}, not {m.model}; "
                          f"pair it with its own base model")


def adapter_rank(path: str) -> int:
    return int(adapter_config(path).get("r", 16))


def adapter_config(path: str) -> dict:
    return store.read_json(Path(path) / "adapter_config.json", "point at the adapter directory `seqdistill sft` wrote "
                           "(OUTPUT_DIR/model), or train it again")


def evaluate(cfg, get_engine, m: ModelEntry, b: BenchmarkConfig, lora_id: int, rows, batch: list, out: Path) -> list[str]:
    """Sample chunk by chunk (the unit of resume), then score all samples; returns failed requests' errors."""
    n = cfg.samples(b)
    sampling = dataclasses.replace(cfg.sampling, n=n, **({"temperature": 0.0} if cfg.greedy else {}))
    req = engine.Request(sampling, think_tag=cfg.answer.think_tag,
                         lora=(m.label(), lora_id + 1, m.adapter) if m.adapter else None)
    where = out / m.label() / b.name
    tokenizer, thought = None, None

    def to_rows(i: int, output: engine.Output) -> list[dict]:
        prompt = tok().decode(batch[i].token_ids) if batch[i].token_ids is not None else "\n".join(
            f"{msg['role']}: {msg['content']}" for msg in batch[i].messages)  # exactly what the model read
        texts = [cfg.prompt.prefill + c.text for c in output.completions]
        judged = verify.judge_many(texts, [rows[i]] * len(texts), cfg.answer, cfg.code)  # programs run in parallel
        return [record(rows[i], prompt, j, text, c, v) | (thought[i][j] if thought else {})
                for j, (text, c, v) in enumerate(zip(texts, output.completions, judged))]

    def tok():
        nonlocal tokenizer
        if tokenizer is None:
            tokenizer = models.load_tokenizer(models.resolve(m.model))
        return tokenizer

    # every model sees the same seeds; a resume draws the same
    how = dict(seed_key=(cfg.engine_of(m).seed,), chunk_size=cfg.chunk_size, desc=f"{m.label()} on {b.name}")
    if cfg.thinks(b):  # in phases, each resumable: think (within the budget), Wait, answer
        outputs, thought, parts = thinking.sample(
            get_engine, batch, where / "chunks", req, encode=lambda text: tok().encode(text, add_special_tokens=False),
            budget=b.thinking_budget, min_tokens=cfg.min_thinking_tokens, answer_tokens=cfg.answer_tokens,
            answer_prefix=cfg.answer_prefix, **how)
    else:
        parts = engine.sample_in_chunks(get_engine, batch, where / "chunks", req, to_rows=to_rows, **how)
    summary = engine.chunk_summary(parts, cfg.engine_of(m))
    if summary["failed_requests"]:
        return [e["error"] for p in parts for e in json.loads(p.with_suffix(".json").read_text())["failed"].values()]
    if cfg.thinks(b):
        samples = [row for i, output in enumerate(outputs) for row in to_rows(i, output)]
    else:
        samples = store.read_parquet(parts).to_list()
    judged = judge_samples(cfg, samples, rows, where / judge.JOURNAL) if cfg.answer.judge.model is not None else None
    code, exact = verify.is_code(rows[0]), verify.is_reasoning_gym(rows[0])
    per_problem = per_problem_records(samples, code, exact)
    result = metrics.score(list(per_problem.values()), sorted(set(cfg.pass_k) | {n}))
    if code:  # no majority vote over programs: maj@k is not defined for code
        result = {k: v for k, v in result.items() if not k.startswith("maj@")}
        result["verdicts"] = dict(collections.Counter(r["verdict"] for r in samples).most_common())
    seconds = summary["seconds"]
    tokens = sum(r["response_tokens"] for r in samples)
    result.update({
        "model": m.model, "adapter": m.adapter, "weights": weights_stamp(m), "benchmark": b.name, "seconds": round(seconds, 1),
        "generated_tokens_per_second": round(tokens / seconds, 1), "problems_per_second": round(len(rows) / seconds, 3),
        "settings": {"sampling": configlib.to_dict(cfg.sampling) | {"n": n, "greedy": cfg.greedy}, "chunk_size": cfg.chunk_size,
                     "engine": configlib.to_dict(cfg.engine_of(m)),
                     "prompt": configlib.to_dict(cfg.prompt), "answer": configlib.to_dict(cfg.answer),
                     "problems": configlib.to_dict(b.problems_config().resolved())},
        "run": configlib.run_info(),
    })
    if "usage" in summary:
        result["requests"] = summary["usage"]
    if cfg.thinks(b):  # the think blocks: their budget, how long they ran, how often the budget cut them
        result["thinking"] = {"budget": b.thinking_budget, "min_tokens": cfg.min_thinking_tokens,
                              "answer_tokens": cfg.answer_tokens, "answer_prefix": cfg.answer_prefix,
                              "mean_thinking_tokens": round(sum(r["thinking_tokens"] for r in samples) / len(samples), 1),
                              "budget_hit_share": round(sum(r["budget_hit"] for r in samples) / len(samples), 4),
                              "mean_waits": round(sum(r["waits"] for r in samples) / len(samples), 3)}
    if judged is not None:  # pass@1 counts what the judge found correct: the table marks it
        result["judge"] = judged
    if result["truncated_share"] > 0.05:
        limit = ("answer_tokens", cfg.answer_tokens) if cfg.thinks(b) else ("sampling.max_tokens", cfg.sampling.max_tokens)
        log.warning("%s on %s: %.0f%% of responses hit %s=%d; scores are biased low, raise it", m.label(), b.name,
                    100 * result["truncated_share"], *limit)
    store.write_parquet(samples, where / "samples.parquet")
    store.write_text(where / store.RESULTS_FILE, json.dumps(result, indent=2))  # written last: marks the pair done
    log.info("%s on %s: pass@1 %.3f ± %.3f", m.label(), b.name, result["pass@1"], result["pass@1_stderr"])
    return []


def judge_samples(cfg: EvalConfig, samples: list[dict], rows: list[dict], journal: Path) -> dict:
    """answer.judge on the samples no rule decided (judge.undecided): one it finds correct counts as correct, with
    verdict `judged`; each it read gets its verdict in verdict_detail. Returns its counts for results.json."""
    kinds = {row["id"]: verify.verifier_name(row) for row in rows}
    todo = [r for r in samples if not r["correct"] and r["finish_reason"] == "stop"  # a cut response is not judged
            and judge.undecided(kinds[r["problem_id"]], r["verdict"], r["gold"], cfg.answer)]
    verdicts, stats = judge.ask(cfg.answer, [(r["question"], r["gold"], r["response"]) for r in todo], journal)
    for r, verdict in zip(todo, verdicts):
        r["verdict_detail"] = judge.detail(verdict)
        if verdict:
            r.update(correct=True, verdict="judged")
    return stats


def record(row: dict, prompt: str, j: int, text: str, completion, judged: verify.Judgement) -> dict:
    """One sample: its prompt, response, extracted answer (a program for code) and verdict."""
    return {"problem_id": row["id"], "sample_index": j, "question": row["question"], "prompt": prompt, "gold": row["answer"],
            "response": text, "answer": judged.answer, "correct": judged.correct, "verdict": judged.verdict,
            "verdict_detail": judged.detail, "finish_reason": completion.finish_reason, "response_tokens": completion.tokens}


def collect(cfg: EvalConfig, out: Path) -> dict:
    """All results, as JSON and as a Markdown table with one row per model and one column group per benchmark;
    each `compare` pair's paired comparison goes under results[model][benchmark]["compare"][baseline], a checkpoint's
    entry and step under ...["checkpoint"] (then pass@1 by step is drawn in STEPS_FIGURE)."""
    results = {m.label(): {b.name: json.loads((out / m.label() / b.name / store.RESULTS_FILE).read_text())
                           for b in cfg.benchmarks} for m in cfg.models}
    for m in cfg.models:
        if m.checkpoint:  # its training step: for the by-step figure and the best-step line
            for r in results[m.label()].values():
                r["checkpoint"] = m.checkpoint
    entries = {m.label(): m for m in cfg.models}
    for base, model in cfg.compare:
        for b in cfg.benchmarks:
            records = [read_per_problem(out / name / b.name / "samples.parquet") for name in (base, model)]
            ids = sorted(records[0])
            if sorted(records[1]) != ids:  # same benchmark rows by construction; a torn output directory is not
                raise ConfigError(f"compare {base} vs {model} on {b.name}: the two answered different problems; "
                                  "rerun eval with --overwrite")
            paired = metrics.paired(*[[r[i]["correct"] for i in ids] for r in records])
            paired["same_seeds"] = cfg.engine_of(entries[base]).seed == cfg.engine_of(entries[model]).seed
            results[model][b.name].setdefault("compare", {})[base] = paired
    store.write_text(out / store.RESULTS_FILE, json.dumps(results, indent=2))
    store.write_text(out / store.RESULTS_TABLE, table(results))
    series = checkpoint_series(results)
    if series:
        log.info("pass@1 by checkpoint step: %s", out / steps_figure(series, out / STEPS_FIGURE))
    budgets = budget_series(results)
    if budgets:
        log.info("pass@1 by thinking budget: %s", out / budget_figure(budgets, out / BUDGET_FIGURE))
    return results


def checkpoint_series(results: dict) -> dict[str, dict[int, dict]]:
    """The rows expanded from `checkpoints`, by entry and step: {NAME: {STEP: {benchmark: result}}}."""
    series = {}
    for per_bench in results.values():
        c = next(iter(per_bench.values())).get("checkpoint")
        if c:
            series.setdefault(c["of"], {})[c["step"]] = per_bench
    return {name: dict(sorted(steps.items())) for name, steps in series.items()}


def best_steps(results: dict) -> str:
    """A line per `checkpoints` entry: its checkpoint with the highest pass@1 on each benchmark (empty without any)."""
    lines = []
    for name, steps in checkpoint_series(results).items():
        best = {b: max(steps, key=lambda s: steps[s][b]["pass@1"]) for b in next(iter(steps.values()))}  # ties: earliest
        lines.append(f"Best checkpoint of {name} by pass@1: "
                     + ", ".join(f"{b} step {s} ({steps[s][b]['pass@1']:.3f})" for b, s in best.items()) + ".")
    return "\n" + "\n".join(lines) + "\n" if lines else ""


def steps_figure(series: dict[str, dict[int, dict]], path: Path, by: str = "checkpoint",
                 xlabel: str = "training step of the checkpoint", log_x: bool = False) -> str:
    """pass@1 (± s.e.) of each checkpoint against its training step (or of each model against its thinking budget),
    one line per benchmark (and entry); here, not in report (which draws it too, beside report.md), as report imports
    this module."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name, steps in series.items():
        for bench in next(iter(steps.values())):
            ax.errorbar(list(steps), [r[bench]["pass@1"] for r in steps.values()], capsize=3, fmt="-o",
                        yerr=[r[bench]["pass@1_stderr"] for r in steps.values()],
                        label=bench if len(series) == 1 else f"{name} / {bench}")
    if log_x:  # budgets double: each its own tick
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({x for steps in series.values() for x in steps}), labels=None)
        ax.xaxis.set_major_formatter("{x:.0f}")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel=xlabel, ylabel="pass@1 (± s.e.)", ylim=(0, 1.02),
           title=f"pass@1 by {by}: " + ", ".join(series))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name


def budget_figure(series: dict[str, dict[int, dict]], path: Path) -> str:
    return steps_figure(series, path, "thinking budget", "thinking budget (tokens of the think block)", log_x=True)


def per_problem_records(samples: list[dict], code: bool = False, exact: bool = False) -> dict[str, dict]:
    """One record per problem from its samples, as metrics.score takes them (code: no answers to vote on;
    exact: majority by answer string)."""
    per_problem = {}
    for r in samples:
        p = per_problem.setdefault(r["problem_id"], {"gold": r["gold"], "answers": [], "correct": [], "truncated": [],
                                                     "lengths": [], "exact": exact})
        for key, value in (("answers", None if code else r["answer"]), ("correct", r["correct"]), ("truncated", r["finish_reason"] == "length"),
                           ("lengths", r["response_tokens"])):
            p[key].append(value)
        if judge.read(r):  # the judge decided where math-verify could not: the majority answer is right as judged
            p["exact"] = True
    return per_problem


def read_samples(path: Path) -> list[dict]:
    """A saved MODEL/BENCHMARK/samples.parquet, by problem, then sample."""
    return sorted(store.read_parquet([path]).to_list(), key=lambda r: (r["problem_id"], r["sample_index"]))


def read_per_problem(path: Path, code: bool = False, exact: bool = False) -> dict[str, dict]:
    """The per-problem records of a saved MODEL/BENCHMARK/samples.parquet, samples in order."""
    return per_problem_records(read_samples(path), code, exact)


def table(results: dict) -> str:
    benches = list(next(iter(results.values())))
    header = ["model"]
    for b in benches:
        r = next(iter(results.values()))[b]
        k = r["samples_per_problem"]
        header += [f"{b} pass@1"] + ([f"{b} pass@{k}", f"{b} maj@{k}"] if k > 1 else []) + [f"{b} trunc"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for model, per_bench in results.items():
        cells = [model]
        for b in benches:
            r = per_bench[b]
            k = r["samples_per_problem"]
            judged = " †" if r.get("judge", {}).get("judged_correct") else ""  # counts the LLM judge's verdicts
            cells += [f"{r['pass@1']:.3f} ± {r['pass@1_stderr']:.3f}{judged}"]
            cells += [f"{r[f'pass@{k}']:.3f}", f"{r[f'maj@{k}']:.3f}" if f"maj@{k}" in r else "n/a"] if k > 1 else []
            cells += [f"{r['truncated_share']:.1%}"]
        lines.append("| " + " | ".join(cells) + " |")
    first = next(iter(next(iter(results.values())).values()))
    sampling = first["settings"]["sampling"]
    how = "greedy" if sampling["greedy"] else f"temperature {sampling['temperature']}, top_p {sampling['top_p']}"
    judges = sorted({f"`{r['judge']['model']}` ({r['judge']['prompt']})" for per_bench in results.values()
                     for r in per_bench.values() if r.get("judge", {}).get("judged_correct")})
    marked = (f"† counts samples the LLM judge {', '.join(judges)} found correct where math-verify could not decide "
              "(answer.judge).\n" if judges else "")
    return ("\n".join(lines) + f"\n\npass@1 is the mean over k samples per problem ± its standard error; {how}.\n"
            + marked + best_steps(results) + paired_table(results))


def paired_table(results: dict) -> str:
    """The `compare` pairs: difference in pass@1 ± paired standard error and flipped problems (empty without pairs)."""
    lines, seeds = [], []
    for model, per_bench in results.items():
        for bench, r in per_bench.items():
            for base, c in r.get("compare", {}).items():
                seeds.append(c["same_seeds"])
                lines.append(f"| {bench} | {model} − {base}{'' if c['same_seeds'] else ' *'} | {c['delta_pass@1']:+.3f} ± "
                             f"{c['delta_pass@1_stderr']:.3f} | {c['gained']} | {c['lost']} | {c['problems']} |")
    if not lines:
        return ""
    return ("\n| benchmark | model − baseline | Δ pass@1 ± paired s.e. | gained | lost | problems |\n"
            "| --- | --- | --- | --- | --- | --- |\n" + "\n".join(lines) + "\n\nBoth models answered the same problems"
            + (" with the same seeds" if all(seeds) else " (* with different engine seeds)") + ". Δ pass@1 is the mean over problems of the "
            "difference in each problem's share of right samples; its paired s.e. is sd(differences)/√problems. "
            "A problem counts as solved when at least half of its samples are right: gained = solved by the model, "
            "not by the baseline; lost = the reverse.\n")
