"""Every engine call in one place: the teacher or model behind in-process vLLM or an OpenAI-compatible server.

    with engine.open_engine(model_path, cfg.engine) as eng:
        parts = engine.sample_in_chunks(eng, prompts, out / "chunks", sampling=cfg.sampling, ...)

A stage builds its prompts, calls `sample_in_chunks`, and turns each output into rows. Work is
sampled in chunks; each chunk is written whole (its rows, then a sidecar that marks it done), so
a rerun skips finished chunks and draws what an uninterrupted run would have drawn: the vLLM
backend reseeds the engine per chunk, the server backend sends a seed per request. The server
backend also journals every answer as it arrives (`chunk-K.journal.jsonl`), so a run killed at any
moment sends no answered request again. With `data_parallel_size` N, N engine processes on their own
devices share the chunks out (`DataParallel`); rows are still made and written here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

from seqdistill.config import ConfigError, first_line

log = logging.getLogger(__name__)
BACKENDS = ("vllm", "openai")
CPU_KV_CACHE_BYTES = 2 << 30  # vLLM-CPU's fraction of RAM is unreliable here; an explicit KV size works


@dataclass
class EngineConfig:
    """Where samples come from: in-process vLLM (`backend: vllm`) or an OpenAI-compatible server (`openai`)."""

    backend: str = "vllm"  # vllm: vllm.LLM in this process | openai: any OpenAI-compatible server or API
    seed: int = 0  # sampling seed (vllm: the engine, reseeded per chunk; openai: a seed per request)
    # ---- backend vllm ----
    dtype: str = "auto"  # auto: the checkpoint's on GPU; on CPU bfloat16 only with native bf16 (AVX512_BF16/AMX), else float32
    max_model_len: int | None = None  # None: the model's own context length
    tensor_parallel_size: int = 1
    # engine processes on this node, each on its own tensor_parallel_size GPUs (on CPU, its share of the
    # cores); they share the chunks out and draw what one engine on the same devices would
    data_parallel_size: int = 1
    gpu_memory_utilization: float | None = None  # None: vLLM's default on GPU
    kv_cache_memory_bytes: int | None = None  # None: 2 GiB on CPU, vLLM's own sizing on GPU
    enable_prefix_caching: bool = True
    enforce_eager: bool = False
    # Run vLLM's engine core in this process. None: yes on CPU, where it measured 1.8x faster on
    # 2 cores (the engine core no longer competes with the worker) and makes sampling reproducible
    # chunk by chunk; vLLM's default (a separate process) on GPU.
    in_process: bool | None = None
    extra: dict = field(default_factory=dict)  # any other vllm.LLM keyword
    # ---- backend openai ----
    base_url: list[str] = field(default_factory=list)  # http://HOST:PORT/v1, or a list of replicas to spread requests over
    served_model: str | None = None  # the model name the server knows; None: the stage's model
    api_key_env: str | None = None  # name of the environment variable holding the API key (the key is never written)
    api: str = "chat"  # chat: the server applies the chat template | completions: token ids rendered here
    max_concurrency: int = 16  # requests in flight at once, over all replicas
    requests_per_minute: float | None = None  # client-side limits; None: none
    tokens_per_minute: float | None = None
    timeout: float = 600.0  # seconds for one request
    max_retries: int = 6  # per request: 429, 5xx, timeouts, dropped connections, malformed answers
    retry_backoff: float = 1.0  # first retry delay in seconds, doubled each retry, with jitter (Retry-After wins)
    extra_body: dict = field(default_factory=dict)  # server-specific request fields, e.g. vLLM's top_k, min_p
    price_input: float | None = None  # price per million prompt tokens, for the cost line
    price_output: float | None = None  # price per million completion tokens

    def validate(self) -> list[str]:
        errors = []
        if self.backend not in BACKENDS:
            errors.append(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.tensor_parallel_size < 1 or self.data_parallel_size < 1:
            errors.append("tensor_parallel_size and data_parallel_size must be at least 1")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            errors.append(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_model_len is not None and self.max_model_len < 16:
            errors.append(f"max_model_len must be at least 16, got {self.max_model_len}")
        if self.dtype not in VLLM_DTYPES:
            errors.append(f"dtype must be one of {', '.join(VLLM_DTYPES)} (vLLM's names), got {self.dtype!r}")
        if self.kv_cache_memory_bytes is not None and self.kv_cache_memory_bytes <= 0:
            errors.append(f"kv_cache_memory_bytes must be > 0 (or null for the default), got {self.kv_cache_memory_bytes}")
        if self.backend == "vllm":
            errors += unknown_extra(self.extra)
        if "data_parallel_size" in self.extra:  # vLLM 0.32 refuses it in one process; seqdistill starts one per rank
            errors.append("extra.data_parallel_size is an engine setting of its own: set engine.data_parallel_size "
                          "instead (one engine process per rank)")
        if self.backend != "openai":
            return errors
        vllm_only = [f.name for f in fields(self) if f.name in VLLM_ONLY and getattr(self, f.name) != f.default
                     and not (f.name == "extra" and not self.extra)]
        if vllm_only:
            errors.append(f"{', '.join(vllm_only)} configure the in-process vllm backend and do nothing for backend "
                          "openai; set them on the server (vllm serve flags) and remove them here")
        if not self.base_url:
            errors.append("backend openai needs base_url (e.g. http://127.0.0.1:8000/v1, or a list of replicas)")
        errors += [f"base_url {u!r} must start with http:// or https://" for u in self.base_url
                   if not str(u).startswith(("http://", "https://"))]
        if self.api not in ("chat", "completions"):
            errors.append(f"api must be chat or completions, got {self.api!r}")
        if self.max_concurrency < 1 or self.max_retries < 0 or self.timeout <= 0 or self.retry_backoff < 0:
            errors.append("need max_concurrency >= 1, max_retries >= 0, timeout > 0 and retry_backoff >= 0")
        for name in ("requests_per_minute", "tokens_per_minute"):
            if (getattr(self, name) or 1) <= 0:
                errors.append(f"{name} must be > 0 (or null for no limit)")
        if self.api_key_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            errors.append("api_key_env must be the NAME of an environment variable holding the key (e.g. "
                          "OPENAI_API_KEY), not the key itself")
        elif self.api_key_env and self.api_key_env not in os.environ:
            errors.append(f"api_key_env names {self.api_key_env}, which is not set: export {self.api_key_env}=... "
                          "(the key is read from there and never written anywhere)")
        return errors


VLLM_DTYPES = ("auto", "bfloat16", "float16", "float32", "half", "float")  # vllm.config.model.ModelDType


def unknown_extra(extra: dict) -> list[str]:
    """engine.extra keys vllm.LLM does not take: its EngineArgs fields (vLLM is imported only when extra is set)."""
    if not extra:
        return []
    import dataclasses
    import difflib

    try:
        from vllm.engine.arg_utils import EngineArgs
    except ImportError:  # load_vllm says how to install it
        return []
    known = [f.name for f in dataclasses.fields(EngineArgs)] + ["chat_template"]  # LLM's own keyword
    errors = []
    for key in extra:
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            errors.append(f"extra.{key} is not a vLLM engine argument" + (f" (did you mean {near[0]}?)" if near else
                          " (vllm.engine.arg_utils.EngineArgs lists them)"))
    return errors


VLLM_ONLY = ("dtype", "max_model_len", "tensor_parallel_size", "data_parallel_size", "gpu_memory_utilization",
             "kv_cache_memory_bytes", "enforce_eager", "in_process", "extra")
# settings that change how fast or where samples come, not which: a resumed run may change them
OPERATIONAL = tuple(f"engine.{k}" for k in ("base_url", "api_key_env", "max_concurrency", "requests_per_minute",
                                             "tokens_per_minute", "timeout", "max_retries", "retry_backoff",
                                             "price_input", "price_output", "in_process", "gpu_memory_utilization",
                                             "kv_cache_memory_bytes", "enable_prefix_caching", "data_parallel_size"))


@dataclass
class SamplingConfig:
    """Sampling settings; defaults are DeepSeek-R1's recommended sampling."""

    n: int = 8  # samples per problem
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0  # 0: off (vLLM only; for a vLLM server put it in engine.extra_body)
    min_p: float = 0.0  # vLLM only, as top_k
    max_tokens: int = 4096
    stop: list[str] = field(default_factory=list)
    repetition_penalty: float = 1.0  # vLLM only, as top_k

    def validate(self) -> list[str]:
        errors = []
        # vLLM's own rules (vllm.sampling_params.SamplingParams._verify_args), said before any engine starts
        max_n = int(os.environ.get("VLLM_MAX_N_SEQUENCES", "16384"))
        if not 1 <= self.n <= max_n:
            errors.append(f"n must be at least 1, got {self.n}" if self.n < 1 else
                          f"n must be at most {max_n} (vLLM's VLLM_MAX_N_SEQUENCES), got {self.n}")
        if self.max_tokens < 1:
            errors.append(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not (math.isfinite(self.temperature) and 0 <= self.temperature <= 2):
            errors.append(f"temperature must be a finite number in [0, 2], got {self.temperature}")
        if self.temperature == 0 and self.n > 1:
            errors.append(f"temperature 0 is greedy: every sample would be the same, and vLLM refuses n > 1; set n: 1 "
                          f"or a temperature above 0 (got n {self.n})")
        if not 0 < self.top_p <= 1:
            errors.append(f"top_p must be in (0, 1], got {self.top_p}")
        if not (self.top_k == -1 or self.top_k >= 0):
            errors.append(f"top_k must be 0 or -1 (off) or >= 1, got {self.top_k}")
        if not 0 <= self.min_p <= 1:
            errors.append(f"min_p must be in [0, 1], got {self.min_p}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            errors.append(f"repetition_penalty must be a finite number > 0, got {self.repetition_penalty}")
        if any(not s for s in self.stop):
            errors.append("stop cannot hold an empty string (vLLM refuses it); remove it")
        return errors


def check_backend(engine: EngineConfig, sampling: SamplingConfig | None = None, prefill: str = "") -> list[str]:
    """What the chosen backend cannot honour, said before any request (a stage adds these to its validate())."""
    if engine.backend != "openai":
        return []
    errors = []
    if sampling is not None:
        for name, off in (("top_k", (0, -1)), ("min_p", (0.0,)), ("repetition_penalty", (1.0,))):
            if getattr(sampling, name) not in off:
                errors.append(f"sampling.{name} is not part of the OpenAI API; for a vLLM server put it in "
                              f"engine.extra_body ({{{name}: {getattr(sampling, name)}}}) and leave sampling.{name} unset")
    if prefill and engine.api == "chat":
        errors.append("prompt.prefill can't be sent through the chat API; use engine.api: completions "
                      "(the prompt is rendered here with the model's chat template) or drop the prefill")
    return errors


# ---------------------------------------------------------------- what goes in and comes out


@dataclass
class Prompt:
    key: str  # stable identity (the problem's index): seeds and the journal key derive from it
    token_ids: list[int] | None = None  # the whole prompt as the model reads it (vllm, api: completions)
    messages: list[dict] | None = None  # the conversation (api: chat)
    score_from: int = 0  # prompt log-probs from this position on (score)


@dataclass
class Completion:
    text: str  # reasoning of a reasoning API folded in as a <think> block
    finish_reason: str  # stop | length | ...
    tokens: int  # completion tokens
    topk: tuple | None = None  # (ids [T,k], log-probs [T,k], sampled ids [T]) when asked for


@dataclass
class Output:
    completions: list[Completion]
    prompt_tokens: int
    prompt_topk: tuple | None = None  # score: (ids, log-probs, token ids) per prompt position from score_from
    error: str | None = None  # a request for this prompt failed after all retries (the first error) ...
    failed: int = 0  # ... and how many of its requests did


@dataclass
class Request:
    """What to ask for every prompt of a call."""

    sampling: SamplingConfig
    logprobs_k: int = 0  # top-k log-probs per generated token (0: none)
    prompt_logprobs_k: int = 0  # top-k log-probs per prompt token (score; max_tokens 1)
    think_tag: str = "think"
    lora: tuple | None = None  # (name, id, path) of a LoRA adapter (vllm backend)


def preflight(model: str, cfg: EngineConfig, prompts: dict[str, list[Prompt]], max_tokens: int) -> None:
    """Before any engine starts or request is sent: every prompt plus max_tokens fits the context.

    vllm: `model` is the resolved path and its config gives the context. openai: the server is asked
    (reachable, key accepted, model served, its context where it says)."""
    if cfg.backend == "openai":
        from seqdistill.api import OpenAIEngine

        OpenAIEngine(cfg.served_model or model, cfg).check(prompts, max_tokens)
        return
    from seqdistill.models import context_length

    context = cfg.max_model_len or context_length(model)
    for name, group in prompts.items():
        longest = max(len(p.token_ids) for p in group)
        if context is not None and longest + max_tokens > context:
            raise ConfigError(f"{name}: longest prompt ({longest} tokens) + sampling.max_tokens ({max_tokens}) exceeds "
                              f"the context length {context}; lower sampling.max_tokens or raise engine.max_model_len")


# ---------------------------------------------------------------- opening an engine


@contextlib.contextmanager
def open_engine(model: str, cfg: EngineConfig, llm=None, **vllm_kwargs):
    """An engine for `model` (a resolved path for vllm, the served name for openai), released on exit.

    `llm` wraps a running `vllm.LLM` instead of starting one (tests share one engine); it is not released.
    `data_parallel_size` > 1 gives `DataParallel`: one engine process per rank (started when it first has work)."""
    if cfg.backend == "openai":
        from seqdistill.api import OpenAIEngine

        yield OpenAIEngine(cfg.served_model or model, cfg)  # holds no connection between calls: nothing to release
        return
    if cfg.data_parallel_size > 1:
        ranks = DataParallel(model, cfg, **vllm_kwargs)
        try:
            yield ranks
        except BaseException:
            ranks.close(wait=False)  # a failed or interrupted run: don't wait for chunks in flight
            raise
        ranks.close()
        return
    own = llm is None
    eng = VLLMEngine(load_vllm(model, cfg, **vllm_kwargs) if own else llm, cfg)
    try:
        yield eng
    finally:
        if own:
            release_vllm(eng.llm)  # before a later stage starts its own engine
        del eng


@contextlib.contextmanager
def lazy(factory):
    """`get()` opens the engine the first time work needs one (a finished run starts none); closed on exit."""
    with contextlib.ExitStack() as stack:
        held = []

        def get():
            if not held:
                held.append(stack.enter_context(factory()))
            return held[0]

        yield get


def make_prompts(model_path: str, cfg: EngineConfig, prompt_cfg, users: list[str], keys: list) -> list[Prompt]:
    """The prompts as the backend takes them: token ids rendered here with the model's chat template
    (vllm, api: completions) or the conversation for the server to render (api: chat)."""
    from seqdistill import models, prompts

    if cfg.backend == "openai" and cfg.api == "chat":
        return [Prompt(str(k), messages=prompts.messages(u, prompt_cfg)) for k, u in zip(keys, users)]
    tokenizer = models.load_tokenizer(model_path)
    return [Prompt(str(k), token_ids=prompts.encode(tokenizer, u, prompt_cfg)) for k, u in zip(keys, users)]


def load_vllm(path: str, cfg: EngineConfig, **kwargs):
    """One `vllm.LLM` for the whole run, built from the user's engine settings."""
    try:
        from vllm import LLM
        from vllm.platforms import current_platform
    except ImportError:
        raise ConfigError("vLLM is not installed: `pip install -e .[cpu]` on CPU machines, "
                          "`pip install -e .[cuda]` on CUDA machines") from None
    from seqdistill import precision

    cpu = current_platform.is_cpu()
    args = dict(
        model=path, dtype=precision.cpu_dtype(cfg.dtype) if cpu else cfg.dtype, max_model_len=cfg.max_model_len,
        tensor_parallel_size=cfg.tensor_parallel_size,  # data_parallel_size: one such engine per rank process
        enable_prefix_caching=cfg.enable_prefix_caching, enforce_eager=cfg.enforce_eager, seed=cfg.seed,
        worker_extension_cls="seqdistill.engine.SeedExtension",
    )
    if cfg.gpu_memory_utilization is not None:
        args["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    if cfg.kv_cache_memory_bytes is not None:
        args["kv_cache_memory_bytes"] = cfg.kv_cache_memory_bytes
    elif cfg.gpu_memory_utilization is None and cpu:
        args["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    in_process = cfg.in_process if cfg.in_process is not None else cpu
    args.update(kwargs)
    args.update(cfg.extra)
    log.info("starting vLLM (%s): %s", "in-process" if in_process else "engine process",
             {k: v for k, v in args.items() if v is not None})
    key, previous = "VLLM_ENABLE_V1_MULTIPROCESSING", os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ[key] = "0" if in_process else "1"  # read once, when the engine is built
    try:
        return LLM(**{k: v for k, v in args.items() if v is not None})
    finally:
        os.environ.pop(key) if previous is None else os.environ.__setitem__(key, previous)


def release_vllm(llm) -> None:
    """Shut an engine down before starting another: an in-process engine's shutdown tears down
    vLLM's process-wide parallel state, so two of them must never overlap."""
    import gc

    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


def chunk_seed(*key) -> int:
    return int(hashlib.sha1("-".join(map(str, key)).encode()).hexdigest()[:8], 16)


class SeedExtension:
    """Mixed into vLLM workers so a run can reseed sampling at each chunk."""

    def reseed(self, seed: int) -> int:
        from vllm.utils.torch_utils import set_random_seed

        set_random_seed(seed)
        return seed


class VLLMEngine:
    """In-process `vllm.LLM`: one batched call per chunk."""

    def __init__(self, llm, cfg: EngineConfig, progress: bool = True):
        self.llm, self.cfg, self.progress = llm, cfg, progress

    def start_chunk(self, *key) -> None:
        """Empty the prefix cache and reseed from `key`: the same chunk then draws the same samples
        whether a run went straight through or resumed (exactly so with vLLM in-process)."""
        self.llm.reset_prefix_cache()
        self.llm.collective_rpc("reseed", args=(chunk_seed(*key),))

    def sample(self, prompts: list[Prompt], req: Request, journal: Path | None = None) -> list[Output]:
        from vllm import SamplingParams

        from seqdistill import kd

        s = req.sampling
        params = SamplingParams(n=s.n, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, min_p=s.min_p,
                                max_tokens=s.max_tokens, stop=s.stop or None, repetition_penalty=s.repetition_penalty,
                                logprobs=req.logprobs_k or None, prompt_logprobs=req.prompt_logprobs_k or None,
                                flat_logprobs=bool(req.logprobs_k or req.prompt_logprobs_k))
        lora = None
        if req.lora:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest(*req.lora)
        results = self.llm.generate([{"prompt_token_ids": p.token_ids} for p in prompts], params,
                                    lora_request=lora, use_tqdm=self.progress)
        outputs = []
        for p, r in zip(prompts, results):
            completions = [Completion(c.text, str(c.finish_reason), len(c.token_ids),
                                      kd.from_vllm(c.logprobs, c.token_ids, req.logprobs_k) if req.logprobs_k else None)
                           for c in r.outputs]
            prompt_topk = (kd.from_vllm(r.prompt_logprobs, p.token_ids, req.prompt_logprobs_k, first=p.score_from)
                           if req.prompt_logprobs_k else None)
            outputs.append(Output(completions, len(p.token_ids), prompt_topk))
        return outputs

    def usage_of(self, outputs: list[Output]) -> dict:
        return {}  # no requests: nothing to count beyond the tokens


# ---------------------------------------------------------------- data parallel: one engine process per rank


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
    except ImportError:
        raise ConfigError("vLLM is not installed: `pip install -e .[cpu]` on CPU machines, "
                          "`pip install -e .[cuda]` on CUDA machines") from None
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


# ---------------------------------------------------------------- the one sampling loop


def sample_in_chunks(get_engine, prompts: list[Prompt], where: Path, req: Request, *, seed_key: tuple, chunk_size: int,
                     to_rows: Callable[[int, Output], list[dict]], features=None, desc: str = "") -> list[Path]:
    """Sample every prompt in chunks of `chunk_size`; each chunk's rows go to where/chunk-K.parquet.

    `get_engine()` gives the engine (see `lazy`); `to_rows(i, output)` turns prompt i's output into rows. A chunk is done when its sidecar
    (chunk-K.json: rows, seconds, tokens, usage, failures) matches its Parquet file; a chunk with
    failed requests is written with what succeeded and redone (only the failures) on the next run.
    Returns the chunk files, in order."""
    from seqdistill import store

    chunks = [range(i, min(i + chunk_size, len(prompts))) for i in range(0, len(prompts), chunk_size)]
    parts = [where / f"chunk-{k:05d}.parquet" for k in range(len(chunks))]
    store.remove_stale_temps(where)
    digests = [prompts_digest([prompts[i] for i in idx]) for idx in chunks]
    todo = [k for k in range(len(chunks)) if not chunk_done(parts[k], digests[k])]
    log.info("%s%d prompts in %d chunks, %d to sample", f"{desc}: " if desc else "", len(prompts), len(chunks), len(todo))
    failed = 0
    # a chunk's seed key is (seed_key, k): a resumed chunk, or one drawn by another rank, draws the same
    jobs = [(k, (*seed_key, k), [prompts[i] for i in chunks[k]]) for k in todo]
    for k, outputs, seconds, usage in chunk_outputs(get_engine, jobs, req, parts):
        idx = chunks[k]
        journal = parts[k].with_suffix(".journal.jsonl")
        rows = [row for i, out in zip(idx, outputs) if out.error is None for row in to_rows(i, out)]
        errors = {prompts[i].key: {"requests": out.failed or 1, "error": out.error}
                  for i, out in zip(idx, outputs) if out.error is not None}
        sidecar = {"rows": len(rows), "prompts": digests[k], "seconds": seconds,
                   "tokens": sum(c.tokens for o in outputs for c in o.completions),
                   "usage": usage, "failed": errors}
        store.write_parquet(rows, parts[k], features=features)
        store.write_text(parts[k].with_suffix(".json"), json.dumps(sidecar))  # written last: marks the chunk
        if errors:
            failed += sum(e["requests"] for e in errors.values())
            log.warning("chunk %d/%d: requests for %d prompts failed after retries (first: %s); rerun to retry only those",
                        k + 1, len(chunks), len(errors), next(iter(errors.values()))["error"])
        else:
            journal.unlink(missing_ok=True)
        log.info("chunk %d/%d done: %d rows, %.0f generated tok/s", k + 1, len(chunks), len(rows),
                 sidecar["tokens"] / max(seconds, 1e-9))
    if failed:
        log.warning("%d requests failed; their problems are missing from this result until a rerun succeeds", failed)
    return parts


def chunk_outputs(get_engine, jobs: list[tuple], req: Request, parts: list[Path]):
    """(k, outputs, seconds, usage) per job (k, seed key, prompts): one engine chunk after chunk, or
    data-parallel ranks side by side (in the order they finish)."""
    if not jobs:
        return
    eng = get_engine()
    if isinstance(eng, DataParallel):
        yield from eng.sample_chunks(jobs, req)
        return
    for k, key, batch in jobs:
        eng.start_chunk(*key)
        start = time.perf_counter()
        outputs = eng.sample(batch, req, journal=parts[k].with_suffix(".journal.jsonl"))
        yield k, outputs, time.perf_counter() - start, eng.usage_of(outputs)


def prompts_digest(prompts: list[Prompt]) -> str:
    """What a chunk was asked: an edited problem file or template, or another dataset, is not reused."""
    what = [(p.key, p.token_ids, p.messages, p.score_from) for p in prompts]
    return hashlib.sha1(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def chunk_done(part: Path, digest: str) -> bool:
    """A chunk is reused only when whole (its row count matches its sidecar), for the same prompts, with no failures."""
    sidecar = part.with_suffix(".json")
    if not (part.is_file() and sidecar.is_file()):
        return False
    try:
        meta = json.loads(sidecar.read_text())
        import pyarrow.parquet as pq

        rows = pq.read_metadata(part).num_rows
    except Exception as e:  # a torn or foreign file: set it aside, sample the chunk again
        log.warning("%s is unreadable (%s); setting it aside and sampling that chunk again", part, first_line(e))
        part.replace(part.with_suffix(".parquet.bad"))
        return False
    if rows != meta.get("rows", rows):
        log.warning("%s holds %d rows, its sidecar says %d; sampling that chunk again", part, rows, meta["rows"])
        return False
    if meta.get("prompts") != digest:
        log.warning("%s was sampled from other prompts (an edited problem file, template or dataset); sampling it again",
                    part)
        return False
    return not meta.get("failed")


def chunk_summary(parts: list[Path], cfg: EngineConfig) -> dict:
    """Seconds, generated tokens and (server backend) requests, retries, errors, tokens and cost of all chunks."""
    metas = [json.loads(p.with_suffix(".json").read_text()) for p in parts if p.with_suffix(".json").is_file()]
    out = {"seconds": sum(m["seconds"] for m in metas), "tokens": sum(m.get("tokens", 0) for m in metas),
           "failed_requests": sum(e["requests"] for m in metas for e in (m.get("failed") or {}).values())}
    usage: dict = {}
    for m in metas:
        for key, value in (m.get("usage") or {}).items():
            usage[key] = usage.get(key, 0) + value
    if usage:
        if cfg.price_input is not None or cfg.price_output is not None:
            usage["cost"] = round(usage.get("prompt_tokens", 0) * (cfg.price_input or 0) / 1e6
                                  + usage.get("completion_tokens", 0) * (cfg.price_output or 0) / 1e6, 4)
        out["usage"] = usage
    return out
