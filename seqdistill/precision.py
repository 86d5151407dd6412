"""Which float type runs fast here: one rule for vLLM's `engine.dtype` and sft's `dtype`.

On a GPU, `auto` keeps what it always meant (vLLM: the checkpoint's dtype; sft: bfloat16 where the GPU
has it). On a CPU, bfloat16 is fast only where the CPU computes it natively (x86: AVX512_BF16 or AMX;
Arm: the bf16 extension); elsewhere (AVX2-only x86: most laptops, AMD Zen 2/3, many servers) vLLM-CPU
runs bfloat16 4-400x slower than float32, so vLLM's `auto` means float32 there, and an explicit bfloat16
(vLLM or sft) warns, once per process. sft's `auto` is float32 on every CPU: training measured faster in
float32 than in bfloat16 even with AVX512_BF16 (benchmarks/results/RESULTS.md).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

log = logging.getLogger(__name__)
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # /proc/cpuinfo names: x86 AVX512-BF16, x86 AMX, Arm BF16
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "bf16")  # what a timing should name
_warned: list[bool] = []  # the slow-bfloat16 warning is said once per process


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux names them (`flags` on x86, `Features` on Arm); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def native_bf16(flags: frozenset[str] | set[str]) -> bool:
    return any(f in flags for f in BF16_FLAGS)


def describe_cpu(flags: frozenset[str] | set[str] | None = None) -> str:
    """The flags that decide CPU speed, for every timing the project records: 'avx2 avx512f avx512_bf16'."""
    flags = cpu_flags() if flags is None else flags
    return " ".join(f for f in SHOWN_FLAGS if f in flags) or "none of avx2/avx512/bf16"


def cpu_dtype(asked: str, flags: frozenset[str] | set[str] | None = None) -> str:
    """The dtype to run on this CPU. `auto`: bfloat16 with native bf16, else float32. An explicit
    bfloat16 without native bf16 runs as asked, with one warning line."""
    flags = cpu_flags() if flags is None else flags
    if asked == "auto":
        return "bfloat16" if native_bf16(flags) else "float32"
    if asked == "bfloat16" and not native_bf16(flags) and not _warned:
        _warned.append(True)
        log.warning("dtype bfloat16 on a CPU without native bf16 (%s; no AVX512_BF16 or AMX): it runs several times "
                    "slower than float32 (4x-400x seen with vLLM); set dtype auto or float32", describe_cpu(flags))
    return asked
