"""What a sampling call is, whatever answers it: the engine and sampling settings (validated), the prompts
sent, the request, the outputs that come back, and the seeds and digests that make chunks reproducible.
The bottom of sampling: `vllm_engine`, `api` (the OpenAI-compatible client), `ranks` and `chunks` build on it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import MISSING, dataclass, field, fields


BACKENDS = ("vllm", "openai")


@dataclass
class EngineConfig:
    """Where samples come from: in-process vLLM (`backend: vllm`) or an OpenAI-compatible server (`openai`)."""

    backend: str = "vllm"  # vllm: vllm.LLM in this process | openai: any OpenAI-compatible server or API
    seed: int = 0  # sampling seed (vllm: the engine, reseeded per chunk; openai: a seed per request)
    # ---- backend vllm ----
    dtype: str = "auto"  # auto: the checkpoint's on GPU; on CPU bfloat16 only with native bf16 (AVX512_BF16, AMX, Arm bf16), else float32
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
    # HTTP headers a hosted API wants, each header name -> the NAME of the environment variable holding its value,
    # e.g. {api-key: AZURE_OPENAI_API_KEY, HTTP-Referer: MY_SITE_URL}; values are read from there, never written
    headers: dict[str, str] = field(default_factory=dict)
    api: str = "chat"  # chat: the server applies the chat template | completions: token ids rendered here
    # the request field that carries sampling.max_tokens: max_tokens | max_completion_tokens (for APIs that refuse
    # max_tokens, as OpenAI's reasoning models do)
    max_tokens_field: str = "max_tokens"
    # Ask for up to this many samples of a prompt in one request (the API's `n`), so the prompt is billed once per
    # request instead of once per sample. 1: one request per sample, each with its own seed. Above 1 a request
    # carries its first sample's seed (vLLM seeds its i-th sample seed + i), so the samples differ from a run with 1;
    # a server that ignores seed is not reproducible either way. A resumed run asks only for the samples missing.
    samples_per_request: int = 1
    max_concurrency: int = 16  # requests in flight at once, over all replicas
    requests_per_minute: float | None = None  # client-side limits; None: none
    tokens_per_minute: float | None = None
    timeout: float = 600.0  # seconds for one request
    max_retries: int = 6  # per request: 429, 5xx, timeouts, dropped connections, malformed answers
    retry_backoff: float = 1.0  # first retry delay in seconds, doubled each retry, with jitter (Retry-After wins)
    extra_body: dict = field(default_factory=dict)  # server-specific request fields, e.g. vLLM's top_k, min_p
    price_input: float | None = None  # price per million prompt tokens, for the cost line
    price_output: float | None = None  # price per million completion tokens
    # Stop sending once this much is spent (in price_input/price_output's currency; both must be set), counted
    # over the stage's output with earlier runs (per shard; eval: per model and benchmark). The requests in flight
    # finish and are kept; a rerun with a higher limit continues. A run whose lower estimate exceeds it is refused.
    max_cost: float | None = None
    max_tokens_total: int | None = None  # the same limit in tokens, prompt + completion, as the server counts them
    # Send each chunk's requests as one batch through the server's batch API (/v1/files + /v1/batches, as OpenAI's):
    # answers within 24 h at the batch price; a killed run resumes by the recorded batch id
    batch: bool = False
    batch_discount: float = 0.5  # batch price / price_input and price_output (OpenAI's batch API: half)
    batch_poll: float = 30.0  # seconds before a batch's first status check; each wait doubles, up to 10 minutes

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
            if self.max_cost is not None or self.max_tokens_total is not None:
                errors.append("max_cost and max_tokens_total limit the requests to a server (backend openai); the "
                              "vllm backend sends none: remove them")
            if self.batch:
                errors.append("batch sends the requests through a server's batch API: it needs backend openai")
            server_only = [f.name for f in fields(self) if f.name in ("headers", "max_tokens_field", "batch_discount",
                                                                       "batch_poll", "samples_per_request")
                           and getattr(self, f.name) != (
                f.default if f.default_factory is MISSING else f.default_factory())]
            if server_only:
                errors.append(f"{', '.join(server_only)} shape the requests to a server (backend openai); the vllm "
                              "backend sends none: remove them")
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
        for name in ("price_input", "price_output"):
            if (getattr(self, name) or 0) < 0:
                errors.append(f"{name} must be >= 0 (or null for no cost line), got {getattr(self, name)}")
        if self.max_cost is not None and not self.max_cost > 0:
            errors.append(f"max_cost must be > 0 (or null for no limit), got {self.max_cost}")
        elif self.max_cost is not None and (self.price_input is None or self.price_output is None):
            errors.append("max_cost needs engine.price_input and engine.price_output (per million prompt / completion "
                          "tokens) to count what is spent; set both (0 for a free direction)")
        if self.batch and (len(self.base_url) > 1 or self.requests_per_minute or self.tokens_per_minute):
            errors.append("batch: true takes one base_url (a batch lives on the server it went to) and no "
                          "requests_per_minute / tokens_per_minute (the batch API paces itself); remove the others")
        if self.samples_per_request < 1:
            errors.append(f"samples_per_request must be at least 1 (1: one request per sample), got {self.samples_per_request}")
        elif self.batch and self.samples_per_request > 1:
            errors.append("samples_per_request above 1 is not done through the batch API (one line per sample there); "
                          "set it to 1 or batch: false")
        if not 0 < self.batch_discount <= 1 or not self.batch_poll > 0:
            errors.append(f"need 0 < batch_discount <= 1 and batch_poll > 0, got {self.batch_discount} and {self.batch_poll}")
        if self.max_tokens_total is not None and self.max_tokens_total < 1:
            errors.append(f"max_tokens_total must be at least 1 (or null for no limit), got {self.max_tokens_total}")
        if self.max_tokens_field not in ("max_tokens", "max_completion_tokens"):
            errors.append(f"max_tokens_field must be max_tokens or max_completion_tokens, got {self.max_tokens_field!r}")
        for name, env in self.headers.items():
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", str(name)):
                errors.append(f"headers: {str(name)!r} is not an HTTP header name (letters, digits and -, as api-key)")
            elif not re.fullmatch(r"[A-Z_][A-Z0-9_]*", str(env)):  # upper case: a key pasted here is never echoed or saved
                errors.append(f"headers.{name} must be the NAME of an environment variable holding the value, in upper "
                              "case (e.g. AZURE_OPENAI_API_KEY), not the value itself")
            elif not os.environ.get(str(env)):
                errors.append(f"headers.{name} names {env}, which is not set: export {env}=... (the value is read "
                              "from there and never written anywhere)")
        if self.api_key_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            errors.append("api_key_env must be the NAME of an environment variable holding the key (e.g. "
                          "OPENAI_API_KEY), not the key itself")
        elif self.api_key_env and self.api_key_env not in os.environ:
            errors.append(f"api_key_env names {self.api_key_env}, which is not set: export {self.api_key_env}=... "
                          "(the key is read from there and never written anywhere)")
        return errors

    def prices(self) -> tuple[float, float] | None:
        """(prompt, completion) price per million tokens as charged, batch_discount applied; None: no prices set."""
        if self.price_input is None and self.price_output is None:
            return None
        discount = self.batch_discount if self.batch else 1.0
        return (self.price_input or 0) * discount, (self.price_output or 0) * discount


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
                                             "price_input", "price_output", "max_cost", "max_tokens_total",
                                             "in_process", "gpu_memory_utilization",
                                             "kv_cache_memory_bytes", "enable_prefix_caching", "data_parallel_size",
                                             "batch", "batch_discount", "batch_poll", "headers",
                                             "max_tokens_field"))


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


def chunk_seed(*key) -> int:
    return int(hashlib.sha1("-".join(map(str, key)).encode()).hexdigest()[:8], 16)


def prompts_digest(prompts: list[Prompt]) -> str:
    """What a chunk was asked: an edited problem file or template, or another dataset, is not reused."""
    what = [(p.key, p.token_ids, p.messages, p.score_from) for p in prompts]
    return hashlib.sha1(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
