"""`seqdistill run`: the whole chain (generate -> sft -> eval) from one recipe.

    seqdistill run pipelines/quickstart.yaml
    seqdistill run pipelines/quickstart.yaml --from sft --set sft.learning_rate=1e-4
    seqdistill run pipelines/quickstart.yaml --only eval

Every stage writes under RUN_DIR/STAGE, and each stage's output feeds the next: sft trains on
RUN_DIR/generate, eval scores the teacher, the untouched student and the distilled student
(unless the recipe lists its own models). A stage whose outputs exist for the same resolved
config is skipped with a line saying so; a changed stage and every stage after it rerun; an
interrupted stage resumes (each stage's own resume). A change that only re-filters reuses the
samples; a stage that samples (generate, eval) and must start over sets its old directory aside
(RUN_DIR/STAGE.old-TIME, named in a log line) rather than delete it. Every stage is checked before
the first one runs. RUN_DIR also holds the resolved pipeline.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from seqdistill import config as configlib
from seqdistill import card, commands, hub, models, store, trackers
from seqdistill.checking import rgym
from seqdistill.config import ConfigError
from seqdistill.evaluate import EvalConfig, ModelEntry
from seqdistill.generate import GenerateConfig
from seqdistill.sft import SFTStageConfig
from seqdistill.training import data
from seqdistill import evaluate, generate, sft
from seqdistill import report
from seqdistill.training.data import load_table

log = logging.getLogger(__name__)
STAGES = commands.PIPELINE_STAGES


@dataclass
class PipelineConfig:
    run_dir: str = "runs/quickstart"
    run_name: str | None = None  # every stage's tracker group (one wandb group, one experiment); None: run_dir's name
    report_to: list[str] | None = None  # every stage's trackers (tensorboard, wandb, none); None: each stage's own
    generate: GenerateConfig | None = None
    sft: SFTStageConfig | None = None
    eval: EvalConfig | None = None

    def __post_init__(self):
        # eval may name what this pipeline's sft stage will write (e.g. RUN_DIR/sft/merged): it need not exist yet
        if self.eval is not None:
            self.eval.planned = (str(Path(str(self.run_dir)) / "sft"),) if self.sft is not None else ()

    def validate(self) -> list[str]:
        errors = trackers.check(self.report_to) if self.report_to is not None else []
        if self.generate and self.eval:  # training on a benchmark's rewritten test set, then evaluating on it
            named = [b.problems_config().preset for b in self.eval.benchmarks]
            found = rgym.benchmark_tasks(self.generate.problems, named, "eval.benchmarks")
            errors += [f"generate.problems.{p}" for p in found]
        if self.sft and self.eval:  # the student is scored in the mode it was trained in
            if self.sft.chat_template_kwargs != self.eval.prompt.chat_template_kwargs:
                errors.append(f"sft.chat_template_kwargs {self.sft.chat_template_kwargs} differ from "
                              f"eval.prompt.chat_template_kwargs {self.eval.prompt.chat_template_kwargs}: the student "
                              "would be scored with other chat-template switches than it was trained with; set them alike")
            if self.sft.thinking == "off" and not self.eval.prompt.prefill.endswith("</think>\n\n"):
                errors.append('sft.thinking off trains the student to answer after an empty think block: score it the '
                              'same way with eval.prompt.prefill: "<think>\\n\\n</think>\\n\\n"')
        return errors


def load(path: str, overrides: list[str]) -> PipelineConfig:
    """The recipe with overrides, its stages wired together under run_dir."""
    raw = configlib.read(path, overrides, "run")
    # without eval.models, eval.compare names the default models, which exist only after the build
    compare = raw["eval"].pop("compare", None) if isinstance(raw.get("eval"), dict) and "models" not in raw["eval"] else None
    cfg = configlib.build(PipelineConfig, raw)
    run = Path(cfg.run_dir)
    if cfg.generate:
        cfg.generate.output_dir = str(run / "generate")
    if cfg.sft:
        cfg.sft.output_dir = str(run / "sft")
        if cfg.generate and cfg.sft.datasets:
            raise ConfigError("sft.datasets names its own datasets, but in a pipeline with a generate stage sft trains "
                              "on what generate writes: drop sft.datasets, or drop the generate stage")
        if cfg.generate:
            cfg.sft.dataset = cfg.generate.output_dir
            if cfg.sft.kd.mode == "offline" and not cfg.generate.teacher_logprobs:
                raise ConfigError("sft.kd.mode offline trains on the teacher's top-k log-probs: "
                                  "set generate.teacher_logprobs: true")
        else:  # the dataset must exist now: nothing in this pipeline will write it
            named = ([(f"sft.datasets[{i}]", s.path, s.split or cfg.sft.dataset_split) for i, s in enumerate(cfg.sft.datasets)]
                     or [("sft.dataset", cfg.sft.dataset, cfg.sft.dataset_split)])
            for key, path, split in named:
                try:
                    load_table(path, split)
                except ConfigError as e:
                    raise ConfigError(f"{key}: {e} (the pipeline has no generate stage to write it)") from e
    if cfg.eval:
        cfg.eval.output_dir = str(run / "eval")
        if "models" not in (raw.get("eval") or {}):
            cfg.eval.models = default_models(cfg)
            cfg.eval.compare = default_compare(cfg.eval.models) if compare is None else compare
            errors = cfg.eval.compare_problems()
            if errors:
                raise ConfigError(f"eval.{errors[0]}")
    if not any(getattr(cfg, s) for s in STAGES):
        raise ConfigError(f"pipeline {path} has none of the stages {', '.join(STAGES)}")
    for stage in (s for s in STAGES if getattr(cfg, s)):  # one experiment: the same group and trackers everywhere
        stage_cfg = getattr(cfg, stage)
        stage_cfg.run_name = stage_cfg.run_name or cfg.run_name or run.name
        if cfg.report_to is not None:
            if "report_to" in (raw.get(stage) or {}) and stage_cfg.report_to != cfg.report_to:
                raise ConfigError(f"report_to is set for the pipeline and for {stage}, differently; keep one")
            stage_cfg.report_to = cfg.report_to
    return cfg


def default_models(cfg: PipelineConfig) -> list[ModelEntry]:
    """Teacher, untouched student and distilled student (merged model, else the adapter)."""
    entries = []
    teachers = cfg.generate.teacher_list() if cfg.generate else []
    for t in teachers:  # several: each by its name
        entries.append(ModelEntry(t.model, name=f"teacher-{t.label()}" if cfg.generate.teachers else "teacher",
                                  engine=t.engine))
    if cfg.sft:
        if len(teachers) != 1 or cfg.sft.student != teachers[0].model:
            entries.append(ModelEntry(cfg.sft.student, name="student-before"))
        else:
            entries[0].name = "teacher=student-before"
        out = Path(cfg.sft.output_dir)
        if cfg.sft.merge or cfg.sft.method == "full":
            entries.append(ModelEntry(str(out / ("merged" if cfg.sft.merge else "model")), name="student-after"))
        else:
            entries.append(ModelEntry(cfg.sft.student, name="student-after", adapter=str(out / "model")))
    return entries


def default_compare(entries: list[ModelEntry]) -> list[list[str]]:
    """The distilled student against the untouched one (paired: same problems, same seeds)."""
    names = [m.name for m in entries]
    before = next((n for n in names if n in ("student-before", "teacher=student-before")), None)
    return [[before, "student-after"]] if before and "student-after" in names else []


def preflight(cfg: PipelineConfig, selected: list[str]) -> dict:
    """Before the first stage runs, each stage's own checks on what exists now: generate's (when it will run),
    sft's precision on this device and LoRA targets (when it will run) and its dataset (a finished generate's;
    `load` read a dataset no stage writes), eval's benchmarks, prompts and context lengths for the models that
    exist already (the distilled student appears only after sft).
    Returns what generate's check found, which its run then reuses (the first stage: nothing changed since)."""

    checked = {}
    generate_runs = "generate" in selected and not layout("generate", cfg.generate).done(cfg.generate.output_dir, cfg.generate)
    if generate_runs:
        checked["generate"] = generate.check(cfg.generate)
    if "sft" in selected and (generate_runs or not layout("sft", cfg.sft).done(cfg.sft.output_dir, cfg.sft)):
        sft.check(cfg.sft)
    if "sft" in selected and cfg.generate and not generate_runs:
        data.load_table(cfg.sft.dataset, cfg.sft.dataset_split)
    if "eval" in selected:
        now = [m for m in cfg.eval.models if (not models.is_local(m.model) or Path(m.model).expanduser().exists())
               and (not m.adapter or (Path(m.adapter) / "adapter_config.json").is_file())]
        if now:
            evaluate.check(dataclasses.replace(cfg.eval, models=now))
    return checked


def layout(stage: str, cfg) -> store.Layout:
    """The stage's own output-directory rules (one object per stage: the stage and the pipeline use the same)."""
    module = commands.module(stage)
    return module.output_layout(cfg) if stage == "eval" else module.OUTPUT


def run(cfg: PipelineConfig, only: list[str] | None = None, start: str | None = None) -> dict:
    for name in (only or []) + ([start] if start else []):
        if name not in STAGES:
            raise ConfigError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
    present = [s for s in STAGES if getattr(cfg, s) is not None]
    selected = [s for s in present if (not only or s in only) and (not start or STAGES.index(s) >= STAGES.index(start))]
    checked = preflight(cfg, selected)  # a run refused by any stage's checks writes nothing
    store.remove_stale_temps(cfg.run_dir)  # of writes a killed run left, in stages this run may skip too
    configlib.save(cfg, Path(cfg.run_dir) / "pipeline.yaml")
    results, dirty = {}, False
    for stage in selected:
        stage_cfg, module = getattr(cfg, stage), commands.module(stage)
        rules = layout(stage, stage_cfg)
        if rules.done(stage_cfg.output_dir, stage_cfg) and not dirty:
            print(f"[{stage}] outputs in {stage_cfg.output_dir} match this config; skipped", flush=True)
            hub.push(stage, stage_cfg)  # a push that failed before is tried again (a done one is not repeated)
            continue
        out = Path(stage_cfg.output_dir)
        changes = rules.changes(out, stage_cfg)
        if dirty or (changes and not rules.rebuildable(out, stage_cfg)):
            # a changed stage (unless only settings it rebuilds from its sampled parts), or one after a stage that ran,
            # starts over: sampled work is set aside (only the user's own --overwrite deletes it), the rest replaced
            if rules.parts and not stage_cfg.overwrite:
                why = f"{stage} settings changed ({store.shown(changes)})" if changes else f"a stage before {stage} ran"
                rules.set_aside(out, why)
            else:
                stage_cfg.overwrite = True
        elif stage == "sft":
            stage_cfg.resume = True  # an interrupted training continues from its last checkpoint
        print(f"[{stage}] running -> {stage_cfg.output_dir}", flush=True)
        results[stage] = module.run(stage_cfg, checked=checked[stage]) if stage in checked else module.run(stage_cfg)
        dirty = True  # every later stage must see this stage's new outputs
    if cfg.sft and "eval" in selected:  # the distilled student's scores on its model cards, where the hub shows them
        for path in card.add_eval_results(cfg.sft.output_dir, cfg.eval.output_dir):
            print(f"eval results -> {path}", flush=True)
        hub.push_cards(cfg.sft)
    print(f"report: {report.write(cfg.run_dir)}", flush=True)
    return results
