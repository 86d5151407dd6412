"""`seqdistill sft`: fine-tune a student on distilled traces with TRL's SFTTrainer (LoRA, full or QLoRA).

    seqdistill sft --config pipelines/sft-quickstart.yaml
    seqdistill sft --set student=Qwen/Qwen2.5-1.5B-Instruct dataset=outputs/gsm8k-r1 output_dir=outputs/sft-qwen
    accelerate launch --config_file accelerate/zero3.yaml -m seqdistill sft --config my.yaml   # multi-GPU

Reads the `messages` dataset that `generate` writes (or any dataset in TRL's conversational or
prompt/completion format) and writes OUTPUT_DIR/model (the LoRA adapter or full model, tokenizer,
chat template, model card), OUTPUT_DIR/merged with --merge, OUTPUT_DIR/checkpoints (for --resume),
metrics.json (loss curve, tokens/s, peak memory) and the resolved config.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

from seqdistill import card, hub, models, store, trackers
from seqdistill.training import kd
from seqdistill.engines import prompts
from seqdistill.config import ConfigError, first_line
from seqdistill.training.data import THINKING, TrainingData
from seqdistill.hub import HubConfig
from seqdistill import precision

log = logging.getLogger(__name__)
# resume and report_to don't change the trained model
OUTPUT = store.Layout(owned=("model", "merged", "checkpoints", "metrics.json", hub.MARKER), marker="metrics.json",
                      ignore=("resume", "report_to", "run_name", "push_to_hub", "hub", "release_freed_memory"))


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])


@dataclass
class MixtureSource:
    """One dataset of a weighted mixture (`datasets`)."""

    path: str = ""  # a generate output dir, a .parquet/.jsonl file, or a hub dataset
    weight: float | None = None  # its share of the mixture, relative to the other sources' weights ...
    fraction: float | None = None  # ... or the share of its own rows to take, in (0, 1]; neither: all of them
    split: str | None = None  # None: dataset_split

    def validate(self) -> list[str]:
        errors = [] if self.path else ["every datasets entry needs a path"]
        if self.weight is not None and self.fraction is not None:
            errors.append(f"{self.path}: give weight or fraction, not both")
        if self.weight is not None and self.weight < 0:
            errors.append(f"{self.path}: weight must be >= 0, got {self.weight}")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            errors.append(f"{self.path}: fraction must be in (0, 1], got {self.fraction}")
        return errors


@dataclass
class SFTStageConfig:
    student: str = models.DEFAULT_MODEL  # hub id, local dir, .gguf, or embedded:NAME
    dataset: str = "outputs/generate-quickstart"  # a generate output dir, a .parquet/.jsonl file, or a hub dataset
    # a weighted mixture of datasets, sampled with `seed`; when given it replaces `dataset`: [{path, weight | fraction}]
    datasets: list[MixtureSource] = field(default_factory=list)
    dataset_split: str = "train"
    eval_dataset: str | None = None  # a separate validation set ...
    eval_fraction: float = 0.0  # ... or this share of the problems held out (split by problem_id)
    output_dir: str = "outputs/sft"
    method: str = "lora"  # lora | full | qlora (4-bit base, needs CUDA and bitsandbytes)
    lora: LoraSettings = field(default_factory=LoraSettings)
    assistant_only_loss: bool = True  # False: the prompt is trained on too
    chat_template: str | None = None  # for students without one; None: prompts/chat/plain.jinja
    # switches the student's chat template reads, e.g. {enable_thinking: false}; set eval's prompt.chat_template_kwargs alike
    chat_template_kwargs: dict = field(default_factory=dict)
    # on: train on the whole trace; off: on the answer alone, after the empty think block "<think>\n\n</think>\n\n" (in the
    # prompt, so masked); mixed: a seeded half of the rows off, for a hybrid student that answers with or without thinking
    # (YAML reads on/off unquoted as true/false: both are taken as on/off)
    thinking: bool | str = "on"
    max_length: int = 2048  # tokens per example; at most the student's context (max_position_embeddings) unless context is set
    # stretch the student's context to this many tokens: YaRN RoPE scaling, saved in the model's config (method full or merge)
    context: int | None = None
    max_truncated_fraction: float = 0.01  # more examples cut at max_length than this is an error
    packing: bool | None = None  # padding-free packing; None: on with flash attention, off otherwise
    attn_implementation: str | None = None  # e.g. flash_attention_2 on GPUs
    dtype: str = "auto"  # auto: bfloat16 on GPUs that have it, float32 on CPU (faster there); bfloat16 | float16 | float32
    learning_rate: float = 2e-4
    num_train_epochs: float = 2.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    lr_scheduler_type: str = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    gradient_checkpointing: bool = True  # as TRL: recompute activations (here 40% less memory for 3% speed)
    # glibc: hand freed tensors' memory back to the OS at once (a fixed 1 MB mmap threshold), so the process holds
    # what training uses rather than everything it once freed (benchmarks/results/sft_memory.md); it stays so for the
    # rest of the process (in `seqdistill run`, eval too)
    release_freed_memory: bool = True
    logging_steps: int = 5
    save_steps: int = 50
    save_total_limit: int = 2
    eval_steps: int | None = None  # None: every logging_steps * 4 when there is a validation set
    seed: int = 0
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])  # or wandb, trackio, none
    run_name: str | None = None  # the trackers' run group (wandb group); a pipeline sets its own
    push_to_hub: str | None = None  # hub model repo (user/name) for the adapter or model; a merged LoRA goes to user/name-merged
    hub: HubConfig = field(default_factory=HubConfig)  # how push_to_hub pushes
    merge: bool = False  # also save the LoRA merged into the base model (OUTPUT_DIR/merged)
    resume: bool = False  # continue from the last checkpoint in OUTPUT_DIR/checkpoints
    overwrite: bool = False
    kd: kd.KDConfig = field(default_factory=kd.KDConfig)  # logit distillation on top of SFT (off by default)
    trl: dict = field(default_factory=dict)  # any other trl.SFTConfig keyword

    def __post_init__(self):
        if isinstance(self.thinking, bool):
            self.thinking = "on" if self.thinking else "off"

    def validate(self) -> list[str]:
        errors = [f"student: {p}" for p in models.check(self.student)]
        if self.method not in ("lora", "full", "qlora"):
            errors.append(f"method must be lora, full or qlora, got {self.method!r}")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            errors.append(f"dtype must be auto, bfloat16, float16 or float32, got {self.dtype!r}")
        if not 0 <= self.eval_fraction < 1:
            errors.append(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if not 0 <= self.max_truncated_fraction <= 1:
            errors.append(f"max_truncated_fraction must be in [0, 1], got {self.max_truncated_fraction}")
        if self.max_length < 16:
            errors.append(f"max_length must be at least 16, got {self.max_length}")
        if self.lora.r < 1:
            errors.append(f"lora.r must be at least 1, got {self.lora.r}")
        errors += check_training_values(self)
        if self.kd.mode == "online" and self.kd.teacher:
            errors += [f"kd.teacher: {p}" for p in models.check(self.kd.teacher)]
        errors += check_trl_extras(self)
        errors += hub.check(self.push_to_hub, merged=self.merge and self.method != "full") + trackers.check(self.report_to, known=None)
        if self.kd.attention.weight > 0 and self.attn_implementation not in (None, "eager"):
            errors.append(f"kd.attention needs attention weights, which attn_implementation {self.attn_implementation} "
                          "does not return: remove attn_implementation (eager is then used) or set it to eager")
        if self.kd.mode != "none" and self.packing:
            errors.append("packing cannot be combined with logit KD (teacher log-probs are laid out per example); "
                          "set packing: false")
        errors += prompts.check_template_kwargs(self.chat_template_kwargs)
        errors += check_thinking(self)
        return errors + check_context_values(self) + check_mixture(self)


def check_context_values(cfg: SFTStageConfig) -> list[str]:
    """`context` must hold max_length, and a LoRA adapter alone can't carry the stretched RoPE to eval."""
    if cfg.context is None:
        return []
    if cfg.context < cfg.max_length:
        return [f"context ({cfg.context}) must be at least max_length ({cfg.max_length}); raise context or lower max_length"]
    if cfg.method != "full" and not cfg.merge:
        return [f"context {cfg.context} stretches the student's RoPE, which a LoRA adapter does not carry (its base "
                "model would be served unstretched); set merge: true (OUTPUT_DIR/merged holds it) or method: full"]
    return []


def check_thinking(cfg: SFTStageConfig) -> list[str]:
    """thinking is on, off or mixed; answer-only rows have no teacher log-probs to distil from."""
    if cfg.thinking not in THINKING:
        return [f"thinking must be {', '.join(THINKING)}, got {cfg.thinking!r}"]
    if cfg.thinking != "on" and cfg.kd.mode == "offline":
        return [f"thinking {cfg.thinking} can't be combined with kd.mode offline: the teacher's stored log-probs cover the "
                "think tokens it drops; set thinking: on, or kd.mode online (the teacher scores the answer-only text)"]
    return []


def check_mixture(cfg: SFTStageConfig) -> list[str]:
    """A mixture is weighted throughout or not at all, with some weight to sample by."""
    if not cfg.datasets:
        return []
    weights = [s.weight for s in cfg.datasets]
    if any(w is not None for w in weights):
        if any(w is None for w in weights):
            return ["datasets: some entries have a weight and some don't; give every entry a weight "
                    "(its share of the mixture), or use fraction (a share of its own rows) throughout"]
        if not any(w > 0 for w in weights):
            return [f"datasets: no entry has a weight > 0 ({weights}); give at least one source a positive weight"]
    if cfg.kd.mode != "none":
        return [f"datasets (a mixture) can't be combined with kd.mode {cfg.kd.mode} yet; mix the traces into one "
                "dataset first, or set kd.mode: none"]
    return []


def check_training_values(cfg: SFTStageConfig) -> list[str]:
    """What TRL, transformers or peft would refuse (or silently accept: 0 epochs saves an untrained student)."""
    errors = []
    if not cfg.learning_rate > 0:
        errors.append(f"learning_rate must be > 0, got {cfg.learning_rate}")
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps", "save_steps"):
        if getattr(cfg, name) < 1:
            errors.append(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.eval_steps is not None and cfg.eval_steps < 1:
        errors.append(f"eval_steps must be at least 1 (or null), got {cfg.eval_steps}")
    if cfg.max_steps < -1:
        errors.append(f"max_steps must be -1 (train num_train_epochs) or > 0, got {cfg.max_steps}")
    elif cfg.max_steps <= 0 and not cfg.num_train_epochs > 0:
        errors.append(f"num_train_epochs must be > 0 (or max_steps > 0), got {cfg.num_train_epochs}: "
                      "nothing would be trained")
    if cfg.warmup_steps < 0 or cfg.weight_decay < 0:
        errors.append(f"warmup_steps must be >= 0 and weight_decay >= 0, got {cfg.warmup_steps} and {cfg.weight_decay}")
    if not 0 <= cfg.lora.dropout < 1:
        errors.append(f"lora.dropout must be in [0, 1), got {cfg.lora.dropout}")
    if cfg.lora.alpha <= 0:
        errors.append(f"lora.alpha must be > 0, got {cfg.lora.alpha}")
    from transformers import SchedulerType

    schedulers = [s.value for s in SchedulerType]
    if cfg.lr_scheduler_type not in schedulers:
        errors.append(f"lr_scheduler_type {cfg.lr_scheduler_type!r} is not one of transformers': {', '.join(schedulers)}")
    return errors


@dataclass
class SFTResult:
    metrics: dict
    trainer: object | None = None  # the TRL trainer (None when the run was already done)


def run(cfg: SFTStageConfig, callbacks: list | None = None) -> SFTResult:
    """Train the student; `callbacks` are extra transformers TrainerCallbacks.

    Under `accelerate launch` every process trains; the main one alone writes seqdistill's files (the output
    directory, metrics, cards, the merged model) while the others wait for it at a barrier."""
    out = Path(cfg.output_dir)
    procs = processes(cfg)
    # ---- everything that can fail is checked before the model loads (by every process: they fail alike) ----
    with procs.main_process_first():  # an embedded or .gguf student is converted once
        student = models.resolve(cfg.student)
    device, dtype = pick_precision(cfg)
    if cfg.release_freed_memory:
        release_freed_memory()
    tokenizer = models.load_tokenizer(student)
    check_context(cfg, student, warn=True)  # before the data is read: max_length must fit the student
    data = TrainingData.load(cfg, tokenizer)
    check_lora_targets(cfg, student)
    if not cfg.overwrite and OUTPUT.done(out, cfg):
        log.info("%s already holds this finished run; nothing to do", out)
        if procs.is_main_process:
            hub.push("sft", cfg)  # a push that failed before is tried again
        return SFTResult(json.loads((out / "metrics.json").read_text()))
    OUTPUT.check(out, cfg, cfg.overwrite)  # refuses a different run
    procs.wait_for_everyone()  # every process has read the directory before the main one changes it
    if procs.is_main_process:
        OUTPUT.prepare(out, cfg, cfg.overwrite)
    procs.wait_for_everyone()
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if checkpoints and not cfg.resume:
        raise ConfigError(f"{out} holds checkpoints of an unfinished run; pass --resume to continue it "
                          "or --overwrite to start over")

    # ---- train with TRL ----
    trainer = build_trainer(cfg, student, tokenizer, data, device, dtype, out, callbacks)
    cut = data.check_eos(trainer.train_dataset, tokenizer, cfg.max_length)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if cfg.resume and checkpoints else None)
    seconds = time.perf_counter() - start

    # ---- save the student (every process: ZeRO-3 and FSDP gather it), then the main one writes the rest ----
    if trainer.is_fsdp_enabled:  # checkpoints may stay sharded; the final model is gathered into one
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(out / "model"))
    metrics = {
        "train_loss": result.training_loss,
        "train_seconds": round(seconds, 1),
        "train_tokens": data.train_tokens(trainer.state.global_step, cfg, procs.num_processes),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # of the main process
        **peak_gpu_memory(device),
        "global_step": trainer.state.global_step,
        "processes": procs.num_processes,
        "device": device, "dtype": dtype, "packing": trainer.args.packing,
        "lengths": data.lengths, "end_of_turn": data.end_of_turn, "truncated_examples": cut,
        **({"mixture": data.mixture} if data.mixture else {}),
        "log_history": trainer.state.log_history,
    }
    metrics["train_tokens_per_second"] = round(metrics["train_tokens"] / seconds, 1)
    if procs.is_main_process:
        tokenizer.save_pretrained(out / "model")
        if cfg.merge:
            save_merged(cfg, student, dtype, tokenizer, out)
        store.write_text(out / "metrics.json", json.dumps(metrics, indent=2))
        card.write_sft_cards(cfg, data, metrics)
        hub.push("sft", cfg)
    procs.wait_for_everyone()  # no process leaves before the merged model and metrics are written
    return SFTResult(metrics, trainer)


def processes(cfg: SFTStageConfig):
    """accelerate's PartialState: the processes `accelerate launch` started (one in a plain run).

    Set up as the Trainer will set it up (CPU or GPU, `ddp_timeout`), so that the processes agree on who
    writes before the Trainer exists. Every process but the main one logs warnings only."""
    from datetime import timedelta

    import torch
    from accelerate import PartialState
    from transformers import TrainingArguments

    timeout = cfg.trl.get("ddp_timeout", TrainingArguments.__dataclass_fields__["ddp_timeout"].default)
    state = PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=timeout))
    if not state.is_main_process:
        import datasets
        import transformers

        logger = logging.getLogger("seqdistill")
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    return state


def peak_gpu_memory(device: str) -> dict:
    """The most GPU memory PyTorch held during the run (RSS says nothing of it)."""
    if device != "cuda":
        return {}
    import torch

    return {"peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}


def check(cfg: SFTStageConfig) -> None:
    """What this machine and the student refuse, found before any model loads (`seqdistill run` calls it before
    its first stage): the precision on this device, the LoRA targets and max_length against the student's context."""
    check_precision(cfg)
    check_lora_targets(cfg, cfg.student)
    check_context(cfg, cfg.student)


def check_precision(cfg: SFTStageConfig) -> bool:
    """Refuse a precision this device can't train in, without initialising CUDA (a vLLM engine may start in this
    process after the check); returns whether there is a GPU. bfloat16 on a GPU without it: `pick_precision`."""
    import torch

    cuda = torch.cuda.is_available()
    if cfg.method == "qlora":
        import importlib.util

        if not cuda or importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError("method qlora needs a CUDA GPU and `pip install bitsandbytes`; use method lora here")
    if cfg.dtype == "float16" and not cuda:
        raise ConfigError("dtype float16 training needs a GPU; use dtype float32 (or bfloat16) on CPU")
    return cuda


def release_freed_memory(threshold: int = 1 << 20) -> bool:
    """Fix glibc's mmap threshold, so blocks of `threshold` bytes or more are mapped on their own and unmapped when
    freed. By default glibc raises the threshold (up to 32 MB) each time such a block is freed, after which tensors
    of a few MB come from its heap and freed ones stay resident: peak RSS then counts memory torch no longer holds.
    False where the C library is not glibc (nothing changed)."""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    M_MMAP_THRESHOLD = -3  # malloc.h
    return bool(ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, threshold))


def pick_precision(cfg: SFTStageConfig) -> tuple[str, str]:
    import torch

    cuda = check_precision(cfg)
    if not cuda:  # auto: float32, measured faster than bf16 for training even on AVX512_BF16 CPUs (RESULTS.md)
        return "cpu", "float32" if cfg.dtype == "auto" else precision.cpu_dtype(cfg.dtype)
    if cfg.dtype == "auto":
        return "cuda", "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if cfg.dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise ConfigError("dtype bfloat16 asked but this GPU has no bfloat16 support; use dtype float16 or float32")
    return "cuda", cfg.dtype


def check_context(cfg: SFTStageConfig, student: str, warn: bool = False) -> dict:
    """max_length against the student's context (max_position_embeddings in its config.json alone, before any weights
    load). Returns the config overrides that stretch it to `context`, {} without one: YaRN RoPE scaling, the long-context
    recipe Qwen2.5 documents (rope_parameters: rope_type yarn, factor = context / original context), which
    transformers applies to Llama and Qwen2 and writes into the trained model's config.json."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(models.resolve(student)).get_text_config()
    except Exception as e:  # no config.json here, an unknown architecture, or no hub
        raise ConfigError(f"the config of student {cfg.student} can't be read here to check max_length against its "
                          f"context ({first_line(e)}); name a local model directory or a reachable hub id") from e
    window = getattr(config, "max_position_embeddings", None)
    if window is None:
        if cfg.context is not None:
            raise ConfigError(f"context {cfg.context}: student {cfg.student}'s config has no max_position_embeddings, so "
                              "its RoPE can't be stretched from it; remove context")
        return {}
    if cfg.context is None:
        if cfg.max_length > window:
            raise ConfigError(f"max_length {cfg.max_length} exceeds student {cfg.student}'s context of {window} tokens "
                              f"(max_position_embeddings); lower max_length to {window}, or set context: "
                              f"{cfg.max_length} to stretch its RoPE (YaRN) and train at that length")
        return {}
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if cfg.context <= window:
        raise ConfigError(f"context {cfg.context} does not exceed student {cfg.student}'s own {window} tokens; "
                          "remove context (there is nothing to stretch)")
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"student {cfg.student} already scales its RoPE ({rope.get('rope_type', rope)}); context stretches "
                          "plain RoPE only: remove context, or start from a model with plain RoPE")
    factor = cfg.context / window
    rope.update(rope_type="yarn", factor=factor, original_max_position_embeddings=window)
    if warn:
        log.warning("context %d: student %s's RoPE stretched %gx from %d tokens (YaRN; the trained model's config.json "
                    "gets max_position_embeddings %d and rope_parameters %s)", cfg.context, cfg.student, factor,
                    window, cfg.context, rope)
    return {"max_position_embeddings": cfg.context, "rope_parameters": rope}


def check_lora_targets(cfg: SFTStageConfig, student: str) -> None:
    """LoRA target modules must match some module: checked on an empty (meta) model built from the student's
    config.json alone, before loading weights."""
    if cfg.method == "full" or cfg.lora.target_modules == ["all-linear"]:
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = models.resolve(student)  # `run` passes it resolved already; `check` the reference (converted once)
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as e:  # no config.json here, an unknown architecture, or no hub
        raise ConfigError(f"lora.target_modules: the config of student {cfg.student} can't be read here to check them "
                          f"({first_line(e)}); name a local model directory or a reachable hub id") from e
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    names = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    missing = [t for t in cfg.lora.target_modules if t not in names]
    if missing:
        raise ConfigError(f"lora.target_modules {missing} match no module of {cfg.student}; "
                          f"its linear modules are: {', '.join(names)} (or use all-linear)")


def build_trainer(cfg: SFTStageConfig, student: str, tokenizer, data, device: str, dtype: str, out: Path,
                  callbacks=None):
    from trl import SFTConfig, SFTTrainer

    attn = cfg.attn_implementation
    model_kwargs = {"dtype": dtype, **({"attn_implementation": attn} if attn else {}), **check_context(cfg, student)}
    peft_config = None
    if cfg.method in ("lora", "qlora"):
        from peft import LoraConfig

        targets = cfg.lora.target_modules
        peft_config = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                 target_modules=targets[0] if targets == ["all-linear"] else targets,
                                 task_type="CAUSAL_LM")
    if cfg.method == "qlora":
        import torch
        from transformers import BitsAndBytesConfig

        model_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    teacher_kwargs = {}
    if cfg.kd.mode == "online":  # layer indices, length limit and eager attention, before any model loads
        from seqdistill.training.kd_trainer import prepare_online  # kd_trainer subclasses TRL's trainer: imported when kd is on

        teacher_kwargs = prepare_online(cfg, student, data.lengths["max"], model_kwargs)
    settings = trl_settings(cfg, out, device, dtype, data.end_of_turn, data.eval is not None, model_kwargs)
    trackers.join_group(cfg.report_to, cfg.run_name, "sft")
    args = SFTConfig(**settings, **cfg.trl)  # validate() has checked that the extras neither clash nor are unknown
    common = dict(model=student, args=args, train_dataset=data.train, eval_dataset=data.eval,
                  processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    if cfg.kd.mode == "none":
        return SFTTrainer(**common)
    from seqdistill.training.kd_trainer import KDTrainer  # kd_trainer subclasses TRL's trainer: imported when kd is on

    teacher = None
    if cfg.kd.mode == "online":
        from transformers import AutoModelForCausalLM

        teacher = AutoModelForCausalLM.from_pretrained(models.resolve(cfg.kd.teacher), dtype=dtype, **teacher_kwargs)
    return KDTrainer(**common, kd_config=cfg.kd, teacher_model=teacher, aligner=data.aligner)


def trl_settings(cfg: SFTStageConfig, out: Path, device: str = "cpu", dtype: str = "float32",
                 end_of_turn: str | None = None, has_eval: bool = False, model_kwargs: dict | None = None) -> dict:
    """The trl.SFTConfig keywords seqdistill sets from its own settings; `trl:` extras come on top of them."""
    attn = cfg.attn_implementation
    packing = cfg.packing if cfg.packing is not None else bool(attn and "flash" in attn) and cfg.kd.mode == "none"
    return dict(
        output_dir=str(out / "checkpoints"),  # TensorBoard logs land in checkpoints/runs/
        learning_rate=cfg.learning_rate, num_train_epochs=cfg.num_train_epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size, per_device_eval_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay, gradient_checkpointing=cfg.gradient_checkpointing,
        logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit, eval_strategy="steps" if has_eval else "no",
        eval_steps=(cfg.eval_steps or cfg.logging_steps * 4) if has_eval else None,
        seed=cfg.seed, bf16=dtype == "bfloat16", fp16=dtype == "float16", report_to=cfg.report_to,
        **({"project": trackers.trackio_project()} if "trackio" in cfg.report_to and "project" not in cfg.trl else {}),
        **({"run_name": trackers.hf_run_name(cfg.run_name, "sft")} if cfg.run_name and "run_name" not in cfg.trl else {}),
        max_length=cfg.max_length, packing=packing, padding_free=packing,
        completion_only_loss=cfg.assistant_only_loss, eos_token=end_of_turn,
        model_init_kwargs=model_kwargs or {}, use_cpu=device == "cpu",
    )


def check_trl_extras(cfg: SFTStageConfig) -> list[str]:
    """`trl:` extras must be trl.SFTConfig fields that seqdistill does not already set (TRL is imported only if any)."""
    if not cfg.trl:
        return []
    import dataclasses
    import difflib

    from trl import SFTConfig

    fields = [f.name for f in dataclasses.fields(SFTConfig) if f.init]
    owned = trl_settings(cfg, Path(cfg.output_dir))
    errors = []
    for key in cfg.trl:
        if key in owned:
            errors.append(f"trl.{key} is set by seqdistill from its own settings (dtype, max_length, packing, "
                          "learning_rate, ...); set it there")
        elif key not in fields:
            near = difflib.get_close_matches(str(key), fields, n=1)
            errors.append(f"trl.{key} is not a trl.SFTConfig setting" + (f" (did you mean trl.{near[0]}?)" if near else ""))
    if cfg.kd.mode != "none" and cfg.trl.get("truncation_mode", "keep_start") != "keep_start":
        errors.append(f"trl.truncation_mode {cfg.trl['truncation_mode']} cuts rows from the start, which moves every token "
                      "the teacher's distributions are laid on: leave it at keep_start with kd, or raise max_length")
    return errors


def save_merged(cfg: SFTStageConfig, student: str, dtype: str, tokenizer, out: Path) -> None:
    """OUTPUT_DIR/merged from what was saved in OUTPUT_DIR/model: base + adapter, merged with peft, never the
    training model (its parameters are sharded under ZeRO-3 or FSDP; a QLoRA base is 4-bit). Main process only."""
    from transformers import AutoModelForCausalLM

    if cfg.method == "full":
        model = AutoModelForCausalLM.from_pretrained(out / "model", dtype=dtype)
    else:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(student, dtype=dtype, **check_context(cfg, student))  # as trained
        model = PeftModel.from_pretrained(base, out / "model").merge_and_unload()
    model.save_pretrained(out / "merged")
    tokenizer.save_pretrained(out / "merged")
