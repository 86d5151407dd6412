"""Data parallelism on one node: `data_parallel_size` vLLM engines, each in its own process on its own GPUs
(or its share of the CPU cores), handed chunks statically; rows are still made and written by the caller."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass

from seqdistill.config import ConfigError
from seqdistill.engines.sampling import EngineConfig, Request
from seqdistill.engines.vllm_engine import VLLMEngine, load_vllm, release_vllm

log = logging.getLogger(__name__)

@dataclass
class RankDevices:
    where: str  # for the log: "CUDA_VISIBLE_DEVICES=2,3" or "CPU cores 0-7"
    env: dict  # set in the rank's process before vLLM is imported there
    cores: list[int] | None = None  # CPU: the rank's process (and its children) runs on these cores only


def check_devices(cfg: EngineConfig) -> None:
    """More data-parallel ranks than the node has devices: a ConfigError before anything loads."""
    if cfg.backend == "vllm" and cfg.data_parallel_size > 1:
        rank_devices(cfg)


def rank_devices(cfg: EngineConfig) -> list[RankDevices]:
    """Each rank's own devices: `tensor_parallel_size` GPUs of those visible here, or an equal share of
    the CPU cores (vLLM-CPU binds its OpenMP threads to VLLM_CPU_OMP_THREADS_BIND, one group per TP rank).
    GPUs are counted without initialising CUDA in this process."""
    try:
        from vllm.platforms import current_platform
    except ImportError as e:
        raise ConfigError("vLLM is not installed: `pip install -e .[cpu]` on CPU machines, "
                          "`pip install -e .[cuda]` on CUDA machines") from e
    n, tp = cfg.data_parallel_size, cfg.tensor_parallel_size
    if current_platform.is_cpu():
        cores = sorted(os.sched_getaffinity(0))
        if n * tp > len(cores):
            raise ConfigError(f"engine.data_parallel_size {n} x tensor_parallel_size {tp} needs {n * tp} CPU cores and "
                              f"this process may use {len(cores)}; lower engine.data_parallel_size")
        per = len(cores) // n
        ranks = []
        for r in range(n):
            mine = cores[r * per:(r + 1) * per]
            groups = [mine[i * len(mine) // tp:(i + 1) * len(mine) // tp] for i in range(tp)]
            bind = "|".join(",".join(map(str, g)) for g in groups)
            ranks.append(RankDevices(f"CPU cores {bind}", {"VLLM_CPU_OMP_THREADS_BIND": bind,
                                                           "OMP_NUM_THREADS": str(len(groups[0]))}, mine))
        return ranks
    if not current_platform.is_cuda_alike():
        raise ConfigError(f"engine.data_parallel_size > 1 pins ranks to CUDA/ROCm GPUs or CPU cores, not to "
                          f"{current_platform.device_name} devices; serve the model with `vllm serve MODEL "
                          "--data-parallel-size N` and set engine.backend: openai")
    import torch

    var = current_platform.device_control_env_var  # CUDA_VISIBLE_DEVICES
    visible = [d for d in os.environ.get(var, "").split(",") if d.strip()] or list(map(str, range(torch.cuda.device_count())))
    if n * tp > len(visible):
        raise ConfigError(f"engine.data_parallel_size {n} x tensor_parallel_size {tp} needs {n * tp} GPUs and "
                          f"{len(visible)} are visible here; lower engine.data_parallel_size")
    return [RankDevices(f"{var}={','.join(visible[r * tp:(r + 1) * tp])}", {var: ",".join(visible[r * tp:(r + 1) * tp])})
            for r in range(n)]


class DataParallel:
    """`data_parallel_size` vLLM engines for one model, each in its own process on its own devices.

    vLLM 0.32 refuses LLM(data_parallel_size=N) in one process; its offline data-parallel example runs one
    engine process per rank, and so does this. Chunks are handed out statically (rank r takes every
    N-th chunk still to do); each chunk is reseeded from its own key, so which rank draws it, and how
    many ranks there are, does not change what it draws. Rows are made and written here, in this process."""

    def __init__(self, model: str, cfg: EngineConfig, **vllm_kwargs):
        self.model, self.cfg, self.kwargs = model, cfg, vllm_kwargs
        self.devices = rank_devices(cfg)
        self.ranks: dict = {}  # rank -> (process, connection), started when the rank first has work

    def start(self, r: int) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: devices are chosen before vLLM is imported
        here, there = ctx.Pipe()
        proc = ctx.Process(target=serve_rank, name=f"seqdistill-rank-{r}",
                           args=(there, r, self.devices[r], self.model, self.cfg, self.kwargs,
                                 logging.getLogger("seqdistill").getEffectiveLevel()))
        proc.start()
        there.close()  # the rank's end lives in the rank only: its death reads as end-of-file here
        log.info("rank %d of %d: pid %d on %s", r, self.cfg.data_parallel_size, proc.pid, self.devices[r].where)
        self.ranks[r] = (proc, here)

    def sample_chunks(self, jobs: list[tuple], req: Request):
        """(k, outputs, seconds, usage) for each job (k, seed key, prompts) as its rank finishes it.

        A rank that dies loses only the chunk it was sampling: the others finish theirs, then one
        ConfigError names the rank, and a rerun samples only the chunks left."""
        from multiprocessing.connection import wait

        n = self.cfg.data_parallel_size
        share = {r: jobs[r::n] for r in range(n) if jobs[r::n]}
        for r in share:
            if r not in self.ranks:
                self.start(r)
        busy, lost = {}, []  # connection -> (rank, chunk); what died

        def hand_out(r: int) -> None:
            if not share[r]:
                return
            k, key, batch = share[r].pop(0)
            try:
                self.ranks[r][1].send(("chunk", key, batch, req))
                busy[self.ranks[r][1]] = (r, k)
            except OSError:  # died before it could take the chunk
                lost.append(self.died(r, k, 1 + len(share[r])))

        for r in share:
            hand_out(r)
        while busy:
            for conn in wait(list(busy)):
                r, k = busy.pop(conn)
                try:
                    kind, *reply = conn.recv()
                except (EOFError, OSError):
                    lost.append(self.died(r, k, 1 + len(share[r])))
                    continue
                if kind == "error":
                    raise reply[0]
                hand_out(r)  # before this chunk's rows are made, so the rank is not idle meanwhile
                yield (k, *reply)
        if lost:
            raise ConfigError(f"{'; '.join(lost)}; the chunks the ranks finished are saved: rerun the same command "
                              "to finish")

    def died(self, r: int, k: int, left: int) -> str:
        import signal

        proc, conn = self.ranks.pop(r)
        proc.join(timeout=30)
        conn.close()
        code = proc.exitcode
        how = f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exited with code {code}"
        return (f"data-parallel rank {r} (pid {proc.pid}) {how} while sampling chunk {k + 1}, leaving {left} of its "
                "chunks unsampled")

    def close(self, wait: bool = True) -> None:
        """Release every rank's engine; without `wait`, stop the ranks now (chunks in flight are lost)."""
        for proc, conn in self.ranks.values():
            if wait:
                with contextlib.suppress(OSError):
                    conn.send(("close",))
            else:
                proc.terminate()
        for proc, conn in self.ranks.values():
            proc.join(timeout=120 if wait else 30)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()
        self.ranks.clear()


def serve_rank(conn, rank: int, devices: RankDevices, model: str, cfg: EngineConfig, vllm_kwargs: dict,
               log_level: int) -> None:
    """A data-parallel rank's process: pinned to its devices before vLLM is imported, then one chunk per message."""
    os.environ.update(devices.env)
    if devices.cores:
        os.sched_setaffinity(0, devices.cores)
    logging.basicConfig(level=max(log_level, logging.INFO),
                        format=f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("seqdistill").setLevel(log_level)  # the parent's -v/-q (vLLM's come through the environment)
    try:
        eng = VLLMEngine(load_vllm(model, cfg, **vllm_kwargs), cfg, progress=rank == 0)
        while True:
            try:
                kind, *job = conn.recv()
            except EOFError:  # the parent is gone
                break
            if kind == "close":
                break
            key, batch, req = job
            eng.start_chunk(*key)
            start = time.perf_counter()
            outputs = eng.sample(batch, req)
            conn.send(("done", outputs, time.perf_counter() - start, eng.usage_of(outputs)))
        release_vllm(eng.llm)
    except KeyboardInterrupt:  # Ctrl-C reaches every rank; the parent reports it
        pass
    except Exception as e:
        log.exception("rank %d failed", rank)
        with contextlib.suppress(Exception):
            try:
                conn.send(("error", e))
            except Exception:  # an exception that doesn't pickle
                conn.send(("error", RuntimeError(f"data-parallel rank {rank}: {e!r}")))
