"""Every push to the Hugging Face Hub: a finished stage's outputs, read back from its output directory.

- generate (`push_to_hub: user/name`, a dataset repo): the dataset card (README.md), then the `train` and
  `dropped` splits as Parquet shards of at most `hub.max_shard_size` (datasets' `push_to_hub`, which keeps
  the card and fills in its `configs` and `dataset_info`).
- sft (a model repo): OUTPUT_DIR/model with its card (the LoRA adapter, or the full model); with a merged
  LoRA, OUTPUT_DIR/merged with its card goes to `user/name-merged` (a repo of its own, so that vLLM and
  transformers load it by name). After its eval stage, `seqdistill run` pushes these cards again, now with
  the student's eval results as `model-index` metadata (card.add_eval_results).
- eval (a dataset repo, like lighteval's details): results.json, results.md and an eval card, then the
  per-sample records of each model x benchmark as a config of their own (`details/MODEL__BENCHMARK/`).

The token is huggingface_hub's own (the HF_TOKEN variable, or `hf auth login`): seqdistill never reads it
into a setting, a log, a card or a result. A push that went through is recorded in OUTPUT_DIR/pushed.json,
so rerunning the same command after a failed push pushes (and does nothing else), and after a good one
does nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from seqdistill import store
from seqdistill.config import ConfigError, first_line
from seqdistill import card

log = logging.getLogger(__name__)
MARKER = "pushed.json"
STAGE_WORDS = {"generate": "traces dataset", "sft": "student", "eval": "eval results and per-sample details"}


class HubError(ConfigError):
    """A push that failed at the hub or on the network, after the stage's local outputs were complete."""


@dataclass
class HubConfig:
    private: bool = False  # create the repo private (TRL's hub_private_repo); false: the hub's default; an existing repo keeps its own
    revision: str | None = None  # branch to push to, made from main if missing (TRL's hub_revision); None: main
    commit_message: str | None = None  # None: "seqdistill STAGE: what was pushed"
    max_shard_size: str = "500MB"  # generate, eval: largest Parquet shard of a pushed dataset (datasets' max_shard_size)


def check(repo: str | None, merged: bool = False) -> list[str]:
    """A `push_to_hub` setting: a `user/name` repo id, and a token to push with (checked before any work)."""
    if not repo:
        return []
    from huggingface_hub import constants, get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    errors = []
    for name in [repo] + ([merged_repo(repo)] if merged else []):
        try:
            validate_repo_id(name)
            ok = name.count("/") == 1
        except HFValidationError:
            ok = False
        if not ok:
            errors.append(f"push_to_hub must name a hub repo as user/name (e.g. me/r1-traces; at most 96 characters "
                          f"of letters, digits, - _ .), got {name!r}")
            break
    if constants.HF_HUB_OFFLINE:
        errors.append("push_to_hub needs the hub but HF_HUB_OFFLINE is set; unset it, or remove push_to_hub")
    elif get_token() is None:
        errors.append("push_to_hub needs a Hugging Face token with write access: set HF_TOKEN or run `hf auth login` "
                      "(or remove push_to_hub)")
    return errors


def merged_repo(repo: str) -> str:
    return f"{repo}-merged"


def push(stage: str, cfg) -> None:
    """Push a finished stage's outputs to `cfg.push_to_hub` (if set) unless pushed.json says they are there."""
    repo, out = cfg.push_to_hub, Path(cfg.output_dir)
    if not repo:
        return
    target = {"repo": repo, "revision": cfg.hub.revision}
    marker = out / MARKER
    if marker.is_file() and {k: json.loads(marker.read_text()).get(k) for k in target} == target:
        log.info("%s was pushed to %s before (%s); nothing to push", out, repo, marker)
        return
    message = cfg.hub.commit_message or f"seqdistill {stage}: {STAGE_WORDS[stage]}"
    log.info("pushing %s to the hub: %s", out, repo)
    with reported(repo, out):
        pusher = {"generate": push_generate, "sft": push_sft, "eval": push_eval}[stage]
        commits = pusher(cfg, out, message)
    cards = {"cards": card_hashes(cfg, out)} if stage == "sft" else {}  # what push_cards compares with
    store.write_text(marker, json.dumps({**target, "commits": commits, **cards}, indent=2))
    log.info("pushed to %s", ", ".join(commits))


@contextmanager
def reported(repo: str, out: Path):
    """A push that fails at the hub or on the network: one HubError saying what is safe and how to retry."""
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except (HfHubHTTPError, httpx.HTTPError, ConnectionError, TimeoutError) as e:
        raise HubError(f"push to {repo} failed ({first_line(e)}); the local output in {out} is complete: rerun the same "
                       "command to push it again (the stage is done, only the push runs)") from e


def push_cards(cfg, by: str = "run") -> None:
    """The sft model cards alone, again (`seqdistill run` or `eval` after adding eval results to them), to the repos
    the sft push filled: nothing before that push went through, and nothing when pushed.json records these very cards."""
    out, marker = Path(cfg.output_dir), Path(cfg.output_dir) / MARKER
    if not cfg.push_to_hub or not marker.is_file():
        return
    pushed, cards = json.loads(marker.read_text()), card_hashes(cfg, out)
    if pushed.get("cards") == cards:
        return
    from huggingface_hub import HfApi

    api = HfApi()
    with reported(cfg.push_to_hub, out):
        for repo, folder in sft_repos(cfg, out):
            info = api.upload_file(path_or_fileobj=str(folder / "README.md"), path_in_repo="README.md", repo_id=repo,
                                   commit_message=f"seqdistill {by}: eval results on the model card", revision=cfg.hub.revision)
            pushed.setdefault("commits", []).append(info.commit_url)
    store.write_text(marker, json.dumps({**pushed, "cards": cards}, indent=2))
    log.info("model cards with eval results pushed to %s", ", ".join(cards))


def push_saved_cards(sft_dir: Path, by: str) -> None:
    """push_cards for an sft run known only by its output directory (its saved settings say where it pushed)."""
    saved = store.saved_config(sft_dir).get("config") or {}
    if saved.get("push_to_hub"):
        push_cards(SimpleNamespace(output_dir=str(sft_dir), push_to_hub=saved["push_to_hub"],
                                   method=saved.get("method", "lora"), hub=HubConfig(**(saved.get("hub") or {}))), by)


def push_generate(cfg, out: Path, message: str) -> list[str]:
    splits = {s: store.read_parquet([out / "data" / f"{s}.parquet"]) for s in ("train", "dropped")
              if (out / "data" / f"{s}.parquet").is_file()}
    splits = {s: d for s, d in splits.items() if len(d)}  # an empty split can't be loaded: left out, as in the card
    card_text = (out / "README.md").read_text()
    return push_dataset(cfg.push_to_hub, cfg.hub, message, card_text, {}, [("default", "data", splits)])


def push_eval(cfg, out: Path, message: str) -> list[str]:
    results = json.loads((out / store.RESULTS_FILE).read_text())
    tables, details = [], {}
    for model, per_bench in results.items():
        for bench in per_bench:
            name = re.sub(r"[^\w.-]+", "_", f"{model}__{bench}")
            tables.append((name, f"details/{name}", {"samples": store.read_parquet([out / model / bench / "samples.parquet"])}))
            details[name] = (model, bench)
    card_text = card.eval_card(cfg, (out / store.RESULTS_TABLE).read_text(), details)
    files = {name: out / name for name in (store.RESULTS_FILE, store.RESULTS_TABLE)}
    return push_dataset(cfg.push_to_hub, cfg.hub, message, card_text, files, tables)


def push_sft(cfg, out: Path, message: str) -> list[str]:
    from huggingface_hub import HfApi

    api = HfApi()
    commits = []
    for repo, folder in sft_repos(cfg, out):
        open_repo(api, repo, "model", cfg.hub)
        info = api.upload_folder(repo_id=repo, folder_path=folder, commit_message=message, revision=cfg.hub.revision)
        commits.append(info.commit_url)
    return commits


def card_hashes(cfg, out: Path) -> dict[str, str]:
    """The sha256 of each sft repo's card as it is on disk."""
    return {repo: hashlib.sha256((folder / "README.md").read_bytes()).hexdigest() for repo, folder in sft_repos(cfg, out)}


def sft_repos(cfg, out: Path) -> list[tuple[str, Path]]:
    """(repo, folder) pairs of an sft push: OUTPUT_DIR/model, and a merged LoRA to its own repo."""
    folders = [(cfg.push_to_hub, out / "model")]
    if cfg.method != "full" and (out / "merged").is_dir():  # a full model's merged/ is the model itself
        folders.append((merged_repo(cfg.push_to_hub), out / "merged"))
    return folders


def open_repo(api, repo: str, repo_type: str, hub: HubConfig) -> None:
    api.create_repo(repo, repo_type=repo_type, private=hub.private or None, exist_ok=True)
    if hub.revision:
        api.create_branch(repo, branch=hub.revision, repo_type=repo_type, exist_ok=True)


def push_dataset(repo: str, hub: HubConfig, message: str, card_text: str, files: dict[str, Path],
                 tables: list[tuple[str, str, dict]]) -> list[str]:
    """The card and `files` in one commit, then each (config, data_dir, splits) with datasets' push_to_hub,
    which reads the card back and adds that config's data files and dataset_info to its metadata."""
    import datasets
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    open_repo(api, repo, "dataset", hub)
    ops = [CommitOperationAdd("README.md", card_text.encode()),
           *(CommitOperationAdd(path, str(local)) for path, local in files.items())]
    commits = [api.create_commit(repo, ops, commit_message=message, repo_type="dataset", revision=hub.revision).commit_url]
    for name, data_dir, splits in tables:
        info = datasets.DatasetDict(splits).push_to_hub(
            repo, config_name=name, data_dir=data_dir, private=hub.private or None, revision=hub.revision,
            commit_message=f"{message} ({name})", max_shard_size=hub.max_shard_size)
        commits.append(info.commit_url)
    return commits
