"""reasoning-gym as a problem source: its tasks drawn, seeded, into problem rows, and each task's own checker.

Problems (`problems.source: reasoning-gym`, `tasks`) are drawn from the task generators of the
reasoning-gym package, seeded. A weighted mix draws round(num_problems * weight / total) problems per
task (largest remainder), interleaved in a seeded order so any prefix or shard is a mix. A question
belongs to train or held-out by a hash of its text (the embedded set's rule), and each split draws from
its own seed space: the two splits never share a question, whatever the seed or count. Rows carry
`rg_task`, `rg_metadata` (the task's metadata, JSON) and `rg_entry` (JSON: task config, seed, size and
index, from which `score` regenerates the task's exact entry for its own `score_answer`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass, field
from functools import lru_cache

from seqdistill.config import ConfigError, first_line
from seqdistill.sources import arithmetic

REASONING_GYM = "reasoning-gym"  # the problems.source that draws from it
CANDIDATES = 20  # candidates drawn per wanted problem (duplicates and the other split's questions are skipped)
BUILT_FROM = {"gsm_symbolic": "gsm8k"}  # reasoning-gym task -> the preset whose test questions it rewrites


@dataclass
class RGTask:
    name: str  # a reasoning-gym task: chain_sum, basic_arithmetic, gsm_symbolic, word_sorting, ...
    weight: float = 1.0  # share of the problems drawn from this task (weights are normalised)
    config: dict = field(default_factory=dict)  # the task's own settings (size, difficulty), e.g. {max_terms: 3}


def specs(tasks: str | list[RGTask] | None) -> list[RGTask]:
    return [RGTask(tasks)] if isinstance(tasks, str) else list(tasks or [])


def benchmark_tasks(cfg, presets: list[str | None], where: str) -> list[str]:
    """Refuse reasoning-gym tasks (of a problems config) built from the test questions of a benchmark in `presets`:
    they carry new names and numbers, so the n-gram decontamination can't see them (gsm_symbolic is GSM8K's test
    set rewritten)."""
    if cfg.source != REASONING_GYM:
        return []
    return [f"tasks: {spec.name} is built from {BUILT_FROM[spec.name]}'s test questions (new names and numbers, "
            f"which decontamination can't catch), and {where} names {BUILT_FROM[spec.name]}; drop {spec.name} "
            f"from the tasks or evaluate on another benchmark"
            for spec in specs(cfg.tasks) if spec.name in BUILT_FROM and BUILT_FROM[spec.name] in presets]


def check_tasks(tasks, split: str | None) -> list[str]:
    """Task names, weights and each task's own settings, checked by building the task (no model needed)."""
    import difflib

    wanted = specs(tasks)
    if not wanted:
        return [f"tasks: source {REASONING_GYM} needs a task name (chain_sum) or a list of {{name, weight, config}}"]
    errors = [] if split in (None, "train", "heldout") else [f"split must be train or heldout for reasoning-gym, got {split!r}"]
    try:
        import reasoning_gym
    except ImportError:
        return errors + ["source: reasoning-gym needs the reasoning-gym package: pip install reasoning-gym"]
    known = sorted(n for n in reasoning_gym.factory.DATASETS if n != "composite")
    for spec in wanted:
        if spec.weight <= 0:
            errors.append(f"tasks[{spec.name}].weight must be > 0, got {spec.weight}")
        if spec.name not in known:
            close = difflib.get_close_matches(spec.name, known, n=5, cutoff=0.5)
            hint = f"close: {', '.join(close)}" if close else f"known: {', '.join(known)}"
            errors.append(f"tasks: unknown reasoning-gym task {spec.name!r}; {hint}")
            continue
        try:
            _dataset(spec.name, json.dumps(spec.config, sort_keys=True), 0, 1)
        except TypeError:
            keys = [f.name for f in dataclasses.fields(reasoning_gym.factory.DATASETS[spec.name][1]) if f.name not in ("seed", "size")]
            wrong = sorted(set(spec.config) - set(keys))
            errors.append(f"tasks[{spec.name}].config: the task has no setting(s) {', '.join(wrong) or '?'}; "
                          f"it takes: {', '.join(keys)}")
        except Exception as e:  # the task's own validation (AssertionError, ValueError)
            errors.append(f"tasks[{spec.name}].config {spec.config} refused by the task: "
                          f"{first_line(e)}")
    return errors


def load(tasks: str | list[RGTask] | None, num_problems: int, split: str, seed: int) -> list[dict]:
    """`num_problems` problems of one split, per task by weight, interleaved in a seeded order."""
    wanted = specs(tasks)
    counts = _allocate(num_problems, [s.weight for s in wanted])
    per_task = [iter(_draw(spec, n, split, seed)) for spec, n in zip(wanted, counts)]
    order = [t for t, n in enumerate(counts) for _ in range(n)]
    random.Random(f"seqdistill-rg-order-{seed}").shuffle(order)
    return [next(per_task[t]) for t in order]


def score(answer: str | None, problem: dict) -> float:
    """The task's own score_answer on the row's exact entry; an answer the checker chokes on scores 0."""
    dataset, item = entry(problem)
    try:
        return float(dataset.score_answer(answer, item))
    except Exception:
        return 0.0


def entry(row: dict) -> tuple:
    """(the task's dataset object, its exact entry) for a reasoning-gym row: regenerated, not parsed back from JSON."""
    e = json.loads(row["rg_entry"])
    key = (row["rg_task"], json.dumps(e["config"], sort_keys=True), e["seed"], e["size"])
    return _dataset(*key), _item(*key, e["index"])


@lru_cache(maxsize=256)
def _dataset(name: str, config_json: str, seed: int, size: int):
    import reasoning_gym

    return reasoning_gym.create_dataset(name, seed=seed, size=size, **json.loads(config_json))


@lru_cache(maxsize=100_000)
def _item(name: str, config_json: str, seed: int, size: int, index: int) -> dict:
    return _dataset(name, config_json, seed, size)[index]


def _allocate(total: int, weights: list[float]) -> list[int]:
    """Largest-remainder split of `total` by weights."""
    shares = [total * w / sum(weights) for w in weights]
    counts = [int(s) for s in shares]
    for i in sorted(range(len(shares)), key=lambda i: counts[i] - shares[i])[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _draw(spec: RGTask, n: int, split: str, seed: int) -> list[dict]:
    """n distinct problems of a task whose question text belongs to `split`, from that split's own seed space."""
    if n == 0:
        return []
    task_seed = int(hashlib.sha256(f"seqdistill-rg-{split}-{seed}-{spec.name}".encode()).hexdigest()[:8], 16)
    size, config_json = CANDIDATES * n + 100, json.dumps(spec.config, sort_keys=True)
    rows, seen = [], set()
    for index in range(size):
        item = _item(spec.name, config_json, task_seed, size, index)
        question = item["question"]
        if question in seen or arithmetic.split_of(question) != split:
            continue
        seen.add(question)
        rows.append({"id": f"rg-{spec.name}-{seed}-{split}-{index}", "question": question,
                     "answer": "" if item["answer"] is None else str(item["answer"]), "rg_task": spec.name,
                     "rg_metadata": json.dumps(item.get("metadata", {}), default=str),
                     "rg_entry": json.dumps({"config": spec.config, "seed": task_seed, "size": size, "index": index})})
        if len(rows) == n:
            return rows
    raise ConfigError(f"task {spec.name} gave only {len(rows)} distinct {split} problems in {size} draws, "
                      f"{n} wanted; lower num_problems or its weight, or widen the task's config")
