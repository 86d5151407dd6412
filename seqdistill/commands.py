"""The `seqdistill` commands, in one table: each one's module, config class and one-line help.

The CLI builds its subcommands from it (in this order), `seqdistill run` takes its stages from it (those
marked `pipeline`, run in this order), and settings_doc documents the settings of every command with a
config class. A command's module is imported only when it is needed, so `seqdistill --help` stays instant.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    help: str  # its line in `seqdistill --help`
    module: str  # the module that does the work, imported only when the command needs it
    config: str | None = None  # the module's config dataclass: the command's settings (--config YAML, --KEY VALUE)
    description: str | None = None  # the top of `seqdistill NAME --help`
    pipeline: bool = False  # a stage of `seqdistill run`


COMMANDS = {
    "generate": Command("sample teacher traces with vLLM into a verified, filtered dataset", "seqdistill.generate",
                        "GenerateConfig", "Sample teacher traces with vLLM, verify and filter them, write a dataset.",
                        pipeline=True),
    "sft": Command("fine-tune a student on the traces with TRL (LoRA, full or QLoRA)", "seqdistill.sft",
                   "SFTStageConfig", "Fine-tune a student on a traces dataset with TRL's SFTTrainer.", pipeline=True),
    "eval": Command("score teacher and students on benchmarks with vLLM", "seqdistill.evaluate", "EvalConfig",
                    "pass@1 (± s.e.), pass@k and maj@k of several models on several benchmarks.", pipeline=True),
    "score": Command("add a teacher's top-k log-probs to an existing traces dataset (logit KD)", "seqdistill.score",
                     "ScoreConfig", "One vLLM prompt-log-probs pass over each trace; writes a dataset sft can use "
                     "with kd.mode offline."),
    "student": Command("build a smaller student from a model by keeping some of its decoder layers",
                       "seqdistill.student", "StudentConfig",
                       "Keep a subset of a model's decoder layers (e.g. every other one, as DistilBERT did) and "
                       "save it as a model directory sft can train."),
    "run": Command("run the whole chain (generate -> sft -> eval) from a pipeline recipe", "seqdistill.pipeline",
                   "PipelineConfig", "Run a pipeline recipe; finished stages with the same config are skipped."),
    "report": Command("rebuild RUN_DIR/report.md and its figures from a run's artifacts", "seqdistill.report"),
    "view": Command("write one self-contained HTML page to browse a run's traces and eval samples", "seqdistill.view",
                    description="Write an HTML page (no server, opens from disk) to browse kept and dropped traces "
                                "by drop reason, problem and verdict, and each model's eval samples side by side."),
    "config": Command("print a stage's default config as YAML, with each setting's help", "seqdistill.settings_doc",
                      description="Print a stage's full default config as YAML (a starting point for --config)."),
}
CONFIG_STAGES = tuple(name for name, c in COMMANDS.items() if c.config)  # commands whose settings --KEY VALUE sets
PIPELINE_STAGES = [name for name, c in COMMANDS.items() if c.pipeline]  # `seqdistill run`'s stages, in order


def module(name: str):
    return importlib.import_module(COMMANDS[name].module)


def config_class(name: str) -> type:
    return getattr(module(name), COMMANDS[name].config)
