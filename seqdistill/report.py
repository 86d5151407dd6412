"""`seqdistill report RUN_DIR`: report.md with figures, rebuilt from a pipeline run's saved artifacts.

Sections, each present when its stage's outputs are: provenance (models, versions, time per stage);
results (the eval table, pass@1 per model and, for `checkpoints`, by training step, the paired
comparison of the distilled student against the untouched one with the problems it gained and lost,
pass@k and maj@k against k); teacher traces (the filter funnel, how many of its samples the teacher
got right per problem, length against correctness, kept vs dropped lengths per drop reason, example
traces shown head and tail); student training (loss, eval loss, learning rate and epoch boundaries).
One function per figure; PNGs beside report.md.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import yaml

from seqdistill import card, commands, evaluate, metrics, store
from seqdistill.config import ConfigError

KEPT, DROPPED, LINE = "#55A868", "#C44E52", "#4C72B0"
HEAD, TAIL = 700, 500  # characters of a long trace shown from its start and from its end


def write(run_dir: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    run = Path(run_dir)
    gen, sft, ev = run / "generate", run / "sft", run / "eval"
    if not any(p.is_dir() for p in (gen, sft, ev)):
        raise ConfigError(f"{run} holds no pipeline run (no generate/, sft/ or eval/); give the run_dir of `seqdistill run`")
    stats = store.read_json(gen / store.STATS_FILE) if (gen / store.STATS_FILE).is_file() else None
    results = store.read_json(ev / store.RESULTS_FILE) if (ev / store.RESULTS_FILE).is_file() else None
    metrics = store.read_json(sft / "metrics.json") if (sft / "metrics.json").is_file() else None
    parts = [f"# seqdistill run: `{run}`\n", provenance(run, stats, results)]
    if results:
        parts += results_section(run, results)
    if stats:
        parts += teacher_section(run, stats, list(results or {}))
    if metrics is not None:
        parts += training_section(run, metrics)
    path = run / "report.md"
    store.write_text(path, "\n".join(parts))
    return path


# ---------------------------------------------------------------- provenance


def stage_times(run: Path) -> list[tuple[str, float, str]]:
    """Wall time per stage, from its config file (written when the stage starts) to its finishing file."""
    rows = []
    for stage, marker, detail in (("generate", store.STATS_FILE, "sampling_seconds"), ("sft", "metrics.json", "train_seconds"),
                                  ("eval", store.RESULTS_FILE, None)):
        start, end = run / stage / store.CONFIG_FILE, run / stage / marker
        if start.is_file() and end.is_file():
            data = json.loads(end.read_text())
            if detail:
                inner = f"{detail.replace('_', ' ')}: {data[detail]:.0f} s"
            else:
                inner = "sampling: " + ", ".join(f"{m} {r['seconds']:.0f} s" for m, per in data.items() for r in per.values())
            rows.append((stage, end.stat().st_mtime - start.stat().st_mtime, inner))
    return rows


def provenance(run: Path, stats: dict | None, results: dict | None) -> str:
    pipeline = yaml.safe_load((run / "pipeline.yaml").read_text()) if (run / "pipeline.yaml").is_file() else {}
    saved = {s: store.saved_config(run / s) for s in commands.PIPELINE_STAGES}
    info = pipeline.get("run") or next((v.get("run") for v in saved.values() if v), {})
    cfg = {s: v.get("config") or {} for s, v in saved.items()}
    lines = ["## Provenance\n"]
    if info:
        lines.append(f"- run started {info.get('time')} from commit `{(info.get('git_commit') or 'unknown')[:10]}`: "
                     f"`{info.get('command')}`")
    if cfg["generate"]:
        lines.append(f"- teacher: `{cfg['generate']['model']}`")
    if cfg["sft"]:
        lines.append(f"- student: `{cfg['sft']['student']}` ({cfg['sft']['method']})")
    if cfg["eval"]:
        lines.append("- evaluated: " + ", ".join(f"{m['name'] or m['model']} = "
                                                 f"`{m.get('checkpoints') or m['adapter'] or m['model']}`"
                                                 for m in cfg["eval"]["models"]))
    versions = info.get("versions") or {}
    if versions:
        lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    report_time = datetime.now(timezone.utc).isoformat(timespec="seconds")
    lines.append(f"- report written {report_time}")
    times = stage_times(run)
    if times:
        lines += ["", "| stage | wall time | of which |", "| --- | --- | --- |"]
        lines += [f"| {s} | {minutes(t)} | {d} |" for s, t, d in times]
        lines.append("\nWall time runs from the stage's config file (written as it starts) to its last output, "
                     "engine starts and model loads included.")
    if stats and results and cfg["generate"] and cfg["eval"]:
        lines.append("\n" + teacher_note(stats, cfg["generate"], cfg["eval"]))
    return "\n".join(lines) + "\n"


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s" if seconds >= 60 else f"{seconds:.0f} s"


def teacher_note(stats: dict, gen: dict, ev: dict) -> str:
    g, e = gen["sampling"], ev["sampling"]
    return (f"The dataset card's teacher pass@1 ({stats['pass@1']:.3f}) and the eval table's need not agree: the card's is "
            f"measured on generate's {stats['problems']} (training) problems with {g['n']} samples at temperature {g['temperature']} "
            f"and max_tokens {g['max_tokens']}, the table's on the benchmark's (held-out) problems with "
            f"{e['n']} samples at temperature {e['temperature']} and max_tokens {e['max_tokens']}.")


# ---------------------------------------------------------------- results


def results_section(run: Path, results: dict) -> list[str]:
    ev = run / "eval"
    parts = ["## Results\n", (ev / store.RESULTS_TABLE).read_text(), f"![pass@1]({pass_figure(results, run)})\n"]
    series = evaluate.checkpoint_series(results)
    if series:
        parts += ["### pass@1 by checkpoint\n",
                  f"![pass@1 by step]({evaluate.steps_figure(series, run / evaluate.STEPS_FIGURE)})\n"]
    budgets = evaluate.budget_series(results)
    if budgets:
        parts += ["### pass@1 by thinking budget\n",
                  f"![pass@1 by budget]({evaluate.budget_figure(budgets, run / evaluate.BUDGET_FIGURE)})\n"]
    for model, per_bench in results.items():
        for bench, r in per_bench.items():
            for base, c in r.get("compare", {}).items():
                parts += paired_section(run, bench, base, model, c)
    parts += ["### pass@k and maj@k against k\n", f"![pass@k]({pass_k_figure(pass_k_curves(run, results), run)})\n"]
    return parts


def paired_section(run: Path, bench: str, base: str, model: str, c: dict) -> list[str]:
    samples = {name: evaluate.read_samples(run / "eval" / name / bench / "samples.parquet") for name in (base, model)}
    records = [evaluate.per_problem_records(samples[name]) for name in (base, model)]
    ids = sorted(records[0])
    before, after = ([sum(r[i]["correct"]) for i in ids] for r in records)
    n = len(records[0][ids[0]]["correct"])
    gained, lost = ([ids[k] for k in ks] for ks in metrics.flips(*([r[i]["correct"] for i in ids] for r in records)))
    stem = f"paired_{bench}_{model}_vs_{base}".replace("=", "-").replace("/", "-")
    lines = [f"### {model} against {base} on {bench} (paired)\n",
             f"On the same {c['problems']} problems{' with the same seeds' if c['same_seeds'] else ''}, {model} scores pass@1 "
             f"{c['delta_pass@1']:+.3f} ± {c['delta_pass@1_stderr']:.3f} (paired s.e.) against {base}. "
             f"Counting a problem as solved when at least {(n + 1) // 2} of its {n} samples are right, {model} "
             f"gained {c['gained']} and lost {c['lost']} problems; its share of right samples rose on {c['better']} "
             f"problems and fell on {c['worse']}.\n",
             f"![paired]({paired_figure(before, after, n, base, model, run / f'{stem}.png')})\n"]
    for title, chosen in (("gained", gained), ("lost", lost)):
        if chosen:
            lines.append(f"**{title}** ({len(chosen)}): " + "; ".join(
                f"{records[0][i]['correct'].count(True)}/{n} → {records[1][i]['correct'].count(True)}/{n} "
                f"\"{short(question(samples[base], i))}\"" for i in chosen[:5]) + (" ..." if len(chosen) > 5 else "") + "\n")
    if gained:
        pid = gained[0]
        lines.append(f"A gained problem, first sample of each model (gold {records[0][pid]['gold']}):\n\n> {question(samples[base], pid)}\n")
        for name in (base, model):
            row = next(r for r in samples[name] if r["problem_id"] == pid)
            lines.append(f"{name} (answer {row['answer']}, {'right' if row['correct'] else 'wrong'}):\n\n"
                         + fenced(row["response"]))
    return lines


def question(samples: list[dict], pid: str) -> str:
    return next(r["question"] for r in samples if r["problem_id"] == pid)


def short(text: str, limit: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def pass_k_curves(run: Path, results: dict) -> dict[tuple[str, str], dict[str, list[float]]]:
    """pass@k and maj@k for k = 1..n per model and benchmark, from the saved samples (maj@k: none for code)."""
    curves = {}
    for model, per_bench in results.items():
        for bench, r in per_bench.items():
            code = "verdicts" in r
            exact = r["settings"]["problems"].get("source") == "reasoning-gym"
            records = list(evaluate.read_per_problem(run / "eval" / model / bench / "samples.parquet", code, exact).values())
            ks = list(range(1, r["samples_per_problem"] + 1))
            curve = {"k": ks, "pass": [sum(metrics.pass_at_k(len(p["correct"]), sum(p["correct"]), k) for p in records) / len(records)
                                       for k in ks]}
            if not code:
                curve["maj"] = [sum(metrics.majority_correct(p, k) for p in records) / len(records) for k in ks]
            curves[model, bench] = curve
    return curves


# ---------------------------------------------------------------- teacher traces


def teacher_section(run: Path, stats: dict, models: list[str]) -> list[str]:
    gen = run / "generate"
    samples = store.read_parquet(sorted((gen / "data").glob("*.parquet")))
    max_tokens = (store.saved_config(gen).get("config") or {}).get("sampling", {}).get("max_tokens")
    evals = eval_samples(run, models)
    parts = ["## Teacher traces\n", card.funnel_table(stats["funnel"]) + "\n", f"![funnel]({funnel_figure(stats, run)})\n"]
    if "pass_rate" in stats:
        rate = stats["pass_rate"]
        parts += ["### How hard the problems were for the teacher\n",
                  f"Problems by how many of their samples the teacher got right; {rate['problems_without_trace']} of "
                  f"{stats['problems']} problems contribute no trace to the dataset.\n",
                  f"![pass rate]({pass_rate_figure(rate['problems_solved'], run)})\n"]
    parts += ["### Length and correctness\n", f"![length vs correctness]({length_correctness_figure(samples, evals, run)})\n",
              "### Kept and dropped lengths per reason\n",
              f"![lengths]({length_figure(samples, max_tokens, run)})\n",
              "### Example traces\n",
              f"The longest trace of each kind, its first {HEAD} and last {TAIL} characters (the answer is at the end).\n",
              examples(samples)]
    return parts


def eval_samples(run: Path, models: list[str]) -> dict[str, dict[str, list]]:
    """Response lengths and verdicts of each evaluated model (all benchmarks together), in the table's order."""
    out = {}
    for name in models:
        for path in sorted((run / "eval" / name).glob("*/samples.parquet")):
            table = store.read_parquet([path])
            entry = out.setdefault(name, {"lengths": [], "correct": []})
            entry["lengths"] += table["response_tokens"]
            entry["correct"] += table["correct"]
    return out


# ---------------------------------------------------------------- student training


def training_section(run: Path, metrics_: dict) -> list[str]:
    cfg = store.saved_config(run / "sft").get("config") or {}
    history = metrics_["log_history"]
    has_eval = any("eval_loss" in h for h in history)
    note = "" if has_eval else (" No eval loss: no validation set (set `sft.eval_fraction`, e.g. 0.1, to hold out a "
                                "share of the problems' traces).")
    return ["## Student training\n",
            f"Final train loss {metrics_['train_loss']:.4f} after {metrics_['global_step']} steps in "
            f"{metrics_['train_seconds']} s ({metrics_['train_tokens_per_second']} tokens/s, {card.memory_line(metrics_)})."
            f" Logged every {cfg.get('logging_steps', '?')} steps.{note}\n",
            f"![loss]({loss_figure(history, run)})\n"]


# ---------------------------------------------------------------- figures, one function each


def funnel_figure(stats: dict, run: Path) -> str:
    import matplotlib.pyplot as plt

    stages, counts = list(stats["funnel"]), list(stats["funnel"].values())
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bars = ax.barh(stages[::-1], counts[::-1], color=LINE)
    ax.bar_label(bars, padding=3)
    ax.set_xlabel("samples")
    ax.set_xlim(0, max(counts) * 1.12)
    ax.set_title("Filter funnel: samples left after each stage")
    return save(fig, run / "funnel.png")


def pass_rate_figure(solved: dict[str, int], run: Path) -> str:
    """Problems by the teacher's right samples out of n ("0/8" ... "8/8")."""
    import matplotlib.pyplot as plt

    sizes = {key.split("/")[1] for key in solved}
    if len(sizes) == 1:  # every bucket from 0/n to n/n, empty ones too
        n = int(sizes.pop())
        solved = {f"{c}/{n}": solved.get(f"{c}/{n}", 0) for c in range(n + 1)}
    labels, counts = list(solved), list(solved.values())
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bars = ax.bar(labels, counts, color=[DROPPED if lab.startswith("0/") else LINE for lab in labels])
    ax.bar_label(bars, padding=2)
    ax.set_ylim(0, max(counts) * 1.15)
    ax.set_xlabel("teacher's right samples per problem")
    ax.set_ylabel("problems")
    ax.set_title("Teacher pass rate per problem (red: never solved, no trace)")
    return save(fig, run / "pass_rate.png")


def length_correctness_figure(samples, evals: dict[str, dict[str, list]], run: Path) -> str:
    """Left: lengths of the teacher's right and wrong samples; right: share right by length bin, teacher and
    each evaluated model (bins with fewer than 5 samples left out)."""
    import matplotlib.pyplot as plt
    import numpy as np

    lengths, correct = np.array(samples["completion_tokens"]), np.array(samples["correct"], dtype=bool)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    edges = np.linspace(0, lengths.max() + 1, 17)
    left.hist(lengths[~correct], bins=edges, histtype="step", linewidth=2, color=DROPPED, label=f"wrong ({(~correct).sum()})")
    left.hist(lengths[correct], bins=edges, histtype="step", linewidth=2, color=KEPT, label=f"right ({correct.sum()})")
    left.set_yscale("log")
    left.set(xlabel="response length (tokens)", ylabel="samples (log scale)", title="Teacher samples: right vs wrong")
    left.legend()
    series = {f"{name} (eval)": (np.array(e["lengths"]), np.array(e["correct"], dtype=bool)) for name, e in evals.items()}
    series["teacher (generate)"] = (lengths, correct)
    edges = np.linspace(0, max(lens.max() for lens, _ in series.values()) + 1, 17)
    for name, (lens, ok) in series.items():
        idx = np.digitize(lens, edges) - 1
        xs, ys = [], []
        for b in range(len(edges) - 1):
            if (idx == b).sum() >= 5:
                xs.append((edges[b] + edges[b + 1]) / 2)
                ys.append(ok[idx == b].mean())
        right.plot(xs, ys, "o-" if name.endswith("(eval)") else "k--", label=name)
    right.set(xlabel="response length (tokens)", ylabel="share right", ylim=(-0.02, 1.02),
              title="Share of right answers by length")
    right.legend(fontsize=8)
    return save(fig, run / "length_correctness.png")


def length_figure(samples, max_tokens: int | None, run: Path) -> str:
    """One panel per kind (kept, then each drop reason), log counts, the kept lengths outlined in every panel
    for reference and max_tokens marked."""
    import matplotlib.pyplot as plt
    import numpy as np

    lengths = np.array(samples["completion_tokens"])
    kinds = np.array(["kept" if k else r for k, r in zip(samples["keep"], samples["drop_reason"])])
    order = ["kept"] + sorted({k for k in kinds if k != "kept"}, key=lambda k: -(kinds == k).sum())
    top = max(lengths.max(), max_tokens or 0)
    edges = np.linspace(0, top + 1, 33)
    cols = min(3, len(order))
    rows = -(-len(order) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.7 * rows), sharex=True, squeeze=False)
    for ax, kind in zip(axes.flat, order):
        if kind != "kept":
            ax.hist(lengths[kinds == "kept"], bins=edges, histtype="step", color=KEPT, label="kept")
        ax.hist(lengths[kinds == kind], bins=edges, color=KEPT if kind == "kept" else DROPPED, alpha=0.8, label=kind)
        if max_tokens:
            ax.axvline(max_tokens, color="black", linestyle="--", linewidth=1)
            ax.text(max_tokens, 0.97, "max_tokens ", rotation=90, va="top", ha="right", fontsize=7,
                    transform=ax.get_xaxis_transform())
        ax.set_yscale("log")
        ax.set_title(f"{kind} ({(kinds == kind).sum()})", fontsize=10)
    for ax in axes.flat[len(order):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("response length (tokens)")
    for ax in axes[:, 0]:
        ax.set_ylabel("samples (log)")
    fig.suptitle("Response lengths per kind (green outline: kept, for reference)")
    return save(fig, run / "lengths.png")


def loss_figure(history: list[dict], run: Path) -> str:
    """Train and eval loss per step, the learning rate on its own axis, epoch boundaries as dotted lines."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    for key, label, style in (("loss", "train loss", "-o"), ("eval_loss", "eval loss", "s--")):
        points = [(h["step"], h[key]) for h in history if key in h]
        if points:
            ax.plot(*zip(*points), style, markersize=4, label=label)
    ax.set(xlabel="step", ylabel="loss", title="Student training")
    lr = [(h["step"], h["learning_rate"]) for h in history if "learning_rate" in h]
    if lr:
        twin = ax.twinx()
        twin.plot(*zip(*lr), color="gray", linewidth=1, label="learning rate")
        twin.set_ylabel("learning rate", color="gray")
        twin.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    last = max((h for h in history if h.get("epoch")), key=lambda h: h["step"], default=None)
    if last and last["step"]:
        per_epoch = last["step"] / last["epoch"]
        for e in range(1, int(last["epoch"] + 0.999)):
            ax.axvline(e * per_epoch, color="black", linestyle=":", linewidth=1)
            ax.text(e * per_epoch, ax.get_ylim()[1], f" epoch {e + 1}", va="top", fontsize=8)
    handles = [h for a in fig.axes for h in a.get_legend_handles_labels()[0]]
    if handles:
        ax.legend(handles, [h.get_label() for h in handles], loc="upper right")
    return save(fig, run / "loss.png")


def pass_figure(results: dict, run: Path) -> str:
    import matplotlib.pyplot as plt

    models = list(results)
    benches = list(next(iter(results.values())))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, model in enumerate(models):
        xs = [j + i * width for j in range(len(benches))]
        ys = [results[model][b]["pass@1"] for b in benches]
        errs = [results[model][b]["pass@1_stderr"] for b in benches]
        bars = ax.bar(xs, ys, width, yerr=errs, capsize=4, label=model)
        ax.bar_label(bars, fmt="%.2f", padding=2)
    top = max(r[b]["pass@1"] + r[b]["pass@1_stderr"] for r in results.values() for b in benches)
    ax.set_ylim(0, min(1.05, top * 1.2 + 0.02))
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(benches))], benches)
    ax.set_ylabel("pass@1 (± s.e.)")
    ax.legend()
    ax.set_title("pass@1 per model and benchmark")
    return save(fig, run / "pass_at_1.png")


def paired_figure(before: list[int], after: list[int], n: int, base: str, model: str, path: Path) -> str:
    """Problems by right samples of the baseline (x) and the model (y): above the diagonal, the model did better."""
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.zeros((n + 1, n + 1), dtype=int)
    for b, a in zip(before, after):
        grid[a, b] += 1
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    image = ax.imshow(grid, origin="lower", cmap="Blues")
    for a in range(n + 1):
        for b in range(n + 1):
            if grid[a, b]:
                ax.text(b, a, grid[a, b], ha="center", va="center",
                        color="white" if grid[a, b] > grid.max() / 2 else "black")
    ax.plot([-0.5, n + 0.5], [-0.5, n + 0.5], color="gray", linewidth=0.8)
    ax.set_xticks(range(n + 1), [f"{i}/{n}" for i in range(n + 1)])
    ax.set_yticks(range(n + 1), [f"{i}/{n}" for i in range(n + 1)])
    ax.set(xlabel=f"{base}: right samples", ylabel=f"{model}: right samples", title=f"Problems, paired\n(above the diagonal: {model} did better)")
    fig.colorbar(image, ax=ax, shrink=0.8, label="problems")
    return save(fig, path)


def pass_k_figure(curves: dict[tuple[str, str], dict[str, list[float]]], run: Path) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for (model, bench), c in curves.items():
        label = model if len({b for _, b in curves}) == 1 else f"{model} / {bench}"
        line, = ax.plot(c["k"], c["pass"], "-o", label=f"{label} pass@k")
        if "maj" in c:
            ax.plot(c["k"], c["maj"], "--s", color=line.get_color(), label=f"{label} maj@k")
    ks = sorted({k for c in curves.values() for k in c["k"]})
    ax.set_xticks(ks)
    ax.set(xlabel="k (samples per problem)", ylabel="score", ylim=(0, 1.02), title="pass@k (solid) and maj@k (dashed)")
    ax.legend(fontsize=8)
    return save(fig, run / "pass_at_k.png")


def save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name


# ---------------------------------------------------------------- traces


def head_tail(text: str, head: int = HEAD, tail: int = TAIL) -> str:
    """A long trace's start and end (where the answer is), the middle left out with its size."""
    text = text.strip()
    if len(text) <= head + tail + 40:
        return text
    return f"{text[:head]}\n[... {len(text) - head - tail} characters left out ...]\n{text[-tail:]}"


def fenced(text: str) -> str:
    return "```text\n" + head_tail(text).replace("```", "'''") + "\n```\n"


def examples(samples) -> str:
    """The longest kept trace, and the longest dropped trace for each drop reason."""
    picked: dict[str, dict] = {}
    for row in samples:
        key = "kept" if row["keep"] else row["drop_reason"]
        if key not in picked or len(row["completion"]) > len(picked[key]["completion"]):
            picked[key] = row
    out = []
    for key in ["kept", *sorted(k for k in picked if k != "kept")]:
        if key in picked:
            row = picked[key]
            out.append(f"**{key}** (gold {row['gold']}, answer {row['answer']}, {row['completion_tokens']} tokens):\n\n"
                       f"> {short(row['question'], 400)}\n\n" + fenced(row["completion"]))
    return "\n".join(out)
