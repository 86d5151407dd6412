"""`seqdistill report RUN_DIR`: report.md with figures, rebuilt from a pipeline run's saved artifacts.

Figures (PNG, beside report.md): the filter funnel, response lengths of kept vs dropped traces,
the training (and eval) loss curve, pass@1 with standard-error bars per model and benchmark; then
example traces: one kept, and one dropped for each reason.
"""

from __future__ import annotations

import json
from pathlib import Path

from seqdistill import card, store
from seqdistill.config import ConfigError
from seqdistill.sft import memory_line


def write(run_dir: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    run = Path(run_dir)
    gen, sft, ev = run / "generate", run / "sft", run / "eval"
    if not any(p.is_dir() for p in (gen, sft, ev)):
        raise ConfigError(f"{run} holds no pipeline run (no generate/, sft/ or eval/); give the run_dir of `seqdistill run`")
    parts = [f"# seqdistill run: `{run}`\n"]
    if (ev / "results.json").is_file():
        results = json.loads((ev / "results.json").read_text())
        parts += ["## Results\n", (ev / "results.md").read_text(), f"![pass@1]({pass_figure(results, run)})\n"]
    if (gen / "stats.json").is_file():
        stats = json.loads((gen / "stats.json").read_text())
        samples = store.read_parquet([gen / "data" / "train.parquet", gen / "data" / "dropped.parquet"])
        parts += ["## Teacher traces\n", card.funnel_table(stats["funnel"]) + "\n",
                  f"![funnel]({funnel_figure(stats, run)})\n", f"![lengths]({length_figure(samples, run)})\n",
                  "### Example traces\n", examples(samples)]
    if (sft / "metrics.json").is_file():
        metrics = json.loads((sft / "metrics.json").read_text())
        parts += ["## Student training\n",
                  f"Final train loss {metrics['train_loss']:.4f} after {metrics['global_step']} steps in "
                  f"{metrics['train_seconds']} s ({metrics['train_tokens_per_second']} tokens/s, "
                  f"{memory_line(metrics)}).\n", f"![loss]({loss_figure(metrics, run)})\n"]
    path = run / "report.md"
    store.write_text(path, "\n".join(parts))
    return path


def funnel_figure(stats: dict, run: Path) -> str:
    import matplotlib.pyplot as plt

    stages, counts = list(stats["funnel"]), list(stats["funnel"].values())
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bars = ax.barh(stages[::-1], counts[::-1], color="#4C72B0")
    ax.bar_label(bars, padding=3)
    ax.set_xlabel("samples")
    ax.set_title("Filter funnel: samples left after each stage")
    return save(fig, run / "funnel.png")


def length_figure(samples, run: Path) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    kept = [n for n, k in zip(samples["completion_tokens"], samples["keep"]) if k]
    dropped = [n for n, k in zip(samples["completion_tokens"], samples["keep"]) if not k]
    bins = 30
    ax.hist(dropped, bins=bins, alpha=0.6, label=f"dropped ({len(dropped)})", color="#C44E52")
    ax.hist(kept, bins=bins, alpha=0.7, label=f"kept ({len(kept)})", color="#55A868")
    ax.set_xlabel("response length (tokens)")
    ax.set_ylabel("samples")
    ax.legend()
    ax.set_title("Response lengths, kept vs dropped")
    return save(fig, run / "lengths.png")


def loss_figure(metrics: dict, run: Path) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    for key, label in (("loss", "train"), ("eval_loss", "eval")):
        points = [(h["step"], h[key]) for h in metrics["log_history"] if key in h]
        if points:
            ax.plot(*zip(*points), marker="o" if key == "eval_loss" else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if ax.lines:
        ax.legend()
    ax.set_title("Student training loss")
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


def save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def examples(samples) -> str:
    """One kept trace, and one dropped trace for each drop reason."""
    picked: dict[str, dict] = {}
    for row in samples:
        key = "kept" if row["keep"] else row["drop_reason"]
        picked.setdefault(key, row)
    out = []
    for key, row in picked.items():
        out.append(f"**{key}** (gold {row['gold']}, answer {row['answer']}):\n\n> {row['question']}\n\n"
                   "```text\n" + row["completion"].strip()[:1200] + "\n```\n")
    return "\n".join(out)
