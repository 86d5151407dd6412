"""In-process vLLM: the engine built from the user's settings (dtype by what the CPU runs fast), reseeded per
chunk, one batched `generate` per chunk; released before another starts."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from seqdistill.config import ConfigError
from seqdistill.engines.sampling import (
    Completion,
    EngineConfig,
    Output,
    Prompt,
    Request,
    chunk_seed,
)
from seqdistill import precision
from seqdistill.engines import topk

log = logging.getLogger(__name__)

CPU_KV_CACHE_BYTES = 2 << 30  # vLLM-CPU's fraction of RAM is unreliable here; an explicit KV size works


def load_vllm(path: str, cfg: EngineConfig, **kwargs):
    """One `vllm.LLM` for the whole run, built from the user's engine settings."""
    try:
        from vllm import LLM
        from vllm.platforms import current_platform
    except ImportError as e:
        raise ConfigError("vLLM is not installed: `pip install -e .[cpu]` on CPU machines, "
                          "`pip install -e .[cuda]` on CUDA machines") from e

    cpu = current_platform.is_cpu()
    args = dict(
        model=path, dtype=precision.cpu_dtype(cfg.dtype) if cpu else cfg.dtype, max_model_len=cfg.max_model_len,
        tensor_parallel_size=cfg.tensor_parallel_size,  # data_parallel_size: one such engine per rank process
        enable_prefix_caching=cfg.enable_prefix_caching, enforce_eager=cfg.enforce_eager, seed=cfg.seed,
        worker_extension_cls="seqdistill.engines.vllm_engine.SeedExtension",
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
                                      topk.from_vllm(c.logprobs, c.token_ids, req.logprobs_k) if req.logprobs_k else None)
                           for c in r.outputs]
            prompt_topk = (topk.from_vllm(r.prompt_logprobs, p.token_ids, req.prompt_logprobs_k, first=p.score_from)
                           if req.prompt_logprobs_k else None)
            outputs.append(Output(completions, len(p.token_ids), prompt_topk))
        return outputs

    def usage_of(self, outputs: list[Output]) -> dict:
        return {}  # no requests: nothing to count beyond the tokens
