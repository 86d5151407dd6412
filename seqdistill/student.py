"""`seqdistill student`: a smaller student made from a model by keeping some of its decoder layers.

    seqdistill student --model embedded:SmolLM2-135M-Instruct --layers every:2 --output_dir outputs/smollm2-15l
    seqdistill sft --set student=outputs/smollm2-15l method=full kd.mode=online kd.teacher=embedded:SmolLM2-135M-Instruct

DistilBERT initialised its 6-layer student from every other layer of 12-layer BERT; the same works for the
decoder-only families transformers ships whose causal-LM class keeps its blocks in `model.model.layers`
(Llama, Qwen2, Qwen3, Mistral, SmolLM, ...). The kept blocks are copied unchanged, in order; the
embeddings, final norm and LM head stay as they are. The config's `num_hidden_layers` becomes the number
kept, per-layer settings (`layer_types` and any other top-level `*layer*` list with one entry per layer)
keep the kept layers' entries, and Qwen2's `max_window_layers` counts the kept layers below it.

OUTPUT_DIR is an ordinary Hugging Face model directory (weights in one safetensors file, config,
tokenizer with its chat template, a model card naming the source and the kept layers) that sft, eval
and vLLM load. The student is untrained: fine-tune all of it (`method: full`), ideally with the source
as the KD teacher, before expecting it to answer well.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from seqdistill import card, models, store
from seqdistill.config import ConfigError, first_line

log = logging.getLogger(__name__)
WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
             "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json")
OUTPUT = store.Layout(owned=("config.json", "generation_config.json", *WEIGHTS, *TOKENIZER, card.MODEL_CARD),
                      marker=card.MODEL_CARD)  # the card is written last
EVERY = re.compile(r"^every:(-?\d+)$")


@dataclass
class StudentConfig:
    model: str = models.DEFAULT_MODEL  # the source: hub id, local HF directory, .gguf, or embedded:NAME
    # decoder layers to keep, counted from 0: every:N (layers 0, N, 2N, ...), a list [0, 2, 4] or "0,2,4";
    # negative indices count from the end (-1: the last layer)
    layers: str | list[int] = "every:2"
    output_dir: str = "outputs/student"  # the student's Hugging Face model directory
    overwrite: bool = False

    def validate(self) -> list[str]:
        errors = [f"model: {p}" for p in models.check(self.model)]
        try:
            parse_layers(self.layers)
        except ConfigError as e:
            errors += e.problems
        return errors


def parse_layers(spec: str | list[int]) -> int | list[int]:
    """`every:N` as N, a list or comma-separated string as its indices (not yet checked against a model)."""
    usage = "layers must be every:N (N >= 1), a list of layer indices like [0, 2, 4], or \"0,2,4\""
    if isinstance(spec, str):
        match = EVERY.match(spec.strip())
        if match:
            step = int(match.group(1))
            if step < 1:
                raise ConfigError(f"{usage}; got {spec!r}")
            return step
        try:
            spec = [int(part) for part in spec.split(",") if part.strip()]
        except ValueError as e:
            raise ConfigError(f"{usage}; got {spec!r}") from e
    if not spec:
        raise ConfigError("layers selects no layer; name at least one (e.g. every:2 or [0, 2, 4])")
    return list(spec)


def select(spec: str | list[int], n_layers: int) -> list[int]:
    """The kept layer indices (0-based, increasing) of a model with `n_layers` decoder layers."""
    parsed = parse_layers(spec)
    if isinstance(parsed, int):
        return list(range(0, n_layers, parsed))
    outside = [i for i in parsed if not -n_layers <= i < n_layers]
    if outside:
        raise ConfigError(f"layers {', '.join(map(str, outside))} outside the model's {n_layers} decoder layers "
                          f"(0..{n_layers - 1}, or -{n_layers}..-1 from the end)")
    kept = [i % n_layers for i in parsed]
    if any(b <= a for a, b in zip(kept, kept[1:])):
        raise ConfigError(f"layers must be distinct and in increasing order, got {spec!r} ({kept} after negative "
                          "indices are counted from the end)")
    return kept


def check_architecture(path: str):
    """The model's config, with its layer count; refuses an architecture without `model.model.layers`
    (built on the meta device: no weights are read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as e:
        raise ConfigError(f"could not read the config of {path!r}: {first_line(e)}") from e
    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except Exception as e:
        raise ConfigError(f"{path!r} ({config.model_type}) is not a causal language model transformers can build: "
                          f"{first_line(e)}") from e
    layers = getattr(getattr(skeleton, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) != getattr(config, "num_hidden_layers", None):
        raise ConfigError(f"{type(skeleton).__name__} ({config.model_type}) keeps no decoder layers in "
                          "model.model.layers; seqdistill student works for Llama, Qwen2, Mistral and other "
                          "decoder-only models laid out that way")
    return config


def shrink_config(config, kept: list[int]) -> list[str]:
    """Set `config` (in place) to the kept layers; the names of the settings changed besides the layer count."""
    n = config.num_hidden_layers
    changed = []
    for key, value in config.to_dict().items():
        if "layer" in key and isinstance(value, (list, tuple)) and len(value) == n:
            setattr(config, key, type(value)(value[i] for i in kept))
            changed.append(key)
    if isinstance(getattr(config, "max_window_layers", None), int):  # Qwen2: the first max_window_layers use full attention
        config.max_window_layers = sum(1 for i in kept if i < config.max_window_layers)
        changed.append("max_window_layers")
    config.num_hidden_layers = len(kept)
    return changed


def run(cfg: StudentConfig) -> dict:
    """Build the student in cfg.output_dir; returns what was kept (also in its model card)."""
    out = Path(cfg.output_dir)
    # ---- everything that can fail is checked before the weights load ----
    path = models.resolve(cfg.model)
    config = check_architecture(path)
    n_source = config.num_hidden_layers
    kept = select(cfg.layers, n_source)
    if not cfg.overwrite and OUTPUT.done(out, cfg):
        log.info("%s already holds this student", out)
        return {"source_layers": n_source, "kept": kept, "output_dir": str(out)}
    tokenizer = models.load_tokenizer(path)
    OUTPUT.prepare(out, cfg, cfg.overwrite)

    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
    source_params = sum(p.numel() for p in model.parameters())
    blocks = model.model.layers
    model.model.layers = torch.nn.ModuleList(blocks[i] for i in kept)
    for new_index, block in enumerate(model.model.layers):  # the KV cache is indexed by each attention's layer_idx
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    changed = shrink_config(model.config, kept)
    info = {"source": cfg.model, "source_layers": n_source, "kept": kept, "config_changed": changed,
            "source_parameters": source_params, "parameters": sum(p.numel() for p in model.parameters()),
            "output_dir": str(out)}
    model.save_pretrained(out, max_shard_size="1000GB")  # one weights file: the directory's files are known
    tokenizer.save_pretrained(out)
    dtype = str(model.dtype).removeprefix("torch.")
    card.write_student_card(cfg, info, model.config.model_type, dtype)
    log.info("kept %d of %d layers (%s): %.1fM of %.1fM parameters -> %s", len(kept), n_source, kept,
             info["parameters"] / 1e6, source_params / 1e6, out)
    return info
