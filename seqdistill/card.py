"""Statistics of a generated dataset, and every card seqdistill writes: the dataset card (the README.md that
`datasets` reads), the eval card, and the model cards of sft and student, built with huggingface_hub's
DatasetCard/ModelCard. The model cards are written here too: sft and student call `write_sft_cards` and
`write_student_card`, and `seqdistill run` calls `add_eval_results` after its eval stage (the student's scores
as the card's `model-index`)."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from pathlib import Path

from seqdistill import config as configlib
from seqdistill import models, store
from seqdistill.sources import filters
from seqdistill.sources.problems import PRESETS
from seqdistill.training import kd

log = logging.getLogger(__name__)
# the hub model each embedded model was converted from (its GGUF file is a quantized copy of it)
EMBEDDED_HUB = {"SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
                "Qwen2.5-Coder-0.5B-Instruct": "Qwen/Qwen2.5-Coder-0.5B-Instruct",
                "Qwen2.5-Coder-1.5B-Instruct": "Qwen/Qwen2.5-Coder-1.5B-Instruct"}
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
MODEL_CARD = "README.md"  # a model directory's card, which the hub and huggingface_hub's ModelCard read


def quantiles(values: list[int]) -> dict:
    if not values:
        return {}
    v = sorted(values)
    pick = lambda q: v[min(len(v) - 1, int(q * (len(v) - 1) + 0.5))]  # noqa: E731
    return {"count": len(v), "mean": round(sum(v) / len(v), 1), "min": v[0], "p50": pick(0.5),
            "p90": pick(0.9), "p99": pick(0.99), "max": v[-1]}


def stats(samples, timings: list[dict]) -> dict:
    """Funnel, drop reasons, per-problem solve rates, lengths and throughput of a generation."""
    reasons = samples["drop_reason"]
    keep, correct, lengths = samples["keep"], samples["correct"], samples["completion_tokens"]
    per_problem: dict[str, list[bool]] = {}
    kept_per_problem: Counter = Counter()
    for pid, ok, k in zip(samples["problem_id"], correct, keep):
        per_problem.setdefault(pid, []).append(ok)
        kept_per_problem[pid] += k
    seconds = sum(t["seconds"] for t in timings)
    tokens = sum(t["tokens"] for t in timings)
    solved = Counter((len(v), sum(v)) for v in per_problem.values())
    band = {reason: len({p for p, r in zip(samples["problem_id"], reasons) if r == reason}) for reason in ("too_easy", "too_hard")}
    return {
        "problems": len(per_problem),
        "samples": len(reasons),
        "funnel": filters.funnel(reasons),
        "drop_reasons": {r: c for r, c in Counter(reasons).most_common() if r is not None},
        "pass@1": round(sum(correct) / max(1, len(correct)), 4),
        "pass@n": round(sum(any(v) for v in per_problem.values()) / max(1, len(per_problem)), 4),
        "problems_with_kept": sum(1 for c in kept_per_problem.values() if c),
        # problems by how many of their samples the teacher got right ("1/4": 3 problems); filters.pass_rate selects on it
        "pass_rate": {"problems_solved": {f"{c}/{n}": solved[n, c] for n, c in sorted(solved)},
                      "problems_without_trace": sum(1 for c in kept_per_problem.values() if not c), **band},
        "completion_tokens": {
            "kept": quantiles([n for n, k in zip(lengths, keep) if k]),
            "dropped": quantiles([n for n, k in zip(lengths, keep) if not k]),
        },
        "sampling_seconds": round(seconds, 1),
        "generated_tokens": tokens,
        "generated_tokens_per_second": round(tokens / seconds, 1) if seconds else None,
    }


def teacher_stats(samples, teacher: str) -> dict:
    """One teacher's samples (the `teacher` column): their funnel, pass@1 and the problems it solved at least once."""
    rows = [r for r in samples.select_columns(["teacher", "problem_id", "correct", "drop_reason"]).to_list()
            if r["teacher"] == teacher]
    solved = {r["problem_id"] for r in rows if r["correct"]}
    return {"samples": len(rows), "funnel": filters.funnel([r["drop_reason"] for r in rows]),
            "pass@1": round(sum(r["correct"] for r in rows) / max(1, len(rows)), 4),
            "problems": len({r["problem_id"] for r in rows}), "problems_solved": len(solved)}


def teachers_section(st: dict) -> str:
    """The per-teacher table of a run with several teachers (empty with one)."""
    if "teachers" not in st:
        return ""
    lines = [f"| {name} | {t['problems']} | {t['samples']} | {t['pass@1']:.3f} | {t['problems_solved']} | "
             f"{t['funnel']['kept']} |" for name, t in st["teachers"].items()]
    return ("\n## Teachers\n\n| teacher | problems | samples | pass@1 | problems solved | kept |\n"
            "| --- | --- | --- | --- | --- | --- |\n" + "\n".join(lines) + "\n\nThe funnel above counts every teacher's "
            "samples together; the per-problem filters (max_per_problem, prefer) chose across teachers.\n")


def funnel_table(funnel: dict) -> str:
    lines = ["| stage | samples | share |", "| --- | --- | --- |"]
    total = max(1, funnel["generated"])
    lines += [f"| {stage} | {n} | {n / total:.1%} |" for stage, n in funnel.items()]
    return "\n".join(lines)


def hub_id(ref: str | None) -> str | None:
    """The hub id a model or dataset reference stands for, if any (embedded models: their source)."""
    if not ref:
        return None
    if ref.startswith("embedded:"):
        return EMBEDDED_HUB.get(ref.split(":", 1)[1])
    return None if models.is_local(ref) or not HUB_ID.match(ref) else ref


def dataset_hub_id(ref: str) -> str | None:
    """A hub dataset id, or the repo a local generate output dir was pushed to (its saved push_to_hub)."""
    if (Path(ref) / store.CONFIG_FILE).is_file():
        return (store.saved_config(ref).get("config") or {}).get("push_to_hub")
    return hub_id(ref)


def size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def file_checksum(path: Path) -> dict:
    """num_bytes and sha256 of a file, as a dataset card's download_checksums entry."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"num_bytes": path.stat().st_size, "checksum": digest.hexdigest()}


def with_metadata(card_class, data, body: str) -> str:
    """A card's text: `data` (DatasetCardData/ModelCardData) as the YAML header, parsed back by huggingface_hub."""
    return str(card_class(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def verifier_line(st: dict) -> str:
    v = st.get("verifier") or {"math-verify": st["samples"], "tests": 0}
    parts = [f"{v['math-verify']} samples against the gold answer with math-verify"] if v["math-verify"] else []
    if v["tests"]:
        parts.append(f"{v['tests']} programs against the problem's tests, {v.get('sandbox', 'in a sandbox')}")
    if v.get("reasoning-gym"):
        tasks = ", ".join(f"{task} {n}" for task, n in v["reasoning-gym"].items())
        parts.append(f"{sum(v['reasoning-gym'].values())} answers by their reasoning-gym task's own score_answer ({tasks})")
    if st.get("judge"):
        parts.append(judge_line(st["judge"]))
    return "; ".join(parts) or "no samples"


def judge_line(j: dict) -> str:
    """What the LLM judge (answer.judge) read where no rule could decide, and what it found."""
    cost = f", cost {j['cost']}" if "cost" in j else ""
    return (f"{j['asked']} samples no rule could decide (unreadable gold, or no answer) by the LLM judge `{j['model']}` "
            f"with prompt {j['prompt']}: {j['judged_correct']} judged correct and kept as correct, {j['judged_wrong']} "
            f"judged wrong, {j['undecided']} undecided and dropped ({j['replies']} replies{cost}); `verifier` names "
            "the judge on the samples it decided")


def pass_rate_section(st: dict) -> str:
    """Problems by how many of their samples the teacher got right (0/n ... n/n), and those left without a trace."""
    rates = st.get("pass_rate")
    if not rates:
        return ""
    rows = "\n".join(f"| {solved} | {count} |" for solved, count in rates["problems_solved"].items())
    band = (f" ({rates['too_easy']} too easy and {rates['too_hard']} too hard for filters.pass_rate)"
            if rates.get("too_easy") or rates.get("too_hard") else "")
    return (f"\n## Teacher pass rate\n\n| right samples | problems |\n| --- | --- |\n{rows}\n\n"
            f"{rates['problems_without_trace']} of {st['problems']} problems contribute no trace{band}.\n")


def requests_line(st: dict) -> str:
    """Requests, retries, errors, tokens and cost of a server-backed run (empty for in-process vLLM)."""
    if "requests" not in st:
        return ""
    u = st["requests"]
    cost = f", cost {u['cost']}" if "cost" in u else ""
    failed = f"; **{st['failed_requests']} requests failed after retries** (rerun to retry them)" if st.get("failed_requests") else ""
    return (f"\nThrough the server: {u.get('requests', 0)} requests ({u.get('retries', 0)} retries, {u.get('errors', 0)} "
            f"errors), {u.get('prompt_tokens', 0)} prompt and {u.get('completion_tokens', 0)} completion tokens{cost}{failed}.\n")


def teacher_names(cfg) -> str:
    return ", ".join(f"`{t.model}`" + (f" ({t.label()})" if cfg.teachers else "") for t in cfg.teacher_list())


def dataset_card(cfg, st: dict) -> str:
    from huggingface_hub import DatasetCard, DatasetCardData

    kept = st["funnel"]["kept"]
    source = PRESETS[cfg.problems.preset].hub if cfg.problems.preset in PRESETS else hub_id(cfg.problems.source)
    # an empty split is left out: `datasets` refuses to load an empty Parquet file
    configs = {"default": [(split, f"data/{split}.parquet")
                           for split, n in (("train", kept), ("dropped", st["samples"] - kept)) if n]}
    if st.get("preference", {}).get("pairs"):  # load_dataset(DIR, "preference"): DPO pairs
        configs["preference"] = [("train", "data/preference.parquet")]
    data = DatasetCardData(
        configs=[{"config_name": name, "data_files": [{"split": split, "path": path} for split, path in files]}
                 for name, files in configs.items()],
        # each file's sha256: `datasets` keys its cache of a local folder on this header (not on the files), so
        # without it load_dataset(OUTPUT_DIR) returns the rows of an earlier run into a folder of the same name
        dataset_info=[{"config_name": name, "download_checksums": {
            path: file_checksum(Path(cfg.output_dir) / path) for _, path in files}} for name, files in configs.items()],
        task_categories=["text-generation"],
        size_categories=[size_category(kept)],
        source_datasets=[source] if source else None,
        tags=["seqdistill", "distillation", "synthetic", "reasoning"],
        pretty_name=f"Reasoning traces from {teacher_names(cfg).replace('embedded:', '').replace('`', '')}",
    )
    reasons = "\n".join(f"| {r} | {c} |" for r, c in st["drop_reasons"].items()) or "| (none) | 0 |"
    lengths = "\n".join(
        f"| {name} | " + " | ".join(str(q.get(k, "")) for k in ("count", "mean", "p50", "p90", "max")) + " |"
        for name, q in st["completion_tokens"].items()
    )
    return with_metadata(DatasetCard, data, f"""# Distilled reasoning traces from {teacher_names(cfg)}

Generated by `seqdistill generate`: the teacher sampled {cfg.sampling.n} traces per
problem on {st['problems']} problems (`{cfg.problems.source}`{', preset ' + cfg.problems.preset if cfg.problems.preset else ''}),
each answer was checked ({verifier_line(st)}), and bad samples were dropped with a reason.

- `train`: the kept traces in TRL's conversational `messages` format, ready for `seqdistill sft`, with provenance
  columns (problem_id, sample_index, teacher, token counts, finish_reason, answer, correct).
- `dropped`: every other sample, with `drop_reason`.

```python
import datasets
ds = datasets.load_dataset("{cfg.output_dir}")  # or the hub repo it was pushed to
```

## Funnel

{funnel_table(st['funnel'])}

Teacher pass@1 on these problems: {st['pass@1']:.3f}; share of problems with at least one correct sample
(pass@{cfg.sampling.n}): {st['pass@n']:.3f}; problems with a kept trace: {st['problems_with_kept']}.

| drop reason | samples |
| --- | --- |
{reasons}
{teachers_section(st)}{pass_rate_section(st)}
## Lengths (completion tokens)

| split | count | mean | p50 | p90 | max |
| --- | --- | --- | --- | --- | --- |
{lengths}

## Throughput

{st['generated_tokens']} tokens generated in {st['sampling_seconds']} s of sampling
({st['generated_tokens_per_second']} tok/s).
{requests_line(st)}
## Resolved config

```yaml
{configlib.dump(cfg)}```
""")


def eval_card(cfg, table: str, details: dict[str, tuple[str, str]]) -> str:
    """The card of an eval pushed to the hub: the results table, and where each model x benchmark's
    per-sample records are (one dataset config each; datasets' push adds their data files to the metadata)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    first = next(iter(details), "CONFIG")
    data = DatasetCardData(pretty_name=f"Evaluation: {', '.join(m.label() for m in cfg.models)}",
                           tags=["seqdistill", "evaluation", "reasoning"],
                           size_categories=[size_category(len(details))])
    rows = "\n".join(f"| `{name}` | {model} | {bench} |" for name, (model, bench) in details.items())
    return with_metadata(DatasetCard, data, f"""# Evaluation results

Scored by `seqdistill eval` ({', '.join(b.name for b in cfg.benchmarks)}); `{store.RESULTS_FILE}` holds every
figure with the settings that produced it.

{table}
## Per-sample details

Every sample with its prompt, response, extracted answer and verdict, one config per model and benchmark:

| config | model | benchmark |
| --- | --- | --- |
{rows}

```python
import datasets
details = datasets.load_dataset("{cfg.push_to_hub}", "{first}", split="samples")
```

## Resolved config

```yaml
{configlib.dump(cfg)}```
""")


def memory_line(metrics: dict) -> str:
    gpu = f", peak GPU memory {metrics['peak_gpu_memory_mb']} MB" if "peak_gpu_memory_mb" in metrics else ""
    return f"peak RSS {metrics['peak_rss_mb']} MB{gpu}"


def kd_line(cfg, across: bool = False) -> str:
    """The KD loss in words; `across`: the teacher's tokenizer differs (kd.cross_tokenizer's loss on aligned tokens)."""
    k = cfg.kd
    if k.mode == "none":
        return ""
    teacher = f" from `{k.teacher}`" if k.mode == "online" else " from the teacher's stored top-k log-probs"
    if across:
        term = ("ULD (sorted probabilities, L1)" if k.cross_loss() == "uld" else
                f"(T^2 * {k.divergence} on the top-k tokens both vocabularies share + ULD on the rest)")
        return (f"\nLogit distillation across tokenizers ({k.mode}{teacher}, tokens aligned on common byte boundaries): "
                f"loss = {k.alpha} * CE + {1 - k.alpha:g} * {term}, T = {k.temperature}.")
    return (f"\nLogit distillation ({k.mode}{teacher}): loss = {k.alpha} * CE + {1 - k.alpha:g} * T^2 * "
            f"{k.divergence}{kd.describe(k)}, T = {k.temperature}.")


def training_data(cfg, data) -> str:
    """The dataset sft trained on, or the table of its mixture's sources."""
    if not data.mixture:
        return f"`{cfg.dataset}` (split `{cfg.dataset_split}`)"
    rows = "\n".join(f"| `{r['path']}` | {r['split']} | {r['rows']} | {r['used']} | "
                     f"{'weight ' + str(r['weight']) if r.get('weight') is not None else 'fraction ' + str(r.get('fraction', 1.0))} "
                     f"| {r['share']} |" for r in data.mixture)
    return (f"a mixture of {len(data.mixture)} datasets drawn with seed {cfg.seed}\n\n"
            f"| dataset | split | rows | used | weight or fraction | share |\n| --- | --- | --- | --- | --- | --- |\n{rows}\n\n")


def student_changes(cfg) -> str:
    """What a user of the model must know beyond the weights: its template switches and a stretched context."""
    notes = []
    if cfg.chat_template_kwargs:
        notes.append(f"Render prompts with the chat-template switches {json.dumps(cfg.chat_template_kwargs)}, "
                     "as it was trained.")
    if cfg.context:
        notes.append(f"Its context was stretched to {cfg.context} tokens (YaRN RoPE scaling, in its config.json).")
    return "".join(" " + n for n in notes)


def sft_model_card(cfg, data, metrics: dict, merged: bool = False) -> str:
    """The card of OUTPUT_DIR/model (the adapter, or the model when method is full), or with `merged`
    of OUTPUT_DIR/merged; its metadata names the base model and dataset by hub id where they have one."""
    from huggingface_hub import ModelCard, ModelCardData

    funnel = (funnel_table(data.source_stats["funnel"]) if data.source_stats and "funnel" in data.source_stats
              else "(not a seqdistill generate dataset)")
    teacher = data.teacher or "unknown"
    adapter = cfg.method != "full" and not merged
    base = hub_id(cfg.student)
    hub_datasets = [d for d in (dataset_hub_id(r["path"]) for r in data.mixture or [{"path": cfg.dataset}]) if d]
    meta = ModelCardData(
        base_model=base, datasets=hub_datasets or None, library_name="peft" if adapter else "transformers",
        pipeline_tag="text-generation", model_name=f"{Path(cfg.output_dir).name}{'-merged' if merged else ''}",
        tags=["seqdistill", "distillation", "sft", "trl", *([cfg.method] if cfg.method != "full" else []),
              *(["knowledge-distillation"] if cfg.kd.mode != "none" else [])],
        **({"base_model_relation": "adapter" if adapter else "finetune"} if base else {}),
    )
    origin = (f" The student was converted from a quantized GGUF copy of `{base}` (dequantized)."
              if base and cfg.student.startswith("embedded:") else "")
    what = ("the LoRA adapter merged into the base weights" if merged
            else "a LoRA adapter (load it on the base model with peft)" if adapter else "the full fine-tuned model")
    return with_metadata(ModelCard, meta, f"""# {Path(cfg.output_dir).name}: `{cfg.student}` distilled from `{teacher}`

Fine-tuned by `seqdistill sft` ({cfg.method}{f', r={cfg.lora.r}, alpha={cfg.lora.alpha}' if cfg.method != 'full' else ''})
on {training_data(cfg, data)} ({data.n_train} examples), loss on
{'the assistant turn only' if cfg.assistant_only_loss else 'the whole sequence'}, each example ending with the
end-of-turn token `{data.end_of_turn}`.{kd_line(cfg, data.aligner is not None)} This directory holds {what}.{origin}{student_changes(cfg)}

## Teacher dataset funnel

{funnel}

## Training

- final train loss: {metrics['train_loss']:.4f} after {metrics['global_step']} steps, {metrics['train_seconds']} s
- {metrics['train_tokens_per_second']} training tokens/s, {memory_line(metrics)} ({metrics['device']}, {metrics['dtype']})
- token lengths: {json.dumps(data.lengths)}

## Resolved config

```yaml
{configlib.dump(cfg)}```
""")


def write_sft_cards(cfg, data, metrics: dict) -> None:
    """OUTPUT_DIR/model/README.md, and OUTPUT_DIR/merged/README.md when sft saved a merged model."""
    out = Path(cfg.output_dir)
    store.write_text(out / "model" / MODEL_CARD, sft_model_card(cfg, data, metrics))
    if (out / "merged").is_dir():
        store.write_text(out / "merged" / MODEL_CARD, sft_model_card(cfg, data, metrics, merged=True))


def write_student_card(cfg, info: dict, model_type: str, dtype: str) -> None:
    """OUTPUT_DIR/README.md of a student built by `seqdistill student`."""
    store.write_text(Path(cfg.output_dir) / MODEL_CARD, student_model_card(cfg, info, model_type, dtype))


def student_model_card(cfg, info: dict, model_type: str, dtype: str) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    base = hub_id(cfg.model)
    meta = ModelCardData(base_model=base, library_name="transformers", pipeline_tag="text-generation",
                         model_name=Path(cfg.output_dir).name, tags=["seqdistill", "distillation", "layer-pruning"])
    origin = (f" The source was converted from a quantized GGUF copy of `{base}` (dequantized)."
              if base and cfg.model.startswith("embedded:") else "")
    changed = ", ".join(f"`{k}`" for k in info["config_changed"])
    return with_metadata(ModelCard, meta, f"""# {Path(cfg.output_dir).name}: {len(info['kept'])} of the {info['source_layers']} decoder layers of `{cfg.model}`

Built by `seqdistill student` (`layers: {cfg.layers}`), as DistilBERT initialised its student from every other
layer of BERT: decoder layers {info['kept']} of the source (counted from 0) are copied unchanged and in order;
the embeddings, final norm and LM head are the source's. {info['parameters'] / 1e6:.1f}M parameters
(the source: {info['source_parameters'] / 1e6:.1f}M), {model_type}, {dtype}.{origin}
The config's `num_hidden_layers` is {len(info['kept'])}{f'; also changed: {changed}' if changed else ''}.

This model is not trained after the cut: fine-tune all of it (`seqdistill sft` with `method: full`), ideally
with the source as the teacher (`kd.mode: online`, `kd.teacher: {cfg.model}`).

## Resolved config

```yaml
{configlib.dump(cfg)}```
""")


# ---- eval results on the sft model cards (`seqdistill run`, after its eval stage) ----

EVAL_HEADING = "## Evaluation"


def add_eval_results(sft_dir: str | Path, eval_dir: str | Path) -> list[Path]:
    """Rewrite the cards of SFT_DIR/model and SFT_DIR/merged with what EVAL_DIR/results.json holds for that
    model: its scores as `model-index` metadata (the hub shows them as an evaluation table) and, in the text, its
    paired comparison with the baseline it was compared to (the untouched student). An adapter and its merged
    model are the same weights: either one's scores go on both cards. Results older than the training are left
    out (an eval of an earlier student). Returns the cards that changed; a rerun replaces what it wrote before."""
    sft_dir, results_file = Path(sft_dir), Path(eval_dir) / store.RESULTS_FILE
    trained = sft_dir / "metrics.json"  # sft's marker: written when the training ended
    if not results_file.is_file() or not trained.is_file():
        return []
    if results_file.stat().st_mtime < trained.stat().st_mtime:
        log.warning("%s predates the training in %s: its scores are not put on the model cards", results_file, sft_dir)
        return []
    results = json.loads(results_file.read_text())
    table = Path(eval_dir) / store.RESULTS_TABLE
    written = []
    for folder, sibling in ((sft_dir / "model", sft_dir / "merged"), (sft_dir / "merged", sft_dir / "model")):
        label = scored_as(results, folder) or scored_as(results, sibling)
        if label is None or not (folder / MODEL_CARD).is_file():
            continue
        old = (folder / MODEL_CARD).read_text()
        new = card_with_evals(old, label, results, table.read_text() if table.is_file() else "", folder)
        if new != old:
            store.write_text(folder / MODEL_CARD, new)
            written.append(folder / MODEL_CARD)
    return written


def scored_as(results: dict, folder: Path) -> str | None:
    """The eval label whose model (or adapter) is `folder`, read from the paths its results record."""
    def same(ref: str | None) -> bool:
        return bool(ref) and Path(ref).expanduser().resolve() == folder.resolve()

    for label, per_bench in results.items():
        r = next(iter(per_bench.values()))
        if same(r.get("adapter")) or (not r.get("adapter") and same(r["model"])):
            return label
    return None


def card_with_evals(text: str, label: str, results: dict, table: str, folder: Path) -> str:
    from huggingface_hub import ModelCard

    card = ModelCard(text)
    card.data.eval_results = eval_results(results[label])
    card.data.model_name = card.data.model_name or label  # model-index needs a name
    body = without_section(card.text.lstrip("\n"), EVAL_HEADING)
    section = eval_section(label, results, table, folder)
    at = body.find("\n## Resolved config")
    body = body.rstrip("\n") + "\n\n" + section if at < 0 else body[:at + 1] + section + body[at:]
    return with_metadata(ModelCard, card.data, body)


def without_section(text: str, heading: str) -> str:
    """`text` less the section under `heading` (what an earlier add_eval_results wrote)."""
    start = text.find(f"\n{heading}\n")
    if start < 0:
        return text
    end = text.find("\n## ", start + 1)
    return text[:start] + (text[end:] if end >= 0 else "\n")  # up to the next section, or the end


def eval_results(per_bench: dict) -> list:
    """huggingface_hub EvalResults: pass@1 and every pass@k and maj@k eval computed, per benchmark."""
    from huggingface_hub import EvalResult

    out = []
    for bench, r in per_bench.items():
        problems = r["settings"]["problems"]
        preset = PRESETS.get(problems.get("preset") or bench)
        dataset = preset.hub if preset else hub_id(problems.get("source")) or bench
        for metric, value in r.items():
            if metric.startswith(("pass@", "maj@")) and not metric.endswith("_stderr"):
                out.append(EvalResult(
                    task_type="text-generation", dataset_type=dataset, dataset_name=f"{bench} ({r['problems']} problems)",
                    dataset_config=problems.get("subset"), dataset_split=problems.get("split"),
                    metric_type=metric, metric_value=round(value, 4),
                    metric_name=f"{metric} ({r['samples_per_problem']} samples per problem)"))
    return out


def eval_section(label: str, results: dict, table: str, folder: Path) -> str:
    per_bench = results[label]
    first = next(iter(per_bench.values()))
    if scored_as({label: per_bench}, folder):
        scored = f"this adapter on `{first['model']}`" if first.get("adapter") else "this model"
    else:  # the card's sibling: the adapter of this merged model, or the merged model of this adapter
        scored = (f"the adapter `{first['adapter']}` on `{first['model']}`" if first.get("adapter") else f"`{first['model']}`"
                  ) + ", the same trained weights"
    rows = "\n".join(f"| {bench} | {r['problems']} × {r['samples_per_problem']} | {r['pass@1']:.3f} ± {r['pass@1_stderr']:.3f} "
                     f"| {r['truncated_share']:.1%} |" for bench, r in per_bench.items())
    everyone = f"### Every model in that eval\n\n{table}" if table else ""
    return (f"{EVAL_HEADING}\n\nScored by `seqdistill eval` as `{label}` ({scored}):\n\n"
            f"| benchmark | problems × samples | pass@1 ± s.e. | truncated |\n| --- | --- | --- | --- |\n{rows}\n\n"
            f"{comparison(label, results)}{everyone}\n")


def comparison(label: str, results: dict) -> str:
    """The paired comparisons eval made with this model (`compare`), one sentence per baseline and benchmark."""
    lines = []
    for bench, r in results[label].items():
        for base, c in r.get("compare", {}).items():
            seeds = "the same seeds" if c["same_seeds"] else "different engine seeds"
            lines.append(f"- {bench}: pass@1 {c['delta_pass@1']:+.3f} ± {c['delta_pass@1_stderr']:.3f} (paired s.e.) against "
                         f"`{base}` (`{results[base][bench]['model']}`) on the same {c['problems']} problems with {seeds}; "
                         f"{c['gained']} problems gained, {c['lost']} lost.")
    if not lines:
        return ""
    return ("Against the baseline (Δ pass@1 = the mean over problems of the difference in each problem's share of "
            "right samples; gained/lost: solved by one model and not by the other):\n\n" + "\n".join(lines) + "\n\n")
