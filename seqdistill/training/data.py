"""Training data for `sft`: a traces dataset turned into (prompt, completion) text pairs for TRL.

The prompt is the student's own chat template applied to every turn but the last, with the
generation prompt; the completion is the last assistant turn verbatim (think blocks included)
followed by the student's end-of-turn token. Rendering it this way, rather than the whole
conversation through the template, means a template that strips `<think>` blocks from assistant
turns (DeepSeek-R1's does) cannot silently drop the reasoning, and the student always learns to
stop: the end-of-turn token is the last completion token and is trained on. A completion opening
with what the generation prompt already ends with (current DeepSeek-R1-Distill templates end it with
"<think>\n") loses that opening, so the student never trains on `<think>` twice. With `thinking` off (or
mixed, for a seeded half of the rows) a row trains on the answer alone: the prompt ends with the empty think
block "<think>\n\n</think>\n\n" a hybrid template opens such answers with, masked from the loss.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from seqdistill import card, store
from seqdistill.engines import prompts
from seqdistill.config import ConfigError, first_line
from seqdistill.sources.problems import LOCAL_FORMATS, read_local, root_cause
from seqdistill.training import kd, xtok
from seqdistill import models
from seqdistill.engines import topk

log = logging.getLogger(__name__)
FALLBACK_TEMPLATE = "chat/plain"  # seqdistill/templates/chat/plain.jinja: for students with no chat template
SENTINEL = "SEQDISTILL-SENTINEL-4711"
THINKING = ("on", "off", "mixed")  # sft.thinking: train on the whole trace, on the answer alone, or half and half
EMPTY_THINK = "<think>\n\n</think>\n\n"  # how hybrid templates (Qwen3, enable_thinking false) open an answer without thinking


@dataclass
class TrainingData:
    train: object  # datasets.Dataset of prompt/completion strings
    eval: object | None
    end_of_turn: str
    lengths: dict
    source_stats: dict | None = None
    teacher: str | None = None
    mixture: list[dict] | None = None  # per source of `datasets`: path, split, rows, used, weight or fraction, share
    aligner: object | None = None  # seqdistill.training.xtok.Aligner when logit KD runs across tokenizers

    @property
    def n_train(self) -> int:
        return len(self.train)

    @classmethod
    def load(cls, cfg, tokenizer) -> "TrainingData":
        kwargs = cfg.chat_template_kwargs  # the student's chat-template switches, in every rendering below
        if cfg.datasets:  # a weighted mixture (plain SFT only: validate refuses kd with one)
            tables, mixture = load_mixture(cfg.datasets, cfg.dataset_split, cfg.seed)
            stats = None
        else:
            table, stats = load_table(cfg.dataset, cfg.dataset_split)
            tables, mixture = [(table, cfg.dataset)], None
        ensure_chat_template(tokenizer, cfg.chat_template)
        eot = end_of_turn(tokenizer, kwargs)
        # every teacher the rows name (a generate run with several teachers: each of them)
        teacher = ", ".join(sorted({name for t, _ in tables if "teacher" in t.column_names for name in set(t["teacher"])})) or None
        aligner = check_kd(cfg, tables[0][0], tokenizer, teacher) if cfg.kd.mode != "none" else None
        convert = (partial(to_kd_rows, aligner=aligner) if cfg.kd.mode == "offline" else
                   partial(to_online_rows, aligner=aligner) if aligner is not None else to_prompt_completion)
        pairs = mix(tables, tokenizer, eot, kwargs) if mixture else convert(tables[0][0], tokenizer, eot, cfg.dataset, kwargs)
        pairs = with_thinking(pairs, tokenizer, cfg.thinking, cfg.seed, "the datasets mixture" if mixture else cfg.dataset)
        train, evaluation = pairs, None
        if cfg.eval_dataset:
            eval_table, _ = load_table(cfg.eval_dataset, "train" if Path(cfg.eval_dataset).is_file() else cfg.dataset_split)
            evaluation = convert(eval_table, tokenizer, eot, cfg.eval_dataset, kwargs)
            evaluation = with_thinking(evaluation, tokenizer, cfg.thinking, cfg.seed, cfg.eval_dataset)
        elif cfg.eval_fraction > 0:
            train, evaluation = split_by_problem(pairs, cfg.eval_fraction, cfg.seed)
        lengths = check_lengths(token_lengths(train, tokenizer), cfg.max_length, cfg.max_truncated_fraction)
        return cls(train, evaluation, eot, lengths, stats, teacher, mixture, aligner)

    def check_eos(self, tokenized, tokenizer, max_length: int) -> int:
        """Every example TRL will train on ends with the end-of-turn token, not masked out of the loss.

        Returns how many were cut at max_length (those lose their ending; check_lengths bounds them).
        """
        eot_id = tokenizer.convert_tokens_to_ids(self.end_of_turn)
        bad, cut = [], 0
        for i, row in enumerate(tokenized):
            ids = row["input_ids"]
            labels = row["labels"] if "labels" in row else ids
            for start, end in _segments(row):
                if ids[end] == eot_id and labels[end] != -100:
                    continue
                if end - start + 1 >= max_length:
                    cut += 1
                    continue
                bad.append(i)
                break
        if bad:
            raise ConfigError(f"{len(bad)} training examples (first: #{bad[0]}) do not end with an unmasked "
                              f"end-of-turn token {self.end_of_turn!r}; the student would not learn to stop")
        return cut

    def train_tokens(self, steps: int, cfg, processes: int = 1) -> int:
        """Tokens the run trained on (all processes together): the steps taken, in epochs, times tokens per epoch."""
        per_epoch = self.lengths["tokens_per_epoch"]
        batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * processes
        steps_per_epoch = max(1, -(-self.n_train // batch))
        return int(per_epoch * steps / steps_per_epoch)


def _segments(row) -> list[tuple[int, int]]:
    """(first, last) token index of each example in a row; packed rows hold several."""
    lengths = row.get("seq_lengths") or [len(row["input_ids"])]
    out, pos = [], 0
    for n in lengths:
        out.append((pos, pos + n - 1))
        pos += n
    return out


def load_table(source: str, split: str):
    """A dataset from a generate output dir, a local file, or the hub; plus the generate stats if any."""
    import datasets

    path = Path(source).expanduser()
    if (path / "data" / f"{split}.parquet").is_file():  # a seqdistill generate output
        stats_file, data = path / store.STATS_FILE, path / "data" / f"{split}.parquet"
        rebuild = "; rerun `seqdistill generate` with the same settings (it rebuilds the dataset from its sampled chunks)"
        try:
            stats = json.loads(stats_file.read_text()) if stats_file.is_file() else None
            table = store.read_parquet([data])
        except (ValueError, OSError) as e:  # a torn copy: ArrowInvalid and JSONDecodeError are ValueErrors
            raise ConfigError(f"{stats_file if isinstance(e, json.JSONDecodeError) else data} is unreadable "
                              f"({root_cause(e)}){rebuild}") from e
        if len(table) == 0:
            raise nothing_kept(source, stats)
        return table, stats
    if path.suffix in LOCAL_FORMATS or source.startswith((".", "/", "~")):
        if not path.exists():
            raise ConfigError(f"dataset {source} does not exist; point at a generate output_dir or a "
                              f"{'/'.join(LOCAL_FORMATS)} file")
        if path.is_dir():
            raise ConfigError(f"dataset directory {source} has no data/{split}.parquet; is it a generate output_dir?")
        return read_local(path, "dataset"), None
    try:
        table = datasets.load_dataset(source, split=split)
    except Exception as e:
        raise ConfigError(f"could not load dataset {source!r} split {split!r}: {first_line(e)}") from e
    if len(table) == 0:
        raise nothing_kept(source, None)
    return table, None


def mixture_counts(sizes: list[int], weights: list[float | None], fractions: list[float | None]) -> list[int]:
    """Rows to draw from each source. Weights: each source's share of the mixture, and the mixture as large as
    it can be without repeating a row (the scarcest source, for its weight, gives all its rows). Otherwise each
    source's fraction of its own rows (all of them without one)."""
    if all(w is not None for w in weights):
        shares = [w / sum(weights) for w in weights]
        total = min(n / share for n, share in zip(sizes, shares) if share > 0)
        return [min(n, round(total * share)) for n, share in zip(sizes, shares)]
    return [round(n * (1.0 if f is None else f)) for n, f in zip(sizes, fractions)]


def load_mixture(sources, split: str, seed: int) -> tuple[list[tuple[object, str]], list[dict]]:
    """Each source's sampled rows (seeded: the same seed draws the same rows) and what was drawn from where."""
    import random

    tables = [load_table(s.path, s.split or split)[0] for s in sources]
    counts = mixture_counts([len(t) for t in tables], [s.weight for s in sources], [s.fraction for s in sources])
    picked, record = [], []
    for i, (source, table, count) in enumerate(zip(sources, tables, counts)):
        rows = sorted(random.Random(f"mixture:{seed}:{i}").sample(range(len(table)), count))
        picked.append((table.select(rows), source.path))
        record.append({"path": source.path, "split": source.split or split, "rows": len(table), "used": count,
                       **({"weight": source.weight} if source.weight is not None else
                          {"fraction": source.fraction if source.fraction is not None else 1.0}),
                       "share": round(count / max(1, sum(counts)), 4)})
    if not sum(counts):
        sizes = ", ".join(f"{r['path']}: {r['rows']} rows" for r in record)
        raise ConfigError(f"the datasets mixture draws no rows ({sizes}); raise the weights or fractions")
    log.info("datasets mixture (seed %d): %s", seed, "; ".join(f"{r['path']} {r['used']} of {r['rows']} rows "
                                                               f"({r['share']:.1%})" for r in record))
    return picked, record


def mix(tables: list[tuple[object, str]], tokenizer, eot: str, template_kwargs: dict | None = None):
    """The sampled rows of every source as one prompt/completion dataset; a row without a problem_id gets its
    source and row number, so eval_fraction holds out rows of different sources apart."""
    import datasets

    rows = []
    for table, path in tables:
        if not len(table):
            continue
        pairs = to_prompt_completion(table, tokenizer, eot, path, template_kwargs)
        ids = pairs["problem_id"] if "problem_id" in pairs.column_names else [None] * len(pairs)
        rows += [{"prompt": p, "completion": c, "problem_id": pid if pid is not None else f"{path}#{j}"}
                 for j, (p, c, pid) in enumerate(zip(pairs["prompt"], pairs["completion"], ids))]
    return datasets.Dataset.from_list(rows)


def nothing_kept(source: str, stats: dict | None) -> ConfigError:
    """An empty training set, said with the generate funnel's biggest drop when there is one."""
    if not stats or not stats.get("drop_reasons"):
        return ConfigError(f"dataset {source} has no examples (if it is a generate output, its funnel kept none: "
                           "see its README.md); generate more problems or samples, or relax the filters")
    reason, count = max(stats["drop_reasons"].items(), key=lambda item: item[1])
    funnel = " -> ".join(f"{stage} {n}" for stage, n in stats.get("funnel", {}).items())
    return ConfigError(f"dataset {source} kept no trace (biggest drop: {reason}, {count} of {stats.get('samples', '?')} "
                       f"samples; funnel {funnel}); see its README.md, then relax that filter, sample more "
                       "(sampling.n, problems.num_problems) or pick a stronger teacher")


def ensure_chat_template(tokenizer, template: str | None) -> None:
    if template is None and getattr(tokenizer, "chat_template", None):
        return
    path = prompts.template_path(template or FALLBACK_TEMPLATE)
    if template is None:
        log.warning("the student has no chat template; using seqdistill's %s (saved with the model)", path)
    tokenizer.chat_template = path.read_text()


def end_of_turn(tokenizer, template_kwargs: dict | None = None) -> str:
    """The special token the chat template closes an assistant turn with (<|im_end|>, <|eot_id|>, ...)."""
    text = prompts.template_text(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": SENTINEL}],
                                 False, template_kwargs)
    suffix = text.split(SENTINEL, 1)[1] if SENTINEL in text else ""
    special = set(tokenizer.all_special_tokens) | {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    for token_id in tokenizer(suffix, add_special_tokens=False)["input_ids"]:
        token = tokenizer.convert_ids_to_tokens(token_id)
        if token in special:
            return token
    if tokenizer.eos_token is None:
        raise ConfigError("the student's tokenizer has no end-of-turn or EOS token; it cannot learn to stop")
    return tokenizer.eos_token


def strips_think(tokenizer, template_kwargs: dict | None = None) -> bool:
    text = prompts.template_text(
        tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>\nr\n</think>\n" + SENTINEL}],
        False, template_kwargs)
    return "<think>\nr\n</think>" not in text


def to_prompt_completion(table, tokenizer, eot: str, source: str, template_kwargs: dict | None = None):
    """(prompt, completion) strings from a `messages` or prompt/completion dataset; `template_kwargs` are
    the student's chat-template switches (sft's chat_template_kwargs)."""
    import datasets

    columns = table.column_names
    if len(table) == 0:
        raise ConfigError(f"dataset {source} has no examples (if it is a generate output, its funnel kept none: "
                          "see its README.md); generate more problems or samples, or relax the filters")
    if "messages" in columns:
        conversations = table["messages"]
    elif "prompt" in columns and "completion" in columns:
        if isinstance(table[0]["prompt"], str):  # standard text prompt/completion: used as is
            rows = [{"prompt": p, "completion": c if c.endswith(eot) else c + eot}
                    for p, c in zip(table["prompt"], table["completion"])]
            return datasets.Dataset.from_list(rows)
        conversations = [p + c for p, c in zip(table["prompt"], table["completion"])]
    else:
        raise ConfigError(f"dataset {source} has no `messages` column (nor prompt/completion); it has: "
                          f"{', '.join(columns)}")
    if any("<think>" in m[-1]["content"] for m in conversations[:50]) and strips_think(tokenizer, template_kwargs):
        log.warning("the student's chat template strips <think> blocks from assistant turns; seqdistill trains on the "
                    "full trace anyway (prompt = template with generation prompt, completion = trace + %s)", eot)
    rows = []
    ids = table["problem_id"] if "problem_id" in columns else [None] * len(table)
    prefills = table["prefill"] if "prefill" in columns else [""] * len(table)
    for msgs, pid, prefill in zip(conversations, ids, prefills):
        if not msgs or msgs[-1]["role"] != "assistant":
            raise ConfigError(f"dataset {source}: every conversation must end with an assistant turn")
        prompt, completion = student_prompt(tokenizer, msgs, msgs[-1]["content"], prefill or prompts.THINK_OPEN,
                                            template_kwargs)
        rows.append({"prompt": prompt, "completion": completion + eot, "problem_id": pid})
    return datasets.Dataset.from_list(rows)


def student_prompt(tokenizer, msgs: list[dict], text: str, prefill: str,
                   template_kwargs: dict | None = None) -> tuple[str, str]:
    """The student's prompt (its chat template on every turn but the last, with the generation prompt) and
    the text that follows it: `text` less its opening `prefill` when the prompt already ends with it."""
    prompt = prompts.template_text(tokenizer, msgs[:-1], True, template_kwargs)
    if text.startswith(prefill):
        text = prompts.unopened(tokenizer, prompt, prefill) + text[len(prefill):]
    return prompt, text


def answer_only(prompt: str, completion: str) -> tuple[str, str] | None:
    """A (prompt, completion) pair without its reasoning: the completion is what follows the trace's last </think>,
    and the prompt ends with the empty think block, so that the block is masked from the loss with the prompt
    (ms-swift's ignore_empty_think). None when the trace opens a think block it never closes: it has no answer."""
    opened = prompt.endswith(prompts.THINK_OPEN)  # R1-Distill templates open the think block themselves
    if prompt.endswith(EMPTY_THINK):  # the template opens answers without thinking itself (enable_thinking false)
        head = prompt
    elif opened:  # close it empty
        head = prompt + EMPTY_THINK[len(prompts.THINK_OPEN):]
    else:
        head = prompt + EMPTY_THINK
    _, closed, answer = completion.rpartition("</think>")
    if closed:
        return head, answer.lstrip()
    if opened or "<think>" in completion:
        return None
    return head, completion  # a trace without reasoning: already an answer


def on_token_boundary(tokenizer, prompt: str, completion: str) -> tuple[str, str]:
    """An answer-only pair split where TRL can split it: TRL masks the tokens of the prompt alone, so they must be
    the start of the tokens of prompt + completion. Byte-level BPE without Qwen's newline rule (SmolLM2's) makes
    "\\n\\n" one token at the end of a text but two before a word; then the block's last newlines, as few as
    needed, move to the completion (and are trained on). Only the block and the answer's start are tokenized."""
    tail = EMPTY_THINK  # answer_only ends the prompt with it; "<think>" follows a newline, so it starts a token
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    whole = ids(tail + completion[:32])
    for cut in range(len(tail) - len(tail.rstrip("\n")) + 1):
        head = ids(tail[: len(tail) - cut])
        if whole[: len(head)] == head:
            return prompt[: len(prompt) - cut], tail[len(tail) - cut :] + completion
    return prompt, completion


def with_thinking(pairs, tokenizer, mode: str, seed: int, source: str):
    """`sft.thinking` on prompt/completion pairs: on leaves them; off makes every row answer-only (answer_only);
    mixed a seeded half of them (the same seed picks the same rows), so a hybrid student learns both modes."""
    if mode == "on":
        return pairs
    import random

    import datasets

    rows = pairs.to_list()
    n = len(rows)
    picked = set(range(n) if mode == "off" else random.Random(f"thinking:{seed}:{source}").sample(range(n), n // 2))
    unclosed = []
    for i in sorted(picked):
        bare = answer_only(rows[i]["prompt"], rows[i]["completion"])
        if bare is None:
            unclosed.append(i)
        else:
            rows[i]["prompt"], rows[i]["completion"] = on_token_boundary(tokenizer, *bare)
    if unclosed:
        raise ConfigError(f"thinking {mode}: {len(unclosed)} traces of {source} (first: #{unclosed[0]}) open a think "
                          "block they never close, so they have no answer to train on alone; drop them (generate does: "
                          "truncated, unbalanced_think) or set thinking: on")
    if any(r["prompt"].endswith(EMPTY_THINK) for i, r in enumerate(rows) if i not in picked):
        raise ConfigError("thinking mixed: the student's chat template already ends the prompt with an empty think "
                          "block (chat_template_kwargs such as {enable_thinking: false}), so the thinking rows would "
                          "follow it; remove that switch, or set thinking: off")
    if not any("</think>" in c for c in pairs["completion"]):
        log.warning("thinking %s: no trace of %s has a think block; its rows only gain an empty one", mode, source)
    log.info("thinking %s: %d of %d rows of %s train on the answer alone (after %r, masked with the prompt)",
             mode, len(picked), n, source, EMPTY_THINK)
    return datasets.Dataset.from_list(rows)


def check_kd(cfg, table, tokenizer, teacher: str | None):
    """Logit KD needs teacher log-probs (offline) or a teacher (online), and the teacher's tokenizer.

    Returns a seqdistill.training.xtok.Aligner when KD runs across tokenizers (kd.cross_tokenizer), else None."""

    if cfg.kd.mode == "offline":
        if "teacher_topk" not in table.column_names or not all(table["teacher_topk"]):
            raise ConfigError(f"kd.mode offline but dataset {cfg.dataset} has no teacher log-probs (column teacher_topk); "
                              "generate it with teacher_logprobs: true, add them with `seqdistill score`, "
                              "or use kd.mode online with kd.teacher")
        if "messages" not in table.column_names:
            raise ConfigError(f"kd.mode offline needs a `messages` dataset; {cfg.dataset} has {', '.join(table.column_names)}")
    name = cfg.kd.teacher if cfg.kd.mode == "online" else teacher
    texts = [m[-1]["content"] for m in table["messages"][:cfg.kd.check_samples]] if "messages" in table.column_names else []
    if name is None:
        kd.cross_tokenizer(cfg.kd, tokenizer, None, texts, cfg.student, None)  # uld refuses: it decodes the teacher's ids
        log.warning("dataset %s does not name its teacher; tokenizer agreement not checked", cfg.dataset)
        cross = False
    else:
        try:
            teacher_tokenizer = models.load_tokenizer(models.resolve(name, weights=False))  # only its tokenizer is read
        except ConfigError as e:
            raise ConfigError(f"teacher {name} (whose tokenizer logit KD checks against the student's, and decodes "
                              f"its stored token ids with): {e}") from e
        cross = kd.cross_tokenizer(cfg.kd, tokenizer, teacher_tokenizer,
                                   texts + ["The answer is 12,345.67 <think>x</think>"], cfg.student, name)
    if cross:
        aligner = xtok.Aligner(tokenizer, teacher_tokenizer)
        n = cfg.kd.check_samples
        problems = []
        if cfg.kd.mode == "offline":  # the stored ids must be the teacher's
            problems = aligner.check([topk.decode(b)[2] for b in table["teacher_topk"][:n]], texts, name)
        if cfg.kd.mode == "online" and "messages" not in table.column_names:
            problems.append(f"kd.mode online across tokenizers renders each conversation with the teacher's chat template "
                            f"too, so it needs a `messages` dataset; {cfg.dataset} has {', '.join(table.column_names)}")
        if cfg.kd.mode == "online" and cfg.thinking != "on":
            problems.append(f"thinking {cfg.thinking} can't be combined with kd.mode online across tokenizers (the "
                            "teacher's prompt would not end with the student's empty think block): set thinking: on")
        if problems:
            raise ConfigError(problems)
        loss = {"hybrid": "GOLD's hybrid (kd.divergence on the top-k tokens both vocabularies share, ULD on the rest)",
                "uld": "ULD"}[cfg.kd.cross_loss()]
        log.info("kd.cross_tokenizer %s: %s on the tokens of student %s aligned with teacher %s's (seqdistill.training.xtok); "
                 "%d of the teacher's %d token ids have a student token of the same bytes", cfg.kd.cross_tokenizer, loss,
                 cfg.student, name, int((aligner.to_student >= 0).sum()), len(aligner.to_student))
        return aligner
    if cfg.kd.mode == "offline":
        n_vocab = models.vocab_size(models.resolve(cfg.student))
        top = max(int(topk.decode(b)[0].max()) for b in table["teacher_topk"][:cfg.kd.check_samples])
        if top >= n_vocab:
            raise ConfigError(f"teacher log-probs hold token id {top}, outside student {cfg.student}'s vocabulary "
                              f"({n_vocab} tokens); name the teacher in the dataset (column `teacher`) so "
                              "kd.cross_tokenizer can decode its ids, or pick a student of the teacher's family")
    return None


def to_kd_rows(table, tokenizer, eot: str, source: str, template_kwargs: dict | None = None, aligner=None):
    """Tokenized rows whose completion is the teacher's own sampled token ids, with their top-k log-probs.

    input_ids = student prompt + prefill (unless the prompt ends with it) + teacher ids (+ end-of-turn when
    the teacher stopped otherwise);
    kd_offset = where the teacher's ids start, so the collator lays the log-probs on exactly those tokens.
    Across tokenizers (aligner, seqdistill.training.xtok) the completion is the teacher's text in the student's tokens
    + end-of-turn, and kd_positions gives each teacher token's student position (-1: not aligned).
    """
    import datasets

    eot_id = tokenizer.convert_tokens_to_ids(eot)
    rows = []
    prefills = table["prefill"] if "prefill" in table.column_names else [""] * len(table)
    for msgs, blob, prefill, pid in zip(table["messages"], table["teacher_topk"], prefills,
                                        table["problem_id"] if "problem_id" in table.column_names else [None] * len(table)):
        prompt, prefill = student_prompt(tokenizer, msgs, prefill, prefill, template_kwargs)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        head = tokenizer(prompt + prefill, add_special_tokens=False)["input_ids"]
        sampled = topk.decode(blob)[2].tolist()
        row = {"teacher_topk": blob, "kd_offset": len(head), "problem_id": pid}
        if aligner is None:
            ids = head + sampled + ([] if sampled and sampled[-1] == eot_id else [eot_id])
        else:
            ids, row["kd_positions"] = aligner.row(head, sampled, eot_id)
        rows.append({"input_ids": ids, "completion_mask": [0] * len(prompt_ids) + [1] * (len(ids) - len(prompt_ids)), **row})
    if not rows:
        raise ConfigError(f"dataset {source} has no examples")
    if aligner is not None:
        positions = [p for row in rows for p in row["kd_positions"]]
        log.info("kd across tokenizers: %d of the teacher's %d tokens align with a student token; the rest "
                 "(inside groups the two tokenizers split differently) get no KD term", sum(p >= 0 for p in positions), len(positions))
    return datasets.Dataset.from_list(rows)


def to_online_rows(table, tokenizer, eot: str, source: str, template_kwargs: dict | None = None, aligner=None):
    """Online KD across tokenizers: each conversation in the student's tokens (input_ids, as TRL takes them) and in
    the teacher's (teacher_input_ids: its own chat template, its tokens of the completion, its end of turn);
    teacher_offset = where its completion starts, kd_positions = per teacher completion token the student position
    it is aligned with (-1: none; seqdistill.training.xtok), as offline rows have them for the stored ids."""
    import datasets

    if "messages" not in table.column_names:
        raise ConfigError(f"dataset {source}: kd.mode online across tokenizers needs a `messages` column")
    teacher = aligner.teacher
    if not teacher.chat_template:
        raise ConfigError(f"dataset {source}: kd.mode online across tokenizers renders each conversation with the teacher's "
                          "chat template, and kd.teacher's tokenizer has none: pick a chat (instruct) teacher")
    ids = lambda tok, text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    eot_id = tokenizer.convert_tokens_to_ids(eot)
    teacher_eot = teacher.convert_tokens_to_ids(end_of_turn(teacher))
    prefills = table["prefill"] if "prefill" in table.column_names else [""] * len(table)
    problem_ids = table["problem_id"] if "problem_id" in table.column_names else [None] * len(table)
    rows = []
    for msgs, prefill, pid in zip(table["messages"], prefills, problem_ids):
        content, prefill = msgs[-1]["content"], prefill or prompts.THINK_OPEN
        prompt, text = student_prompt(tokenizer, msgs, content, prefill, template_kwargs)
        t_prompt, t_text = student_prompt(teacher, msgs, content, prefill)
        if not (text.endswith(t_text) or t_text.endswith(text)):
            raise ConfigError(f"dataset {source}: the student's and the teacher's chat templates open the answer "
                              f"differently ({text[:20]!r} vs {t_text[:20]!r}), so their completions are not one text")
        head, body = ids(tokenizer, prompt), ids(tokenizer, text)
        t_head, t_body = ids(teacher, t_prompt), ids(teacher, t_text)
        rows.append({"input_ids": head + body + [eot_id], "completion_mask": [0] * len(head) + [1] * (len(body) + 1),
                     "teacher_input_ids": t_head + t_body + [teacher_eot], "teacher_offset": len(t_head),
                     "kd_positions": aligner.positions(t_body, t_text, body, text, len(head)), "problem_id": pid})
    if not rows:
        raise ConfigError(f"dataset {source} has no examples")
    return datasets.Dataset.from_list(rows)


def split_by_problem(pairs, fraction: float, seed: int):
    """Hold out whole problems (all samples of a problem on one side), so eval loss isn't on seen problems."""
    import random

    has_ids = "problem_id" in pairs.column_names and pairs[0]["problem_id"] is not None
    keys = pairs["problem_id"] if has_ids else list(range(len(pairs)))
    problems = sorted(set(keys))
    held = set(random.Random(seed).sample(problems, max(1, int(len(problems) * fraction))))
    train = pairs.select([i for i, k in enumerate(keys) if k not in held])
    evaluation = pairs.select([i for i, k in enumerate(keys) if k in held])
    return train, evaluation


def token_lengths(rows, tokenizer) -> list[int]:
    if "input_ids" in rows.column_names:
        return [len(ids) for ids in rows["input_ids"]]
    texts = [p + c for p, c in zip(rows["prompt"], rows["completion"])]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def check_lengths(lengths: list[int], max_length: int, max_fraction: float) -> dict:
    """Token-length quantiles; refuse when more than max_fraction of examples would be cut at max_length."""
    over = sum(n > max_length for n in lengths)
    report = {**card.quantiles(lengths), "truncated": over, "tokens_per_epoch": sum(min(n, max_length) for n in lengths)}
    log.info("example lengths (tokens): %s", report)
    if over:  # TRL keeps each row's first max_length tokens: these lose their end and the end-of-turn token
        log.warning("%d of %d training examples are longer than max_length=%d tokens and are cut to it (TRL keeps "
                    "their start; they lose the end-of-turn token); metrics.json: lengths.truncated", over, len(lengths),
                    max_length)
    if over / len(lengths) > max_fraction:
        raise ConfigError(
            f"{over} of {len(lengths)} examples ({over / len(lengths):.1%}) are longer than max_length={max_length} "
            f"tokens (p99 {report['p99']}, max {report['max']}) and would be truncated; raise max_length, "
            f"or allow it with max_truncated_fraction"
        )
    return report
