"""The `seqdistill` command: one subcommand per stage.

    seqdistill generate --config pipelines/generate-quickstart.yaml --set sampling.n=4
    seqdistill sft --config pipelines/sft-quickstart.yaml
    seqdistill generate --help

Settings come from the YAML file given with --config, then `--set key.sub=value` overrides
(values read as YAML). Bad settings stop the run in the first second with a one-line error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from seqdistill import config as configlib
from seqdistill.config import ConfigError



def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seqdistill", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    g = sub.add_parser("generate", help="sample teacher traces with vLLM into a verified, filtered dataset",
                       description="Sample teacher traces with vLLM, verify and filter them, write a dataset.")
    add_config_args(g)
    s = sub.add_parser("sft", help="fine-tune a student on the traces with TRL (LoRA, full or QLoRA)",
                       description="Fine-tune a student on a traces dataset with TRL's SFTTrainer.")
    add_config_args(s)
    s.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    s.add_argument("--merge", action="store_true", help="also save the LoRA merged into the base model")
    sc = sub.add_parser("score", help="add a teacher's top-k log-probs to an existing traces dataset (logit KD)",
                        description="One vLLM prompt-log-probs pass over each trace; writes a dataset sft can use "
                                    "with kd.mode offline.")
    add_config_args(sc)
    e = sub.add_parser("eval", help="score teacher and students on benchmarks with vLLM",
                       description="pass@1 (± s.e.), pass@k and maj@k of several models on several benchmarks.")
    add_config_args(e)
    r = sub.add_parser("run", help="run the whole chain (generate -> sft -> eval) from a pipeline recipe",
                       description="Run a pipeline recipe; finished stages with the same config are skipped.")
    r.add_argument("pipeline", help="pipelines/NAME.yaml")
    r.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set sft.learning_rate=1e-4 generate.sampling.n=4")
    r.add_argument("--only", nargs="+", metavar="STAGE", help="run only these stages (generate, sft, eval)")
    r.add_argument("--from", dest="start", metavar="STAGE", help="run from this stage on")
    rep = sub.add_parser("report", help="rebuild RUN_DIR/report.md and its figures from a run's artifacts")
    rep.add_argument("run_dir")
    return p


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="YAML file of settings (defaults: the embedded model and problems)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set sampling.n=4 problems.num_problems=50")
    p.add_argument("--overwrite", action="store_true", help="replace a different run in output_dir")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    # flags are settings too: --resume is resume=true
    overrides = getattr(args, "overrides", []) + [
        f"{k}=true" for k in ("overwrite", "resume", "merge") if getattr(args, k, False)]
    try:
        if args.command == "generate":
            from seqdistill import generate

            cfg = configlib.load(generate.GenerateConfig, args.config, overrides)
            print("# resolved config\n" + configlib.dump(cfg), flush=True)
            stats = generate.run(cfg)
            print_generate_summary(cfg, stats)
        elif args.command == "score":
            from seqdistill import score

            cfg = configlib.load(score.ScoreConfig, args.config, overrides)
            print("# resolved config\n" + configlib.dump(cfg), flush=True)
            stats = score.run(cfg)
            print(f"scored {stats['examples']} traces, {stats['teacher_logprobs']['bytes_per_token']} bytes/token; "
                  f"dataset: {cfg.output_dir}/data/train.parquet")
        elif args.command == "eval":
            from seqdistill import evaluate

            cfg = configlib.load(evaluate.EvalConfig, args.config, overrides)
            print("# resolved config\n" + configlib.dump(cfg), flush=True)
            results = evaluate.run(cfg)
            print("\n" + evaluate.table(results))
            print(f"results: {cfg.output_dir}/results.md, per-sample records under {cfg.output_dir}/MODEL/BENCHMARK/")
        elif args.command == "run":
            from seqdistill import pipeline

            cfg = pipeline.load(args.pipeline, args.overrides)
            print("# resolved pipeline\n" + configlib.dump(cfg), flush=True)
            pipeline.run(cfg, only=args.only, start=args.start)
        elif args.command == "report":
            from seqdistill import report

            print(f"report: {report.write(args.run_dir)}")
        elif args.command == "sft":
            from seqdistill import sft

            cfg = configlib.load(sft.SFTStageConfig, args.config, overrides)
            print("# resolved config\n" + configlib.dump(cfg), flush=True)
            metrics = sft.run(cfg).metrics
            print(f"train loss {metrics['train_loss']:.4f} in {metrics['train_seconds']} s, "
                  f"{metrics['train_tokens_per_second']} tokens/s, {sft.memory_line(metrics)}; "
                  f"student: {cfg.output_dir}/model")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; finished chunks are saved, rerun the same command to resume", file=sys.stderr)
        sys.exit(130)


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
