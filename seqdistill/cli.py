"""The `seqdistill` command: one subcommand per stage.

    seqdistill generate --config pipelines/generate-quickstart.yaml --set sampling.n=4
    seqdistill generate --sampling.n 4 --problems.num_problems=50
    seqdistill sft --config pipelines/sft-quickstart.yaml
    seqdistill generate --help      # every setting with its type, default and help
    seqdistill config generate      # the default config as YAML, to start a --config file from

Settings come from the YAML file given with --config, then `--set key.sub=value` or `--key.sub value`
overrides (values read as YAML). Bad settings stop the run in the first second with a one-line error;
with -v, the tracebacks of what caused it come first.

The commands and their help lines are listed in commands.py; what each one does is its function in RUNS here.
Each command's module is imported inside its function, so `seqdistill --help` never imports torch or vLLM.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback

from seqdistill import __version__
from seqdistill import config as configlib
from seqdistill.commands import COMMANDS, CONFIG_STAGES, PIPELINE_STAGES, config_class
from seqdistill.config import ConfigError


class StageParser(argparse.ArgumentParser):
    """A subcommand parser whose --help ends with every setting of its stage (imported only then)."""

    stage: str | None = None

    def format_help(self) -> str:
        text = super().format_help()
        if self.stage is None:
            return text
        from seqdistill import settings_doc

        listing = settings_doc.help_text(settings_doc.stage_class(self.stage))
        source = "the pipeline YAML" if self.stage == "run" else "a --config YAML file"
        return (f"{text}\nsettings (keys of {source}; on the command line --KEY VALUE or --set KEY=VALUE;\n"
                f"`seqdistill config {self.stage}` prints them as YAML):\n{listing}\n")


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="more log output, also from vLLM and transformers (-v: debug)")
    common.add_argument("-q", "--quiet", action="count", default=argparse.SUPPRESS,
                        help="less log output, also from vLLM and transformers (-q: warnings, -qq: errors)")
    p = argparse.ArgumentParser(prog="seqdistill", description=__doc__.split("\n\n")[0], parents=[common])
    p.add_argument("--version", action="version", version=f"seqdistill {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=StageParser)
    for name, command in COMMANDS.items():
        # no abbreviations where settings are flags: --over must not be read as --overwrite when it may be a setting
        c = sub.add_parser(name, parents=[common], allow_abbrev=command.config is None, help=command.help,
                           description=command.description)
        c.stage = name if command.config else None
        if command.config and name != "run":  # run reads a pipeline recipe, with its own --set
            add_config_args(c)
    commands = sub.choices
    commands["sft"].add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    commands["sft"].add_argument("--merge", action="store_true", help="also save the LoRA merged into the base model")
    r = commands["run"]
    r.add_argument("pipeline", help="pipelines/NAME.yaml")
    r.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set sft.learning_rate=1e-4 generate.sampling.n=4")
    r.add_argument("--only", nargs="+", metavar="STAGE", help=f"run only these stages ({', '.join(PIPELINE_STAGES)})")
    r.add_argument("--from", dest="start", metavar="STAGE", help="run from this stage on")
    commands["report"].add_argument("run_dir")
    v = commands["view"]
    v.add_argument("path", metavar="RUN_DIR|DATASET_DIR", help="a `seqdistill run` run_dir, or a generate or eval output_dir")
    v.add_argument("-o", "--output", metavar="FILE", help="where to write the page (default: DIR/view.html)")
    from seqdistill.view import MAX_CHARS, MAX_TRACES

    v.add_argument("--max-traces", type=int, default=MAX_TRACES,
                   help=f"at most this many teacher traces, and as many eval samples, in the page (default {MAX_TRACES})")
    v.add_argument("--max-chars", type=int, default=MAX_CHARS,
                   help=f"characters kept of each think block and answer: head and tail (default {MAX_CHARS})")
    commands["config"].add_argument("stage", choices=CONFIG_STAGES)
    return p


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="YAML file of settings (defaults: the embedded model and problems)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set sampling.n=4 problems.num_problems=50")
    p.add_argument("--overwrite", action="store_true", help="replace a different run in output_dir")


def flag_overrides(tokens: list[str]) -> list[str]:
    """TRL-style `--key.sub value`, `--key.sub=value` and a bare `--flag` (true) as `key.sub=value` overrides."""
    out, i = [], 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or token == "--":
            raise ConfigError(f"unexpected argument {token!r}; settings look like --key.sub value "
                              "or --set key.sub=value")
        key, sep, value = token[2:].partition("=")
        if not sep:
            if i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                value, i = tokens[i + 1], i + 1
            else:
                value = "true"
        out.append(f"{key.replace('-', '_')}={value}")
        i += 1
    return out


def set_verbosity(level: int) -> None:
    """-v/-q for seqdistill's log and, through their environment variables (read when they are
    imported, which happens later, inside the stages), vLLM's and transformers'."""
    name = "DEBUG" if level > 0 else "INFO" if level == 0 else "WARNING" if level == -1 else "ERROR"
    logging.basicConfig(level=logging.INFO if level > 0 else getattr(logging, name),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("seqdistill").setLevel(name)
    if level == 0:
        return
    os.environ["VLLM_LOGGING_LEVEL"] = name
    for var in ("TRANSFORMERS_VERBOSITY", "DATASETS_VERBOSITY"):
        os.environ[var] = name.lower()
    if "transformers" in sys.modules:  # already imported (e.g. main() called from Python)
        import transformers

        transformers.logging.set_verbosity(getattr(logging, name))


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args, extra = p.parse_known_args(argv)
    if extra and args.command not in CONFIG_STAGES:
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    set_verbosity(getattr(args, "verbose", 0) - getattr(args, "quiet", 0))
    try:
        # flags are settings too: --resume is resume=true; --key.sub value is --set key.sub=value
        overrides = getattr(args, "overrides", []) + [
            f"{k}=true" for k in ("overwrite", "resume", "merge") if getattr(args, k, False)] + flag_overrides(extra)
        RUNS[args.command](args, overrides)
    except ConfigError as e:
        if getattr(args, "verbose", 0) > 0:
            print_causes(e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; finished chunks are saved, rerun the same command to resume", file=sys.stderr)
        sys.exit(130)


def resolved(name: str, args, overrides: list[str]):
    """The command's settings from --config and the overrides, printed before it runs."""
    cfg = configlib.load(config_class(name), args.config, overrides, name)
    print("# resolved config\n" + configlib.dump(cfg), flush=True)
    return cfg


def run_generate(args, overrides: list[str]) -> None:
    from seqdistill import generate

    cfg = resolved("generate", args, overrides)
    print_generate_summary(cfg, generate.run(cfg))


def run_sft(args, overrides: list[str]) -> None:
    from seqdistill import card, sft

    cfg = configlib.load(sft.SFTStageConfig, args.config, overrides, "sft")
    main_process = sft.processes(cfg).is_main_process  # under accelerate launch, the others print nothing
    if main_process:
        print("# resolved config\n" + configlib.dump(cfg), flush=True)
    metrics = sft.run(cfg).metrics
    if main_process:
        print(f"train loss {metrics['train_loss']:.4f} in {metrics['train_seconds']} s, "
              f"{metrics['train_tokens_per_second']} tokens/s, {card.memory_line(metrics)}; "
              f"student: {cfg.output_dir}/model")


def run_eval(args, overrides: list[str]) -> None:
    from seqdistill import evaluate, store

    cfg = resolved("eval", args, overrides)
    results = evaluate.run(cfg)
    print("\n" + evaluate.table(results))
    print(f"results: {cfg.output_dir}/{store.RESULTS_TABLE}, per-sample records under {cfg.output_dir}/MODEL/BENCHMARK/")


def run_score(args, overrides: list[str]) -> None:
    from seqdistill import score

    cfg = resolved("score", args, overrides)
    stats = score.run(cfg)
    print(f"scored {stats['examples']} traces, {stats['teacher_logprobs']['bytes_per_token']} bytes/token; "
          f"dataset: {cfg.output_dir}/data/train.parquet")


def run_student(args, overrides: list[str]) -> None:
    from seqdistill import student

    cfg = resolved("student", args, overrides)
    info = student.run(cfg)
    print(f"kept layers {info['kept']} of {info['source_layers']}; student: {cfg.output_dir}")


def run_pipeline(args, overrides: list[str]) -> None:
    from seqdistill import pipeline

    cfg = pipeline.load(args.pipeline, overrides)
    print("# resolved pipeline\n" + configlib.dump(cfg), flush=True)
    pipeline.run(cfg, only=args.only, start=args.start)


def run_report(args, overrides: list[str]) -> None:
    from seqdistill import report

    print(f"report: {report.write(args.run_dir)}")


def run_view(args, overrides: list[str]) -> None:
    from seqdistill import view

    print(f"page: {view.write(args.path, args.output, args.max_traces, args.max_chars)}")


def print_config(args, overrides: list[str]) -> None:
    from seqdistill import settings_doc

    cls, default, skip = settings_doc.stage_class(args.stage), None, {}
    if args.stage == "run":  # a pipeline's stages are off unless named: show each with its defaults
        default = cls(**{s: settings_doc.stage_class(s)() for s in PIPELINE_STAGES})
        skip = {f"{s}.output_dir": "RUN_DIR/" + s for s in PIPELINE_STAGES}
        skip.update({"sft.dataset": "what generate writes (name one when there is no generate stage)",
                     "eval.models": "the teacher, the student before and after sft (or name your own)"})
    try:
        print(settings_doc.default_yaml(cls, default, skip))
    except BrokenPipeError:  # seqdistill config sft | head: the reader has gone (Python's own recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


# what each command of commands.COMMANDS does with its parsed arguments and setting overrides
RUNS = {"generate": run_generate, "sft": run_sft, "eval": run_eval, "score": run_score, "student": run_student,
        "run": run_pipeline, "report": run_report, "view": run_view, "config": print_config}


def print_causes(e: BaseException) -> None:
    """-v: the traceback of a one-line error and of the exceptions it was made from (one raised `from None`
    included: its cause is still there, only hidden), before the line itself."""
    link, seen = e, set()
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__suppress_context__ = False
        link = link.__cause__ or link.__context__
    traceback.print_exception(e, file=sys.stderr)


def print_generate_summary(cfg, stats: dict) -> None:
    from seqdistill.card import funnel_table

    if "waiting_for" in stats:
        print(f"shard {cfg.shard_index} done; the dataset is joined when {', '.join(stats['waiting_for'])} finish")
        return
    print("\n" + funnel_table(stats["funnel"]))
    print("drop reasons: " + json.dumps(stats["drop_reasons"]))
    print(f"teacher pass@1 {stats['pass@1']:.3f}, pass@{cfg.sampling.n} {stats['pass@n']:.3f}; "
          f"{stats['generated_tokens_per_second']} generated tok/s")
    print(f"dataset: {cfg.output_dir}/data/train.parquet ({stats['funnel']['kept']} kept traces)")
