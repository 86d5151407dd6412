"""The `seqdistill` command: one subcommand per stage.

    seqdistill generate --config pipelines/generate-quickstart.yaml --set sampling.n=4
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

NOT_YET = {"sft": "issue: seqdistill sft", "eval": "issue: seqdistill eval", "run": "issue: seqdistill run"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seqdistill", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    g = sub.add_parser("generate", help="sample teacher traces with vLLM into a verified, filtered dataset",
                       description="Sample teacher traces with vLLM, verify and filter them, write a dataset.")
    add_config_args(g)
    g.add_argument("--overwrite", action="store_true", help="replace a different run in output_dir")
    sub.add_parser("sft", help="fine-tune a student on the traces with TRL (LoRA or full) [not implemented yet]")
    sub.add_parser("eval", help="score teacher and students on benchmarks with vLLM [not implemented yet]")
    r = sub.add_parser("run", help="run a whole pipeline from pipelines/NAME.yaml [not implemented yet]")
    r.add_argument("pipeline", nargs="?")
    return p


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="YAML file of settings (defaults: the embedded model and problems)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set sampling.n=4 problems.num_problems=50")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if args.command in NOT_YET:
        print(f"seqdistill {args.command}: not implemented yet ({NOT_YET[args.command]})", file=sys.stderr)
        sys.exit(2)
    try:
        if args.command == "generate":
            from seqdistill import generate

            overrides = args.overrides + (["overwrite=true"] if args.overwrite else [])
            cfg = configlib.load(generate.GenerateConfig, args.config, overrides)
            print("# resolved config\n" + configlib.dump(cfg), flush=True)
            stats = generate.run(cfg)
            print_generate_summary(cfg, stats)
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
