"""A normal (non-editable) install works: the wheel carries the prompt templates and SVAMP and GSM8K train, and seqdistill
run from outside the source tree finds the default template and the fallback chat template."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# run from a directory with no prompts/ and no source tree, importing only the installed copy
CHECK = """
import sys, seqdistill
from pathlib import Path
assert Path(seqdistill.__file__).resolve().is_relative_to(Path(sys.argv[1]).resolve()), seqdistill.__file__
from seqdistill.engines import prompts
assert prompts.available() == sys.argv[2].split(","), prompts.available()
print(prompts.render(prompts.load_template(prompts.PromptConfig().template), {"question": "1+1?", "answer": "2"}))
print(prompts.template_path("chat/plain").read_text().count("add_generation_prompt"))
from seqdistill.sources import problems  # SVAMP ships with the package: the preset loads offline
rows = problems.load(problems.ProblemsConfig(source="", preset="svamp"))
print(len(rows), rows[0]["answer"])
rows = problems.load(problems.ProblemsConfig(source="", preset="gsm8k-train"))  # GSM8K's train split ships too
print(len(rows), rows[0]["answer"])
"""


def test_wheel_carries_templates(tmp_path):
    # build from a copy, so no build/ or egg-info lands in the working tree others use
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "seqdistill", src / "seqdistill", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp_path / "dist"),
                    str(src)], check=True, timeout=120)
    (wheel,) = (tmp_path / "dist").glob("seqdistill-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    templates = ROOT / "seqdistill" / "templates"
    shipped = sorted(f"seqdistill/templates/{p.relative_to(templates).as_posix()}" for p in templates.rglob("*")
                     if p.suffix in (".jinja", ".html"))  # prompt templates and the viewer page
    assert {"seqdistill/templates/r1.jinja", "seqdistill/templates/chat/plain.jinja"} <= set(shipped)
    assert sorted(n for n in names if n.startswith("seqdistill/templates/")) == shipped
    assert {"seqdistill/data/svamp.jsonl", "seqdistill/data/SVAMP-LICENSE", "seqdistill/data/gsm8k-train.jsonl",
            "seqdistill/data/GSM8K-LICENSE"} <= set(names)

    target = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
                   check=True, timeout=120)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    builtin = ",".join(sorted(p.stem for p in templates.glob("*.jinja")))
    out = subprocess.run([sys.executable, "-c", CHECK, str(target), builtin], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["1+1?", "Please reason step by step, and put your final answer within \\boxed{}.",
                                       "1", "1000 145", "7473 72"]
    # the installed command: default config (help read off the installed sources), with the default template
    out = subprocess.run([sys.executable, "-m", "seqdistill", "config", "generate"], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "  template: r1\n" in out.stdout and "# the teacher:" in out.stdout
