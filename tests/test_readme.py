"""The README is a manual (issue 27): at most 400 lines, a section with an example per command, relative links
that resolve (README and docs/guide), and a '## Layout' tree that lists what the checkout holds."""

import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
COMMANDS = ("generate", "sft", "eval", "run", "report", "score", "student", "view")


def sections(text):
    """{'## heading': body} for the README's second-level sections."""
    parts = re.split(r"^(## .*)$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 400, "move detail to docs/guide/ (issue 27)"


def test_two_commands_are_make_targets():
    body = sections(README.read_text())["## Two commands"]
    assert "make quickstart" in body and "make test" in body
    targets = re.findall(r"^([a-z0-9.-]+):", (ROOT / "Makefile").read_text(), flags=re.M)
    assert {"quickstart", "test"} <= set(targets)


def test_every_command_has_a_section_with_an_example():
    for command in COMMANDS:
        found = [(h, b) for h, b in sections(README.read_text()).items() if f"`seqdistill {command}`" in h]
        assert found, f"no section for seqdistill {command}"
        ((heading, body),) = found
        assert f"seqdistill {command} " in body, f"{heading}: no example of seqdistill {command}"
        assert "```bash" in body, f"{heading}: no example block"


def anchors(path):
    """GitHub's anchors for a markdown file's headings."""
    out = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            out.add(re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-"))
    return out


def test_relative_links_resolve():
    files = [README, *sorted((ROOT / "docs" / "guide").glob("*.md"))]
    broken = []
    for f in files:
        for link in re.findall(r"\]\(([^)\s]+)\)", f.read_text()):
            if re.match(r"[a-z]+:", link):  # https:, mailto:
                continue
            path, _, fragment = link.partition("#")
            target = f.parent / path if path else f
            if not target.exists():
                broken.append(f"{f.relative_to(ROOT)}: {link}")
            elif fragment and target.suffix == ".md" and fragment not in anchors(target):
                broken.append(f"{f.relative_to(ROOT)}: {link} (no such heading)")
    assert broken == []


def layout_tree():
    """{top-level name: {names listed two spaces in under it}} from the README's '## Layout' block."""
    block = README.read_text().split("## Layout", 1)[1].split("```", 2)[1]
    tree, top = {}, None
    for line in block.splitlines():
        if line and not line[0].isspace():
            top = line.split()[0].split("/")[0]
            tree.setdefault(top, set())
        elif re.match(r"^  \S", line) and top is not None:
            tree[top].add(line.split()[0].rstrip("/"))
    return tree


def present(folder):
    """The names in folder that git would see: not .git, nothing .gitignore names."""
    ignored = [p.strip().rstrip("/") for p in (ROOT / ".gitignore").read_text().splitlines()
               if p.strip() and not p.startswith("#")]
    return {p.name for p in folder.iterdir()
            if p.name != ".git" and not any(fnmatch.fnmatch(p.name, pat) for pat in ignored)}


def test_layout_lists_the_checkout():
    tree = layout_tree()
    assert set(tree) == present(ROOT)
    assert tree["seqdistill"] == present(ROOT / "seqdistill") - {"__init__.py"}
    assert tree["docs"] == present(ROOT / "docs")
