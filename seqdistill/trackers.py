"""The headline figures of generate and eval, sent to the trackers sft reports to (`report_to`).

TensorBoard (the default) gets one log directory per stage under the stage's output directory
(OUTPUT_DIR/runs; sft's TRL logs land in OUTPUT_DIR/checkpoints/runs), so `tensorboard --logdir RUN_DIR`
shows a pipeline's stages together; wandb gets one run per stage in the group `run_name` (a pipeline
passes its own name to every stage), in the project $WANDB_PROJECT (default: seqdistill); trackio (Hugging Face's
local tracker) likewise, in $TRACKIO_PROJECT (default: seqdistill), stored under $TRACKIO_DIR (`trackio show`).
`none` logs nothing. Trackers are imported only when used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)
KNOWN = ("tensorboard", "wandb", "trackio", "none")
PROJECT = "seqdistill"


def check(report_to: list[str], known: tuple[str, ...] | None = KNOWN) -> list[str]:
    """Unknown trackers (`known=None`: any, e.g. sft's, which transformers checks) and a wandb that isn't installed."""
    errors = [f"report_to: unknown tracker {t!r}; use {', '.join(known)}" for t in report_to if known and t not in known]
    if "wandb" in report_to and importlib.util.find_spec("wandb") is None:
        errors.append("report_to wandb needs `pip install wandb` (then `wandb login`); or use report_to: [tensorboard]")
    if "trackio" in report_to and importlib.util.find_spec("trackio") is None:
        errors.append("report_to trackio needs `pip install trackio`; or use report_to: [tensorboard]")
    return errors


def log_figures(report_to: list[str], out: Path, stage: str, run_name: str | None, figures: dict,
                config: dict | None = None) -> None:
    """One point per figure (tags `STAGE/NAME`); a rerun replaces the stage's TensorBoard log and updates its wandb run."""
    figures = {f"{stage}/{k}": float(v) for k, v in figures.items() if isinstance(v, (int, float))}
    if "tensorboard" in report_to:
        to_tensorboard(Path(out) / "runs", figures, config)
    if "wandb" in report_to:
        to_wandb(Path(out), stage, run_name, figures, config)
    if "trackio" in report_to:
        to_trackio(stage, run_name, figures, config)


def to_tensorboard(logdir: Path, figures: dict, config: dict | None) -> None:
    import json

    from torch.utils.tensorboard import SummaryWriter

    for old in logdir.glob("events.out.tfevents.*"):  # this directory holds the latest figures only
        old.unlink()
    with SummaryWriter(log_dir=str(logdir)) as writer:
        for tag, value in figures.items():
            writer.add_scalar(tag, value, 0)
        if config is not None:
            writer.add_text("config", "```json\n" + json.dumps(config, indent=1, default=str) + "\n```", 0)
    log.info("TensorBoard: %d figures in %s", len(figures), logdir)


def to_wandb(out: Path, stage: str, run_name: str | None, figures: dict, config: dict | None) -> None:
    import wandb

    # the same output directory is the same wandb run: a rerun updates it instead of adding another
    run_id = hashlib.sha1(f"{out.resolve()}:{stage}:{run_name}".encode()).hexdigest()[:16]
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), group=run_name, job_type=stage,
                     name=f"{run_name}-{stage}" if run_name else stage, id=run_id, resume="allow",
                     config=config, dir=str(out))
    run.log(figures)
    run.summary.update(figures)
    run.finish()


def to_trackio(stage: str, run_name: str | None, figures: dict, config: dict | None) -> None:
    import trackio

    # the same run name is the same trackio run (resume): a rerun adds a point to it
    trackio.init(project=trackio_project(), name=f"{run_name}-{stage}" if run_name else stage, group=run_name,
                 config=config, resume="allow")
    trackio.log(figures)
    trackio.finish()


def trackio_project() -> str:
    """The trackio project of every stage (sft's too: TrainingArguments.project)."""
    return os.environ.get("TRACKIO_PROJECT", PROJECT)


def hf_run_name(run_name: str | None, stage: str) -> str | None:
    """The run name sft's trackers (inside transformers) get."""
    return f"{run_name}-{stage}" if run_name else None


def join_group(report_to: list[str], run_name: str | None, stage: str) -> None:
    """transformers' wandb run goes where generate's and eval's go (project, job type, group) through wandb's own
    environment variables, unless the user set them."""
    if "wandb" not in report_to:
        return
    os.environ.setdefault("WANDB_PROJECT", PROJECT)  # transformers' own default would be "huggingface"
    os.environ.setdefault("WANDB_JOB_TYPE", stage)
    if run_name:
        os.environ.setdefault("WANDB_RUN_GROUP", run_name)
