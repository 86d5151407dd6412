"""`seqdistill sft` under `accelerate launch` with two processes on the CPU (gloo), standing in for GPUs.

Each run is compared with a one-process run of the same global batch (2 processes x 2 examples against
1 process x 4): the same examples make each step (accelerate hands out consecutive per-device batches of
one seeded shuffle) and the loss is averaged over the tokens of all processes, so the loss curves agree
up to float32 summation order (other matmul shapes, padding per process, 1 vs 2 threads): compared to
LOSS_RTOL. LoRA dropout is 0, since each process draws its own dropout masks.

Which process writes is recorded by a Python audit hook (a sitecustomize on PYTHONPATH, in every process):
each open-for-writing, rename, removal and mkdir under the output directory, with the process's RANK.
Weights written from C++ or Rust (torch.save, safetensors) escape the hook, but every save_pretrained writes its
config.json from Python, and the Trainer's per-process RNG state files are the only writes allowed to rank 1.
"""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from seqdistill import config as configlib
from seqdistill import sft, store
from seqdistill.engines import topk
from seqdistill.sft import SFTStageConfig

DDP = Path(__file__).resolve().parents[1] / "accelerate" / "ddp.yaml"
# seen here: at most 1.2e-7 apart (float32 rounding); another shuffle (seed 1) moves steps 3 and 4 by 7e-4 and 10%
LOSS_RTOL = 1e-4
# the trained weights of both runs: seen at most 3.1e-7 apart on an AVX-512 CPU and 1.18e-5 on an AVX2-only one
# (other float32 kernels, other summation order; 1 weight of 6.3M); a real divergence (another batch order) is ~1e-3
WEIGHTS_ATOL = 1e-4
AUDIT = '''
import os, sys
_root, _log = os.environ.get("AUDIT_ROOT"), os.environ.get("AUDIT_LOG")
if _root and _log:
    _file = open(f"{_log}.{os.getpid()}", "a", buffering=1)  # opened before the hook: its writes aren't audited
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _record(event, path):
        if isinstance(path, (str, bytes, os.PathLike)):
            path = os.path.abspath(os.fsdecode(path))
            if path.startswith(_root):
                _file.write(f"{os.environ.get('RANK', '-')}\\t{event}\\t{os.path.relpath(path, _root)}\\n")

    def _hook(event, args):
        if event == "open" and args[2] & _WRITE:
            _record("write", args[0])
        elif event == "os.rename":
            _record("rename", args[0]), _record("rename", args[1])
        elif event in ("os.remove", "os.rmdir", "shutil.rmtree", "os.mkdir"):
            _record(event, args[0])

    sys.addaudithook(_hook)
'''
OVERRIDES = ["max_steps=4", "learning_rate=1e-2", "logging_steps=1", "save_steps=2", "report_to=[none]",
             "max_length=256", "lora.dropout=0", "seed=0", "dtype=float32"]  # float32: auto is bf16 on some CPUs


def settings(student, dataset, out, batch, *extra) -> list[str]:
    return [f"student={student}", f"dataset={dataset}", f"output_dir={out}", f"per_device_train_batch_size={batch}",
            *OVERRIDES, *extra]


def launch(tmp_path, args: list[str], out: Path, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file accelerate/ddp.yaml --num_processes 2 -m seqdistill sft`, every process
    audited. Without a GPU the shipped DDP config starts two CPU processes over gloo (torchrun, as on GPUs);
    `accelerate launch --cpu --num_processes 2` would start one (accelerate's multi-CPU launch is mpirun's)."""
    audit = tmp_path / "audit"
    audit.mkdir(exist_ok=True)
    (audit / "sitecustomize.py").write_text(AUDIT)
    with socket.socket() as s:  # a free port: other tests may hold 29500
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": f"{audit}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "AUDIT_ROOT": str(out.resolve()), "AUDIT_LOG": str(audit / "log"), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP), "--num_processes", "2",
               "--mixed_precision", "no", "--main_process_port", str(port), "-m", "seqdistill", "sft", *flags,
               "--set", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def writes(tmp_path) -> list[tuple[str, str, str]]:
    """(rank, event, path under the output directory) of every process."""
    lines = [line for log in (tmp_path / "audit").glob("log.*") for line in log.read_text().splitlines()]
    return [tuple(line.split("\t")) for line in lines]


def saved_state(out: Path, args: list[str]) -> str:
    return sft.OUTPUT.state(out, configlib.load(SFTStageConfig, None, args))


def losses(log_history: list[dict]) -> list[float]:
    return [h["loss"] for h in log_history if "loss" in h]


def files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def check_one_writer(tmp_path, out: Path) -> None:
    events = writes(tmp_path)
    assert {rank for rank, _, _ in events} == {"0", "1"}, sorted(set(events))[:40]
    # the Trainer's own per-process file: each process saves its RNG state in every checkpoint (making the folder)
    others = [(event, path) for rank, event, path in events if rank != "0"
              and not re.fullmatch(r"checkpoints/checkpoint-\d+(/rng_state_1\.pth)?", path)]
    assert others == [], f"a process other than the main one wrote {others[:5]}"
    assert (out / "checkpoints" / "checkpoint-2" / "rng_state_1.pth").is_file()  # rank 1 ran and saved its state
    assert not [f for f in files(out) if ".tmp" in f], "a temporary file was left behind"


def check_launch(proc: subprocess.CompletedProcess, loads: int = 1) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("# resolved config") == 1 and proc.stdout.count("train loss ") == 1, proc.stdout[-2000:]
    assert proc.stderr.count("seqdistill.training.data: example lengths") == 1  # info logs from the main process only
    assert proc.stderr.count("Loading weights: 100%") == loads  # transformers' progress bars too


def test_lora_two_processes_one_writer_same_curve_and_merge(tiny_llama, traces, tmp_path):
    out = tmp_path / "two"
    # a different earlier run in the directory: refused by both processes alike, then replaced with --overwrite
    old = configlib.load(SFTStageConfig, None, settings(tiny_llama, traces, out, 2, "learning_rate=1e-3"))
    store.write_text(out / "model" / "old.txt", "old")
    store.write_text(out / "metrics.json", "{}")
    configlib.save(old, out / store.CONFIG_FILE)
    args = settings(tiny_llama, traces, out, 2)
    refused = launch(tmp_path, args, out)
    assert refused.returncode != 0 and "holds a different run (learning_rate" in refused.stderr, refused.stderr[-2000:]
    assert (out / "model" / "old.txt").is_file() and writes(tmp_path) == []

    proc = launch(tmp_path, args, out, ("--overwrite", "--merge"))
    check_launch(proc, loads=2)  # the main process loads the base again to merge
    check_one_writer(tmp_path, out)
    assert [path for _, event, path in writes(tmp_path) if event == "shutil.rmtree"] == ["model"]  # cleared once
    saved = [f for f in files(out) if not f.startswith("checkpoints/")]
    for name in ("seqdistill_config.yaml", "metrics.json", "model/adapter_model.safetensors", "model/adapter_config.json",
                 "model/README.md", "model/tokenizer.json", "merged/model.safetensors", "merged/config.json",
                 "merged/README.md", "merged/tokenizer.json"):
        assert name in saved
    assert "model/old.txt" not in saved
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert saved_state(out, [*args, "merge=true"]) == "same"  # the saved config is this run's
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["global_step"] == 4
    from huggingface_hub import ModelCard

    assert ModelCard.load(out / "model" / "README.md").data.library_name == "peft"
    assert ModelCard.load(out / "merged" / "README.md").data.library_name == "transformers"

    # the same global batch in one process
    one = sft.run(configlib.load(SFTStageConfig, None, settings(tiny_llama, traces, tmp_path / "one", 4, "merge=true")))
    assert len(losses(metrics["log_history"])) == 4
    np.testing.assert_allclose(losses(metrics["log_history"]), losses(one.metrics["log_history"]), rtol=LOSS_RTOL)

    # merged/ is exactly the saved adapter merged by hand, and within float tolerance of the one-process model
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    by_hand = PeftModel.from_pretrained(base, out / "model").merge_and_unload().state_dict()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32).state_dict()
    single = AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "merged", dtype=torch.float32).state_dict()
    assert merged.keys() == by_hand.keys() == single.keys()
    for key in merged:
        assert torch.equal(merged[key], by_hand[key]), key
        torch.testing.assert_close(merged[key], single[key], rtol=1e-3, atol=WEIGHTS_ATOL)
    untrained = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).state_dict()
    assert [k for k in merged if not torch.equal(merged[k], untrained[k])]  # the merge carries the trained adapter


def test_full_two_processes_same_curve_and_model(tiny_llama, traces, tmp_path):
    out = tmp_path / "two"
    proc = launch(tmp_path, settings(tiny_llama, traces, out, 2, "method=full"), out)
    check_launch(proc)
    check_one_writer(tmp_path, out)
    assert {"model/model.safetensors", "model/config.json", "model/README.md", "metrics.json"} <= set(files(out))
    one = sft.run(configlib.load(SFTStageConfig, None, settings(tiny_llama, traces, tmp_path / "one", 4, "method=full")))
    two = json.loads((out / "metrics.json").read_text())
    np.testing.assert_allclose(losses(two["log_history"]), losses(one.metrics["log_history"]), rtol=LOSS_RTOL)
    a = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32).state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "model", dtype=torch.float32).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=WEIGHTS_ATOL)


@pytest.fixture(scope="module")
def kd_traces(traces, tiny_llama, tmp_path_factory):
    """The traces with teacher top-k log-probs (k=4) that differ per row: the teacher's sampled ids are the
    trace's tokens, its other top-k ids and log-probs random. Misplaced rows would change the KD loss."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    rng = np.random.default_rng(0)
    rows = [json.loads(line) for line in traces.read_text().splitlines()]
    for row in rows:
        sampled = np.array(tokenizer(row["messages"][-1]["content"], add_special_tokens=False)["input_ids"])
        ids = rng.integers(0, len(tokenizer), (len(sampled), 4))
        ids[:, 0] = sampled
        logprobs = np.sort(-rng.exponential(2.0, (len(sampled), 4)), axis=1)[:, ::-1]
        row["teacher_topk"] = topk.encode(ids, logprobs, sampled, len(tokenizer))
        row["teacher"] = tiny_llama
    path = tmp_path_factory.mktemp("kd-traces") / "traces.parquet"
    store.write_parquet(rows, path)
    return path


def test_offline_kd_two_processes_same_curve(tiny_llama, kd_traces, tmp_path):
    """The teacher_topk column is split with the batch: each process lays its own rows' log-probs on its tokens."""
    out = tmp_path / "two"
    proc = launch(tmp_path, settings(tiny_llama, kd_traces, out, 2, "kd.mode=offline", "kd.alpha=0.2"), out)
    check_launch(proc)
    check_one_writer(tmp_path, out)
    one = sft.run(configlib.load(SFTStageConfig, None, settings(tiny_llama, kd_traces, tmp_path / "one", 4,
                                                                "kd.mode=offline", "kd.alpha=0.2")))
    two = json.loads((out / "metrics.json").read_text())
    np.testing.assert_allclose(losses(two["log_history"]), losses(one.metrics["log_history"]), rtol=LOSS_RTOL)
