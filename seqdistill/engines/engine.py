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

from seqdistill.engines.api import OpenAIEngine
from seqdistill.engines.batch import BatchEngine
from seqdistill.config import ConfigError

# sampling's parts, a module each (settings and types, vLLM, ranks, the chunk loop); their names stay importable here
from seqdistill.engines.chunks import chunk_done, chunk_outputs, chunk_summary, sample_in_chunks  # noqa: F401, E402
from seqdistill.engines.ranks import DataParallel, RankDevices, check_devices, rank_devices, serve_rank  # noqa: F401, E402
from seqdistill.engines.sampling import (  # noqa: F401, E402
    BACKENDS, OPERATIONAL, VLLM_DTYPES, VLLM_ONLY, Completion, EngineConfig, Output, Prompt, Request, SamplingConfig,
    check_backend, chunk_seed, prompts_digest, unknown_extra,
)
from seqdistill.engines.vllm_engine import CPU_KV_CACHE_BYTES, SeedExtension, VLLMEngine, load_vllm, release_vllm  # noqa: F401, E402
from seqdistill import models
from seqdistill.engines import prompts
from seqdistill.models import context_length


def preflight(model: str, cfg: EngineConfig, prompts: dict[str, list[Prompt]], max_tokens: int) -> None:
    """Before any engine starts or request is sent: every prompt plus max_tokens fits the context.

    vllm: `model` is the resolved path and its config gives the context. openai: the server is asked
    (reachable, key accepted, model served, its context where it says)."""
    if cfg.backend == "openai":
        OpenAIEngine(cfg.served_model or model, cfg).check(prompts, max_tokens)
        return

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
        server = BatchEngine if cfg.batch else OpenAIEngine  # batch: each chunk one batch of the same requests
        yield server(cfg.served_model or model, cfg)  # holds no connection between calls: nothing to release
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

    if cfg.backend == "openai" and cfg.api == "chat":
        return [Prompt(str(k), messages=prompts.messages(u, prompt_cfg)) for k, u in zip(keys, users)]
    tokenizer = models.load_tokenizer(model_path)
    return [Prompt(str(k), token_ids=prompts.encode(tokenizer, u, prompt_cfg)) for k, u in zip(keys, users)]
