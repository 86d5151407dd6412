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
from dataclasses import dataclass, field
from pathlib import Path

from seqdistill.config import ConfigError

log = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"  # built-in templates, shipped in the wheel
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
    # switches the model's chat template reads, e.g. {enable_thinking: false} (Qwen3) or {reasoning_effort: low}
    chat_template_kwargs: dict = field(default_factory=dict)

    def validate(self) -> list[str]:
        try:
            template_path(self.template)
        except ConfigError as e:
            return e.problems
        return check_template_kwargs(self.chat_template_kwargs)


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


# apply_chat_template's own arguments: a chat_template_kwargs key of these names would clash with them
RESERVED = ("conversation", "tools", "documents", "chat_template", "add_generation_prompt", "continue_final_message",
            "tokenize", "padding", "truncation", "max_length", "return_tensors", "return_dict",
            "return_assistant_tokens_mask", "tokenizer_kwargs", "messages")


def check_template_kwargs(kwargs, key: str = "chat_template_kwargs") -> list[str]:
    """Chat-template switches must be a mapping of names to JSON values (what a Jinja template and a server read)."""
    import json

    if kwargs is None:
        return []
    if not isinstance(kwargs, dict):
        return [f"{key} must be a mapping such as {{enable_thinking: false}}, got {kwargs!r}"]
    errors = []
    for name, value in kwargs.items():
        if not isinstance(name, str) or not name.isidentifier() or name in RESERVED:
            why = "is an argument of apply_chat_template itself" if name in RESERVED else "is not a variable name a template can read"
            errors.append(f"{key}: key {name!r} {why}; use the name the chat template reads, e.g. enable_thinking")
            continue
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            errors.append(f"{key}.{name} must be a JSON value (string, number, true/false, null, list or mapping), "
                          f"got {value!r} ({type(value).__name__}); quote it")
    return errors


def check_served_chat(cfg: PromptConfig, engine_cfg) -> list[str]:
    """engine.api chat sends messages for the server to render: switches rendered here would be silently lost."""
    if cfg.chat_template_kwargs and engine_cfg.backend == "openai" and engine_cfg.api == "chat":
        return [f"prompt.chat_template_kwargs {cfg.chat_template_kwargs} can't reach a server that renders the messages "
                "itself (engine.api chat); put them in engine.extra_body as chat_template_kwargs (vLLM and SGLang "
                "servers read it), or use engine.api: completions"]
    return []


def template_text(tokenizer, msgs: list[dict], generation: bool = True, template_kwargs: dict | None = None) -> str:
    """The model's chat template on `msgs`, with the generation prompt when `generation`: the one place a
    conversation is rendered, for the teacher's prompts, eval's and the student's training text alike."""
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation,
                                         **(template_kwargs or {}))


def chat_prompt(tokenizer, msgs: list[dict], prefill: str = "", template_kwargs: dict | None = None) -> str:
    """The exact text sent to the engine: the model's chat template, generation prompt, then the prefill
    unless the generation prompt already ends with it."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"model {tokenizer.name_or_path} has no chat template; use an instruct/chat model "
                          "or one whose tokenizer_config carries a chat_template")
    text = template_text(tokenizer, msgs, True, template_kwargs)
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
    text = chat_prompt(tokenizer, messages(user, cfg), cfg.prefill, cfg.chat_template_kwargs)
    return tokenizer(text, add_special_tokens=False)["input_ids"]
