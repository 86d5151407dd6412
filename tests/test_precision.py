"""dtype by what the CPU computes natively: the decision table, this machine's real flags, the warning."""

import logging
import re
from pathlib import Path

import pytest

from seqdistill import precision, sft
from seqdistill.engines.engine import EngineConfig

AVX2 = {"fpu", "sse4_2", "avx", "avx2", "fma"}  # AMD Zen 2/3, Intel client chips
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512vl"}  # Skylake-SP: AVX-512 without bf16
AVX512_BF16 = AVX512 | {"avx512_bf16"}  # Cooper Lake, Zen 4
AMX = AVX512 | {"amx_bf16", "amx_tile"}  # Sapphire Rapids
ARM_BF16 = {"fp", "asimd", "sve", "bf16"}  # Graviton 3


@pytest.mark.parametrize("flags, auto", [
    (AVX2, "float32"), (AVX512, "float32"), (AVX512_BF16, "bfloat16"), (AMX, "bfloat16"),
    ({"fp", "asimd"}, "float32"), (ARM_BF16, "bfloat16"), (set(), "float32"),
])
def test_auto_picks_bfloat16_only_with_native_bf16(flags, auto):
    assert precision.cpu_dtype("auto", flags) == auto
    for explicit in ("float32", "bfloat16", "float16"):  # an explicit choice is kept as asked
        assert precision.cpu_dtype(explicit, flags) == explicit


def test_explicit_bfloat16_without_native_bf16_warns_once(caplog, monkeypatch):
    monkeypatch.setattr(precision, "_warned", [])
    with caplog.at_level(logging.WARNING, logger="seqdistill.precision"):
        assert precision.cpu_dtype("bfloat16", AVX2) == "bfloat16"
        assert precision.cpu_dtype("bfloat16", AVX2) == "bfloat16"  # a second engine or rank: said once
    [record] = caplog.records
    message = record.getMessage()
    assert "\n" not in message and "slower" in message and "dtype auto or float32" in message and "avx2" in message
    caplog.clear()
    monkeypatch.setattr(precision, "_warned", [])
    with caplog.at_level(logging.WARNING, logger="seqdistill.precision"):
        precision.cpu_dtype("bfloat16", AVX512_BF16)
        precision.cpu_dtype("float32", AVX2)
    assert not caplog.records


def test_this_machine_flags_decide_auto():
    """The real /proc/cpuinfo of the machine running the tests: the decision follows its bf16 flags."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    line = next((ln for ln in text.splitlines() if re.match(r"(flags|Features)\s*:", ln)), None)
    if line is None:
        pytest.skip("no CPU flags in /proc/cpuinfo here")
    flags = set(line.split(":", 1)[1].split())
    assert precision.cpu_flags() == flags
    has_bf16 = bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    assert precision.cpu_dtype("auto") == ("bfloat16" if has_bf16 else "float32")
    assert ("avx2" in precision.describe_cpu()) == ("avx2" in flags)


def test_stages_default_to_auto():
    """No stage hard-codes a CPU dtype: engine and sft default to auto, and the CPU recipes name no bfloat16."""
    assert EngineConfig().dtype == "auto" and sft.SFTStageConfig().dtype == "auto"
    import yaml

    recipes = Path(__file__).resolve().parents[1] / "pipelines"
    for name in ("quickstart.yaml", "quickstart-reasoning-gym.yaml", "eval-quickstart.yaml", "generate-quickstart.yaml"):
        assert "bfloat16" not in str(yaml.safe_load((recipes / name).read_text())), name


def test_sft_precision_on_cpu(monkeypatch, caplog):
    """sft's auto is float32 on every CPU (measured faster for training than bf16 even with AVX512_BF16);
    an explicit bfloat16 is kept, with the warning where the CPU lacks native bf16."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "_warned", [])
    for flags in (AVX2, AVX512_BF16):
        monkeypatch.setattr(precision, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert sft.pick_precision(sft.SFTStageConfig()) == ("cpu", "float32")
    with caplog.at_level(logging.WARNING, logger="seqdistill.precision"):
        assert sft.pick_precision(sft.SFTStageConfig(dtype="bfloat16")) == ("cpu", "bfloat16")  # AVX512_BF16: quiet
        assert not caplog.records
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(AVX2))
        assert sft.pick_precision(sft.SFTStageConfig(dtype="bfloat16")) == ("cpu", "bfloat16")
    assert "several times slower" in caplog.text
