"""`seqdistill generate`: sample reasoning traces from a teacher with vLLM into a verified, filtered dataset.

    seqdistill generate --config pipelines/generate-quickstart.yaml
    seqdistill generate --set model=Qwen/Qwen2.5-7B-Instruct problems.preset=gsm8k problems.source= \
        problems.split=train output_dir=outputs/gsm8k-traces

Writes OUTPUT_DIR/data/train.parquet (kept traces in TRL's `messages` format, with provenance),
OUTPUT_DIR/data/dropped.parquet (every dropped sample with its reason), a dataset card
(OUTPUT_DIR/README.md, so `datasets.load_dataset(OUTPUT_DIR)` works), stats.json and the resolved
config. With preference.pairs, OUTPUT_DIR/data/preference.parquet holds DPO pairs (a kept trace
against a wrong or truncated one of the same problem). With answer.judge, an LLM reads the samples no rule
decided when the dataset is joined (seqdistill.checking.judge; its replies in OUTPUT_DIR/judge.jsonl). Work is written
chunk by chunk under OUTPUT_DIR/samples/; rerunning the same command resumes. `num_shards`/`shard_index` split a run into
disjoint parts for N jobs on N machines. `teachers` (instead of `model`) samples from several teachers, one after the
other, each with its own engine: every problem from each (or, with weights, from one drawn by weight); the rows name
their teacher, and the per-problem filters choose across teachers.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from seqdistill import card, hub, models, store, trackers
from seqdistill.sources import dedup, filters, problems as problemslib
from seqdistill.engines import engine, prompts, topk
from seqdistill.checking import judge, rgym, verify
from seqdistill.training import kd
from seqdistill import config as configlib
from seqdistill.checking.code import CodeConfig, check_sandbox
from seqdistill.config import ConfigError
from seqdistill.engines.engine import EngineConfig, SamplingConfig
from seqdistill.sources.filters import FilterConfig, PreferenceConfig
from seqdistill.hub import HubConfig
from seqdistill.sources.problems import ProblemsConfig
from seqdistill.engines.prompts import PromptConfig
from seqdistill.checking.verify import AnswerConfig
from seqdistill.checking import sandbox

log = logging.getLogger(__name__)
# the judge reads stored samples when the dataset is joined: changing it asks only what its journal lacks, samples nothing
OUTPUT = store.Layout(owned=("samples", "data", "README.md", store.STATS_FILE, "runs", hub.MARKER, judge.JOURNAL),
                      marker=store.STATS_FILE,
                      ignore=("shard_index", "push_to_hub", "hub", "report_to", "run_name", *engine.OPERATIONAL,
                              *(f"teachers.*.{key}" for key in engine.OPERATIONAL),  # a teacher's own engine
                              *judge.OPERATIONAL),
                      rebuild=(*(f"filters.{key}" for key in filters.SELECTION), "preference", "answer.judge"),
                      parts=("samples", judge.JOURNAL))


@dataclass
class TeacherEntry:
    model: str  # hub id, local dir, .gguf, or embedded:NAME
    name: str | None = None  # the rows' `teacher` and its samples folder; default: the model path's last part
    engine: EngineConfig | None = None  # this teacher's own engine (e.g. a served one: backend openai); None: generate's
    # with weights (every teacher one): each problem is sampled from one teacher, drawn by weight (seeded by the
    # problem); without: every teacher samples every problem
    weight: float | None = None

    def label(self) -> str:
        return self.name or Path(self.model.replace("embedded:", "")).name


@dataclass
class GenerateConfig:
    model: str = models.DEFAULT_MODEL  # the teacher: hub id, local dir, .gguf, or embedded:NAME
    # several teachers instead of `model`: [{model, name, engine, weight}], sampled one after the other; the rows'
    # `teacher` column names each, filters.max_per_problem and prefer choose across them, the card counts each
    teachers: list[TeacherEntry] = field(default_factory=list)
    output_dir: str = "outputs/generate"
    problems: ProblemsConfig = field(default_factory=ProblemsConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    answer: AnswerConfig = field(default_factory=AnswerConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)  # DPO pairs from the funnel (off by default)
    code: CodeConfig = field(default_factory=CodeConfig)  # the sandbox that runs code problems' tests
    teacher_logprobs: bool = False  # also store the teacher's top-k log-probs per token, for logit KD in sft
    logprobs_k: int = 20  # k of those top-k log-probs
    chunk_size: int = 256  # problems per part file: the unit of resume
    num_shards: int = 1  # split the problems into N disjoint parts (one job each) ...
    shard_index: int = 0  # ... and run this one
    overwrite: bool = False
    push_to_hub: str | None = None  # hub dataset repo (user/name) to push the dataset and its card to
    hub: HubConfig = field(default_factory=HubConfig)  # how push_to_hub pushes
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])  # funnel, tok/s, pass@k to: tensorboard, wandb, trackio, none
    run_name: str | None = None  # the trackers' run group (wandb group); a pipeline sets its own

    def validate(self) -> list[str]:
        errors = [f"model: {p}" for p in models.check(self.model)] + self.teacher_problems()
        if self.chunk_size < 1:
            errors.append(f"chunk_size must be at least 1, got {self.chunk_size}")
        if self.teacher_logprobs:
            errors += kd.check_logprobs_k(self.logprobs_k, self.engine)
        if not 0 <= self.shard_index < self.num_shards:
            errors.append(f"shard_index must be in [0, num_shards={self.num_shards}), got {self.shard_index}")
        for t in self.teacher_list():
            where = f"teachers[{t.label()}]: " if self.teachers else ""
            errors += [where + p for p in engine.check_backend(self.engine_of(t), self.sampling, self.prompt.prefill)]
            errors += [where + p for p in prompts.check_served_chat(self.prompt, self.engine_of(t))]
        errors += judge.check(self.answer.judge)
        named = [filters.eval_preset(src) for src in self.filters.decontaminate]
        sources = [("problems", self.problems), *((f"problems.mix[{k}]", m) for k, m in enumerate(self.problems.mix))]
        for where, source in sources:
            errors += [f"{where}.{p}" for p in rgym.benchmark_tasks(source, named, "filters.decontaminate")]
        return errors + hub.check(self.push_to_hub) + trackers.check(self.report_to)

    def teacher_problems(self) -> list[str]:
        if not self.teachers:
            return []
        errors = [f"teachers[{t.label()}].model: {p}" for t in self.teachers for p in models.check(t.model)]
        if self.model != models.DEFAULT_MODEL:
            errors.append("give the teacher in model or the teachers in teachers, not both")
        labels = [t.label() for t in self.teachers]
        if len(set(labels)) != len(labels):
            errors.append(f"teacher names must be unique, got {labels}; set name: for each")
        errors += [f"teachers: name {name!r} must be letters, digits, '.', '_' or '-' (it names a folder)"
                   for name in labels if not name or not all(c.isalnum() or c in "._-" for c in name)]
        weights = [t.weight for t in self.teachers]
        if any(w is not None for w in weights) and (None in weights or min(weights) <= 0):
            errors.append(f"teachers: give every teacher a weight > 0 (each problem then goes to one, drawn by weight), "
                          f"or none (each samples every problem); got {weights}")
        if self.teacher_logprobs and len(self.teachers) > 1:
            errors.append("teacher_logprobs with several teachers would mix their distributions in one KD target; "
                          "generate each teacher's traces with log-probs in a run of its own")
        return errors

    def teacher_list(self) -> list[TeacherEntry]:
        """The teachers: `teachers`, or `model` as the one teacher (its rows' `teacher` is the model reference)."""
        return self.teachers or [TeacherEntry(self.model, name=self.model)]

    def engine_of(self, t: TeacherEntry) -> EngineConfig:
        return t.engine or self.engine

    def assigned(self, rows: list[dict]) -> dict[str, list[int]]:
        """Which rows each teacher samples: all of them, or (weights) each row to one teacher drawn by weight."""
        teachers = self.teacher_list()
        if teachers[0].weight is None:
            return {t.label(): list(range(len(rows))) for t in teachers}
        total, out = sum(t.weight for t in teachers), {t.label(): [] for t in teachers}
        for i, row in enumerate(rows):  # seeded by the problem: the same teacher in every shard and rerun
            u, acc = engine.chunk_seed(self.engine.seed, "teacher", row["_index"]) / 2 ** 32 * total, 0.0
            for t in teachers:
                acc += t.weight
                if u < acc or t is teachers[-1]:
                    out[t.label()].append(i)
                    break
        return out


def check(cfg: GenerateConfig):
    """Everything that can fail, checked before the engine starts or a request is sent (`seqdistill run` calls
    it before its first stage), the judge's server included: (model path, problem rows, sandbox, user prompts,
    engine prompts, vocab size, problem funnel)."""
    teachers = cfg.teacher_list()
    for t in teachers:
        engine.check_devices(cfg.engine_of(t))  # data-parallel ranks the node can hold
    paths = {t.label(): models.resolve(t.model) for t in teachers}
    problem_funnel: dict[str, int] = {}
    rows = select_problems(cfg, problem_funnel)
    verify.check_golds(rows, cfg.answer, "problems", cfg.problems.source or cfg.problems.preset)
    judge.preflight(cfg.answer, rows)  # the judge's server, before the teacher's
    isolation = check_sandbox(cfg.code, rows)
    template = prompts.load_template(cfg.prompt.template)
    users = [prompts.render(template, row) for row in rows]
    batches = {}  # each teacher's prompts, as its backend takes them (its own chat template)
    for t in teachers:
        batches[t.label()] = engine.make_prompts(paths[t.label()], cfg.engine_of(t), cfg.prompt, users,
                                                 [row["_index"] for row in rows])
        engine.preflight(paths[t.label()], cfg.engine_of(t), {"problems": batches[t.label()]}, cfg.sampling.max_tokens)
    vocab = models.vocab_size(paths[teachers[0].label()]) if cfg.teacher_logprobs else 0
    return paths, rows, isolation, users, batches, vocab, problem_funnel


def run(cfg: GenerateConfig, llm=None, checked: tuple | None = None) -> dict:
    """Generate, filter and write the dataset; returns the stats. `llm` reuses a running vLLM engine (tests);
    `checked` is what `check(cfg)` returned when the caller (`seqdistill run`) has just called it."""
    out = Path(cfg.output_dir)
    paths, rows, isolation, users, batches, vocab, problem_funnel = checked or check(cfg)
    think = cfg.filters.require_think if cfg.filters.require_think is not None else f"<{cfg.answer.think_tag}>" in cfg.prompt.prefill
    OUTPUT.prepare(out, cfg, cfg.overwrite)

    req = engine.Request(cfg.sampling, logprobs_k=cfg.logprobs_k if cfg.teacher_logprobs else 0,
                         think_tag=cfg.answer.think_tag)
    shard_dir = out / "samples" / f"shard-{cfg.shard_index:05d}-of-{cfg.num_shards:05d}"
    teachers, assigned, parts = cfg.teacher_list(), cfg.assigned(rows), []
    for k, t in enumerate(teachers):  # one teacher after the other, each engine released before the next starts
        mine, eng_cfg = assigned[t.label()], cfg.engine_of(t)

        # ---- sample chunk by chunk; each finished chunk is one atomic file ----
        def to_rows(i: int, output: engine.Output) -> list[dict]:
            row = rows[mine[i]]
            samples = build_samples(cfg, row, users[mine[i]], output, vocab, t.label(), first=k * cfg.sampling.n)
            return filters.apply(samples, row["answer"], cfg.filters, cfg.answer, think, problem=row, code_cfg=cfg.code)

        where, seed_key = shard_dir, (eng_cfg.seed, cfg.shard_index, cfg.num_shards)
        if cfg.teachers:  # a folder and seeds of each teacher's own
            where, seed_key = shard_dir / t.label(), (*seed_key, t.label())
        reuse = llm.get(t.model) if isinstance(llm, dict) else llm
        opener = lambda: engine.open_engine(paths[t.label()], eng_cfg, reuse, max_logprobs=max(20, cfg.logprobs_k))  # noqa: E731
        with engine.lazy(opener) as get_engine:
            parts += engine.sample_in_chunks(get_engine, [batches[t.label()][i] for i in mine], where, req,
                                             chunk_size=cfg.chunk_size, to_rows=to_rows, seed_key=seed_key,
                                             features=sample_features(), desc=f"shard {cfg.shard_index}" + (f", {t.label()}" if cfg.teachers else ""))
    done = {"chunks": len(parts), "problems": len(rows), "isolation": isolation, "problem_funnel": problem_funnel}
    store.write_text(shard_dir / "DONE", json.dumps(done))
    return assemble(cfg, out)


def select_problems(cfg: GenerateConfig, funnel: dict | None = None) -> list[dict]:
    """The problems of this shard: loaded (every source of problems.mix), near-duplicates removed, decontaminated,
    then every num_shards-th one. `funnel` (when given) receives filters.problem_funnel's counts."""
    rows = problemslib.load(cfg.problems)
    for i, row in enumerate(rows):
        row["_index"] = i
    loaded, removed = len(rows), {}
    if cfg.filters.near_duplicate_problems is not None:
        found = dedup.near_duplicates([r["question"] for r in rows], cfg.filters.near_duplicate_problems)
        example = f"; e.g. {rows[found[0].index]['id']} repeats {rows[found[0].of]['id']}" if found else ""
        log.info("near-duplicate problems (Jaccard >= %s) removed: %d of %d%s", cfg.filters.near_duplicate_problems,
                 len(found), len(rows), example)
        gone = {d.index for d in found}
        rows, removed["near_duplicate_problem"] = [r for i, r in enumerate(rows) if i not in gone], len(found)
    if cfg.filters.decontaminate:
        index = filters.contamination_index(cfg.filters.decontaminate, cfg.filters.decontaminate_ngram)
        clean = [r for r in rows if not filters.is_contaminated(r["question"], index, cfg.filters.decontaminate_ngram)]
        log.info("decontamination against %s removed %d of %d problems", cfg.filters.decontaminate, len(rows) - len(clean), len(rows))
        rows, removed["contaminated"] = clean, len(rows) - len(clean)
    if funnel is not None:
        funnel.update(filters.problem_funnel(loaded, removed))
    rows = rows[cfg.shard_index :: cfg.num_shards]
    if not rows:
        raise ConfigError(f"no problems left for shard {cfg.shard_index} of {cfg.num_shards}; use fewer shards")
    return rows


def build_samples(cfg: GenerateConfig, row: dict, user: str, output: engine.Output, vocab: int,
                  teacher: str | None = None, first: int = 0) -> list[dict]:
    """A problem's samples as rows, named after `teacher` (None: `model`); `first`: the first sample_index (a later
    teacher's follow the earlier ones')."""
    msgs = prompts.messages(user, cfg.prompt)
    samples = []
    for j, completion in enumerate(output.completions):
        text = cfg.prompt.prefill + completion.text
        samples.append({
            "messages": [*msgs, {"role": "assistant", "content": text}],
            "problem_id": row["id"],
            "problem_index": row["_index"],
            "sample_index": first + j,
            "question": row["question"],
            "gold": row["answer"],
            "completion": text,
            "finish_reason": completion.finish_reason,
            "prompt_tokens": output.prompt_tokens,
            "completion_tokens": completion.tokens,
            "teacher": teacher or cfg.model,
            "prefill": cfg.prompt.prefill,
            "teacher_topk": topk.encode(*completion.topk, vocab) if cfg.teacher_logprobs else None,
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
        "correct": Value("bool"), "keep": Value("bool"), "drop_reason": text, "verdict_detail": text, "verifier": text,
    })


def verifiers(samples, isolations: list) -> dict:
    """Which checker judged how many samples: math-verify, the problem's tests (in which sandbox), a
    reasoning-gym task's own checker (counts per task), or the LLM judge (counts per model)."""
    from collections import Counter

    counts = Counter(samples["verifier"])
    out = {"math-verify": counts.pop("math-verify", 0), "tests": counts.pop("tests", 0)}
    judged = {k.removeprefix("judge:"): counts.pop(k) for k in sorted(counts) if k.startswith("judge:")}
    if judged:  # samples answer.judge decided where no rule could
        out["judge"] = judged
    if counts:
        out["reasoning-gym"] = {k.removeprefix("reasoning-gym:"): v for k, v in sorted(counts.items())}
    kinds = {k for k in isolations if k}
    if kinds:
        out["sandbox"] = "; ".join(sandbox.describe(k) for k in sorted(kinds))
    return out


def reselect(samples, cfg: FilterConfig):
    """keep / drop_reason of stored samples under the current per-problem filters (filters.select: pass-rate
    band, duplicates, max_per_problem, prefer), so a rerun that changes only those samples nothing again."""
    columns = samples.select_columns(["problem_id", "correct", "drop_reason", "completion", "completion_tokens"]).to_list()
    by_problem: dict[str, list[int]] = {}
    for i, row in enumerate(columns):
        by_problem.setdefault(row["problem_id"], []).append(i)
    reasons: list[str | None] = [None] * len(columns)
    for idx in by_problem.values():
        for i, reason in zip(idx, filters.select([columns[i] for i in idx], cfg)):
            reasons[i] = reason
    if reasons == samples["drop_reason"]:
        return samples
    features = sample_features()
    names = samples.column_names
    samples = samples.remove_columns(["keep", "drop_reason"])
    samples = samples.add_column("keep", [r is None for r in reasons], feature=features["keep"])
    return samples.add_column("drop_reason", reasons, feature=features["drop_reason"]).select_columns(names)


def judge_undecided(cfg: GenerateConfig, samples, out: Path) -> tuple:
    """answer.judge on the stored samples no rule decided (judge.undecided; one without an answer only when it passes
    the other format filters): one it finds correct becomes correct (the per-problem filters then keep or drop it like
    any other), one it decides names it as its verifier, one left undecided keeps its reason. Returns (samples, the
    judge's stats)."""
    rows = samples.select_columns(["question", "gold", "completion", "completion_tokens", "correct", "keep",
                                   "drop_reason", "verifier", "verdict_detail"]).to_list()
    todo = [i for i, r in enumerate(rows) if judge.undecided(r["verifier"], r["drop_reason"], r["gold"], cfg.answer)
            and (r["drop_reason"] != "no_answer" or filters.check_text(r, cfg.filters) is None)]
    verdicts, stats = judge.ask(cfg.answer, [(rows[i]["question"], rows[i]["gold"], rows[i]["completion"]) for i in todo],
                                out / judge.JOURNAL)
    for i, verdict in zip(todo, verdicts):
        rows[i]["verdict_detail"] = judge.detail(verdict)
        if verdict is not None:
            rows[i]["verifier"] = judge.name(cfg.answer)
        if verdict:
            rows[i].update(correct=True, keep=True, drop_reason=None)
    changed = ["correct", "keep", "drop_reason", "verifier", "verdict_detail"]
    features, names = sample_features(), samples.column_names
    samples = samples.remove_columns(changed)
    for column in changed:
        samples = samples.add_column(column, [r[column] for r in rows], feature=features[column])
    return samples.select_columns(names), stats


def write_preference(samples, cfg: PreferenceConfig, path: Path) -> dict:
    """data/preference.parquet from the tagged samples of every shard (filters.preference_pairs); returns its
    counts for stats.json: pairs, problems with a pair, and the rejected traces' reasons."""
    from collections import Counter

    from datasets import Dataset, Features, List, Value

    columns = ["messages", "problem_id", "problem_index", "sample_index", "keep", "drop_reason"]
    pairs = filters.preference_pairs(samples.select_columns(columns).to_list(), cfg)
    turns, text, integer = List({"role": Value("string"), "content": Value("string")}), Value("string"), Value("int64")
    features = Features({"prompt": turns, "chosen": turns, "rejected": turns, "problem_id": text,
                         "chosen_index": integer, "rejected_index": integer, "rejected_reason": text})
    # by columns, so that a run without a pair still writes a file with the schema
    store.write_parquet(Dataset.from_dict({k: [p[k] for p in pairs] for k in features}, features=features), path)
    reasons, problems = Counter(p["rejected_reason"] for p in pairs), len({p["problem_id"] for p in pairs})
    if pairs:
        log.info("preference pairs: %d from %d problems (rejected: %s)", len(pairs), problems, dict(reasons))
    else:
        log.warning("preference.pairs: no problem has both a kept trace and one dropped as %s; %s is empty",
                    " or ".join(cfg.rejected), path)
    return {"pairs": len(pairs), "problems": problems, "rejected": dict(reasons.most_common())}


def assemble(cfg: GenerateConfig, out: Path) -> dict:
    """Join every shard's chunks into data/train.parquet and data/dropped.parquet, once all shards are done."""
    shard_dirs = [out / "samples" / f"shard-{i:05d}-of-{cfg.num_shards:05d}" for i in range(cfg.num_shards)]
    missing = [d.name for d in shard_dirs if not (d / "DONE").exists()]
    if missing:
        log.info("shard done; waiting for %s before joining the dataset", ", ".join(missing))
        return {"waiting_for": missing}
    parts = sorted(p for d in shard_dirs for p in d.rglob("chunk-*.parquet"))  # with teachers: one folder each
    samples = store.read_parquet(parts).sort(["problem_index", "sample_index"])
    judged = None
    if cfg.answer.judge.model is not None:  # before the per-problem filters, which count what it finds correct
        samples, judged = judge_undecided(cfg, samples, out)
    samples = reselect(samples, cfg.filters)
    timings = [json.loads(p.with_suffix(".json").read_text()) for p in parts]
    train = samples.filter(lambda keep: keep, input_columns="keep")
    dropped = samples.filter(lambda keep: not keep, input_columns="keep").remove_columns("teacher_topk")
    store.write_parquet(train, out / "data" / "train.parquet")
    store.write_parquet(dropped, out / "data" / "dropped.parquet")
    stats = card.stats(samples, timings)
    if judged is not None:
        stats["judge"] = judged
    if cfg.preference.pairs:
        stats["preference"] = write_preference(samples, cfg.preference, out / "data" / "preference.parquet")
    done = [json.loads((d / "DONE").read_text()) for d in shard_dirs]
    stats["verifier"] = verifiers(samples, [d.get("isolation") for d in done])
    if len(done[0].get("problem_funnel", {})) > 1:  # problems before sampling, when a stage is on (same for every shard)
        stats["problem_funnel"] = done[0]["problem_funnel"]
    summary = engine.chunk_summary(parts, cfg.engine)
    stats["failed_requests"] = summary["failed_requests"]
    if "usage" in summary:
        stats["requests"] = summary["usage"]
    if cfg.teachers:  # each teacher's own funnel and pass@1 on its samples
        stats["teachers"] = {t.label(): card.teacher_stats(samples, t.label()) for t in cfg.teachers}
    if cfg.teacher_logprobs:
        teacher = cfg.teacher_list()[0].model
        stats["teacher_logprobs"] = topk.storage_stats(train, cfg.logprobs_k, models.vocab_size(models.resolve(teacher)))
    store.write_text(out / "README.md", card.dataset_card(cfg, stats))
    if cfg.filters.pass_rate and not stats["funnel"]["kept"]:
        r = stats["pass_rate"]
        raise ConfigError(f"filters.pass_rate {cfg.filters.pass_rate} left no problems: {r['too_easy']} too easy, "
                          f"{r['too_hard']} too hard, {r['problems_solved'].get(f'0/{cfg.sampling.n}', 0)} never solved; "
                          "widen the band and rerun: the sampled chunks are kept and reused")
    if stats["failed_requests"]:  # no stats.json: the stage is not done, and `seqdistill run` reruns it
        raise ConfigError(f"{stats['failed_requests']} requests failed after retries; {out}/data holds the rest "
                          "(see its README); rerun the same command to retry only those")
    store.write_text(out / store.STATS_FILE, json.dumps(stats, indent=2))
    figures = {**{f"funnel/{k}": v for k, v in stats["funnel"].items()}, "teacher_pass@1": stats["pass@1"],
               f"teacher_pass@{cfg.sampling.n}": stats["pass@n"], "generated_tokens_per_second": stats["generated_tokens_per_second"]}
    trackers.log_figures(cfg.report_to, out, "generate", cfg.run_name, figures, configlib.to_dict(cfg))
    hub.push("generate", cfg)
    return stats
