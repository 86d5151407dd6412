"""Prompt templates: Jinja files, rendered in a sandbox, wrapped in the model's chat template.

A template name is looked up as a path, then as `prompts/NAME.jinja` in the working directory (a
user's own), then among seqdistill's built-in templates (`seqdistill/templates/`, package data:
r1, number, marker, and chat/plain for students without a chat template).

A template sees every field of a problem (`question`, `answer` is hidden from it, plus the
source's own columns). R1 advice is no system prompt; reasoning teachers may need an assistant
prefill such as "<think>\\n" so they don't skip thinking.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from seqdistill.config import ConfigError

log = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"  # built-in templates, shipped in the wheel
USER_DIR = Path("prompts")  # a user's own templates, relative to the working directory
THINK_OPEN = "<think>\n"  # how R1-style traces open their reasoning
_SAID: set[tuple[str, str]] = set()  # (model, prefill) pairs already logged as present in the chat template


# fields of a problem a template never sees: the gold answer, code tests and reference solutions
HIDDEN = ("answer", "tests", "test", "canonical_solution", "input_output", "verification_info",
          "private_test_cases", "rg_metadata", "rg_entry")


@dataclass
class PromptConfig:
    template: str = "r1"  # built-in name (r1, number, marker, steps), prompts/NAME.jinja in the working dir, or a .jinja path
    system: str | None = None  # None: no system message (R1 advice); the model's template may add its own
    prefill: str = ""  # text the assistant turn starts with, e.g. "<think>\n"

    def validate(self) -> list[str]:
        try:
            template_path(self.template)
        except ConfigError as e:
            return e.problems
        return []


def available() -> list[str]:
    """Template names that resolve without a path: the user's prompts/*.jinja and the built-in ones."""
    return sorted({p.stem for d in (USER_DIR, TEMPLATES_DIR) for p in d.glob("*.jinja")})


def template_path(name: str) -> Path:
    candidates = [Path(name).expanduser(), USER_DIR / f"{name}.jinja", TEMPLATES_DIR / f"{name}.jinja"]
    for path in candidates:
        if path.is_file():
            return path
    raise ConfigError(f"prompt template {name!r} not found as a path, as prompts/{name}.jinja or built in; "
                      f"give a path to a .jinja file or one of: {', '.join(available())}")


def load_template(name: str):
    from jinja2 import StrictUndefined, TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    path = template_path(name)
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=False)
    try:
        return env.from_string(path.read_text())
    except TemplateSyntaxError as e:
        raise ConfigError(f"prompt template {path} line {e.lineno}: {e.message}") from e


def render(template, problem: dict) -> str:
    """The user message for one problem; the gold answer, tests and reference solutions are never shown."""
    from jinja2 import UndefinedError

    fields = {k: v for k, v in problem.items() if k not in HIDDEN}
    try:
        return template.render(**fields).strip()
    except UndefinedError as e:
        raise ConfigError(f"prompt template uses a field the problems don't have ({e.message}); "
                          f"fields: {', '.join(sorted(fields))}") from e


def messages(user: str, cfg: PromptConfig) -> list[dict]:
    system = [{"role": "system", "content": cfg.system}] if cfg.system is not None else []
    return [*system, {"role": "user", "content": user}]


def chat_prompt(tokenizer, msgs: list[dict], prefill: str = "") -> str:
    """The exact text sent to the engine: the model's chat template, generation prompt, then the prefill
    unless the generation prompt already ends with it."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"model {tokenizer.name_or_path} has no chat template; use an instruct/chat model "
                          "or one whose tokenizer_config carries a chat_template")
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return text + unopened(tokenizer, text, prefill)


def unopened(tokenizer, prompt: str, prefill: str) -> str:
    """The prefill, or "" when the generation prompt already ends with it. The one rule for the teacher's
    prompt and the student's training text: neither may open the assistant turn twice."""
    if not (prefill and prompt.endswith(prefill)):
        return prefill
    # current DeepSeek-R1-Distill templates open the turn with "<think>\n" themselves: don't double it
    if (tokenizer.name_or_path, prefill) not in _SAID:
        _SAID.add((tokenizer.name_or_path, prefill))
        log.info("the chat template of %s already ends the generation prompt with the prefill %r; "
                 "not appending it again", tokenizer.name_or_path, prefill)
    return ""


def encode(tokenizer, user: str, cfg: PromptConfig) -> list[int]:
    """Token ids of the whole prompt the engine sees for one user message (no second BOS)."""
    return tokenizer(chat_prompt(tokenizer, messages(user, cfg), cfg.prefill), add_special_tokens=False)["input_ids"]
