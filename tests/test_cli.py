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


def test_version():
    from seqdistill import __version__

    out = cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"seqdistill {__version__}"


def test_trl_style_settings(tmp_path):
    from seqdistill.cli import flag_overrides

    assert flag_overrides(["--sampling.n", "4", "--prompt.prefill=<think>", "--overwrite", "--output-dir", "x"]) == [
        "sampling.n=4", "prompt.prefill=<think>", "overwrite=true", "output_dir=x"]
    # through the entry point: the value reaches the config, and an unknown key names the nearest one
    out = cli("generate", "--sampling.n", "0", "--problems.num_problems=5", f"--output_dir={tmp_path}")
    assert out.returncode == 2 and out.stderr.strip() == "error: sampling.n must be at least 1, got 0"
    out = cli("generate", "--sampling.temprature", "1")
    assert out.returncode == 2
    assert out.stderr.strip() == "error: unknown setting sampling.temprature (did you mean sampling.temperature?)"
    out = cli("run", "pipelines/quickstart.yaml", "--sft.learning_rat", "1e-4")
    assert out.stderr.strip().endswith("unknown setting sft.learning_rat (did you mean sft.learning_rate?)")


def test_quiet_reaches_vllm_and_transformers():
    code = ("import os; from seqdistill import cli; cli.set_verbosity(-2); "
            "print(os.environ['VLLM_LOGGING_LEVEL'], os.environ['TRANSFORMERS_VERBOSITY']); "
            "import transformers; print(transformers.logging.get_verbosity())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["ERROR", "error", "40"]  # transformers defaults to warning


def test_verbose_shows_what_caused_the_one_line_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampling: [n: 1\n")
    out = cli("generate", "--config", str(bad))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    out = cli("generate", "-v", "--config", str(bad))
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and lines[-1].startswith(f"error: config file {bad} is not valid YAML")
    assert "yaml.parser.ParserError" in out.stderr and "The above exception was the direct cause" in out.stderr


def test_verbose_shows_a_cause_raised_from_none(capsys):
    from seqdistill import cli as clilib
    from seqdistill.config import ConfigError

    try:
        try:
            int("seven")
        except ValueError:
            raise ConfigError("layers must be numbers") from None
    except ConfigError as e:
        clilib.print_causes(e)
    err = capsys.readouterr().err
    assert "ValueError: invalid literal for int() with base 10: 'seven'" in err and "ConfigError: layers must be" in err
