"""The real `seqdistill` entry point, as a user runs it."""

import subprocess
import sys


def cli(*args):
    return subprocess.run([sys.executable, "-m", "seqdistill", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_stage():
    out = cli("--help")
    assert out.returncode == 0
    for name in ("generate", "sft", "eval", "run"):
        assert name in out.stdout


def test_bad_setting_is_one_line_error():
    out = cli("generate", "--set", "sampling.n=0", "sampling.temprature=1")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown setting sampling.temprature")


def test_missing_model_is_one_line_error(tmp_path):
    out = cli("generate", "--set", f"model={tmp_path}/missing", f"output_dir={tmp_path}/out")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == f"error: model: model path {tmp_path}/missing does not exist"
