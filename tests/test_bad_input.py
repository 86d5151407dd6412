"""What a user can get wrong, through the real entry point (`seqdistill.cli.main`, in process): every case
exits 2 with exactly one `error:` line that names the problem, shows no traceback, writes nothing, and is
found before any engine starts or model loads (both are tripwires here, so none of these can be slow).

Cases that can only be found with a model loaded are not here; see NEEDS_A_MODEL at the end.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml

from seqdistill import cli

TINY = ["problems.num_problems=3", "sampling.n=1", "sampling.max_tokens=8"]


class Ctx:
    """Inputs of one case, built under `root` on demand."""

    def __init__(self, root: Path, model: str):
        self.root, self.model_dir = root, model
        self.out = root / "out"

    def file(self, name: str, text: str | bytes) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
        return str(path)

    def problems(self) -> str:
        return self.file("problems.jsonl", "\n".join(json.dumps({"question": f"What is {i} plus {i}?", "answer": str(2 * i)})
                                                     for i in range(1, 4)) + "\n")

    def traces(self) -> str:
        rows = [{"messages": [{"role": "user", "content": f"What is {i}+{i}?"},
                              {"role": "assistant", "content": f"{i}+{i}={2 * i}. The answer is {2 * i}."}],
                 "problem_id": f"p{i}"} for i in range(4)]
        return self.file("traces.jsonl", "\n".join(map(json.dumps, rows)) + "\n")

    def yaml(self, name: str, data) -> str:
        return self.file(name, yaml.safe_dump(data))

    def without_weights(self) -> str:
        """A model directory with config and tokenizer but no weight files."""
        path = self.root / "no-weights"
        path.mkdir(exist_ok=True)
        for f in Path(self.model_dir).iterdir():
            if f.is_file() and not f.name.endswith((".safetensors", ".bin", ".gguf")) and "index" not in f.name:
                shutil.copy(f, path / f.name)
        return str(path)

    def empty_generate(self, name: str = "gen-empty") -> str:
        """A finished generate output whose filters kept no trace."""
        import datasets

        from seqdistill import generate

        path = self.root / name
        (path / "data").mkdir(parents=True)
        features = generate.sample_features()
        empty = datasets.Dataset.from_dict({k: [] for k in features}, features=features)
        for split in ("train", "dropped"):
            empty.to_parquet(str(path / "data" / f"{split}.parquet"))
        funnel = {"generated": 24, "finished": 20, "formatted": 17, "correct": 0, "deduplicated": 0, "kept": 0}
        (path / "stats.json").write_text(json.dumps({"funnel": funnel, "samples": 24,
                                                     "drop_reasons": {"wrong_answer": 17, "truncated": 4, "no_answer": 3}}))
        return str(path)

    def pipeline(self, data: dict, name: str = "pipe.yaml") -> str:
        return self.yaml(name, {"run_dir": str(self.out), **data})


def gen(c: Ctx, *sets: str) -> list[str]:
    return ["generate", "--set", f"output_dir={c.out}", *TINY, *sets]


def source(c: Ctx, name: str, text: str | bytes) -> str:
    return f"problems.source={c.file(name, text)}"


def sft(c: Ctx, *sets: str, dataset: str | None = None) -> list[str]:
    return ["sft", "--set", f"output_dir={c.out}", f"dataset={dataset or c.traces()}", "max_steps=1", *sets]


def score(c: Ctx, *sets: str) -> list[str]:
    return ["score", "--set", f"output_dir={c.out}", f"dataset={c.traces()}", *sets]


def ev(c: Ctx, *sets: str) -> list[str]:
    return ["eval", "--set", f"output_dir={c.out}", "benchmarks=[{name: embedded-heldout, num_problems: 2}]",
            "sampling.n=1", "sampling.max_tokens=8", *sets]


GEN_STAGE = {"problems": {"num_problems": 3}, "sampling": {"n": 1, "max_tokens": 8}}


def run(c: Ctx, data: dict, *extra: str) -> list[str]:
    return ["run", c.pipeline(data), *extra]


def foreign(c: Ctx) -> None:
    """The user's own files where output_dir points."""
    c.out.mkdir()
    (c.out / "README.md").write_text("my notes")
    (c.out / "stats.json").write_text("{}")


def unknown_architecture(c: Ctx) -> str:
    """A model directory whose config.json names an architecture transformers does not know."""
    c.file("odd-model/model.safetensors", b"")
    return str(Path(c.file("odd-model/config.json", '{"model_type": "no-such-architecture"}')).parent)


def another_run(c: Ctx) -> None:
    from seqdistill import config as configlib
    from seqdistill.generate import GenerateConfig

    cfg = configlib.load(GenerateConfig, None, [f"output_dir={c.out}", *TINY, "sampling.n=2"])
    configlib.save(cfg, c.out / "seqdistill_config.yaml")


def empty_generate_stage(c: Ctx) -> None:
    """A pipeline (pipe.yaml) whose generate stage is done (same config) and kept nothing."""
    from seqdistill import config as configlib
    from seqdistill import pipeline

    path = c.pipeline({"generate": GEN_STAGE, "sft": {"max_steps": 1}})
    cfg = pipeline.load(path, [])
    c.empty_generate(str(Path(cfg.generate.output_dir).relative_to(c.root)))
    configlib.save(cfg.generate, Path(cfg.generate.output_dir) / "seqdistill_config.yaml")


def torn_generate(c: Ctx, whole: bool = False) -> str:
    """A generate output whose data/train.parquet was cut short (a bad copy, a full disk), or is whole."""
    import datasets

    table = datasets.Dataset.from_list([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}])
    path = c.root / "gen" / "data" / "train.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(str(path))
    if not whole:
        path.write_bytes(path.read_bytes()[:60])
    return str(c.root / "gen")


def adapter(c: Ctx, text: str) -> str:
    c.file("adapter/adapter_config.json", text)
    return str(c.root / "adapter")


@dataclass
class Case:
    id: str
    argv: Callable[[Ctx], list[str]]
    says: str  # what the error line must contain
    setup: Callable[[Ctx], None] | None = None  # files present before the command (kept as they were)


CASES = [
    # ---- command line and config files, every command ----
    Case("unknown-key", lambda c: gen(c, "sampling.temprature=1"), "unknown setting sampling.temprature (did you mean sampling.temperature?)"),
    Case("unknown-section", lambda c: gen(c, "samplng.n=1"), "unknown setting samplng"),
    Case("wrong-type-int", lambda c: gen(c, "sampling.n=abc"), "sampling.n must be an integer"),
    Case("wrong-type-bool", lambda c: gen(c, "overwrite=maybe"), "overwrite must be true or false"),
    Case("section-not-mapping", lambda c: gen(c, "sampling=5"), "sampling must be a mapping"),
    Case("bad-override", lambda c: ["generate", "--set", "sampling.n"], "must look like key.sub=value"),
    Case("stray-argument", lambda c: ["generate", "stray"], "unexpected argument 'stray'"),
    Case("config-missing", lambda c: ["generate", "--config", str(c.root / "nope.yaml")], "does not exist"),
    Case("config-empty", lambda c: ["generate", "--config", c.file("empty.yaml", "")], "seqdistill config generate"),
    Case("config-only-comments", lambda c: ["sft", "--config", c.file("c.yaml", "# nothing\n")], "seqdistill config sft"),
    Case("config-not-yaml", lambda c: ["generate", "--config", c.file("bad.yaml", "sampling: [1,\n")], "is not valid YAML"),
    Case("config-a-list", lambda c: ["generate", "--config", c.file("list.yaml", "- 1\n- 2\n")], "must hold a mapping"),
    Case("config-stage-unknown", lambda c: ["config", "generat"], "invalid choice"),
    Case("command-unknown", lambda c: ["genrate"], "invalid choice"),
    # ---- sampling, by vLLM's own rules ----
    Case("n-zero", lambda c: gen(c, "sampling.n=0"), "sampling.n must be at least 1"),
    Case("top-k-negative", lambda c: gen(c, "sampling.top_k=-5"), "sampling.top_k must be 0 or -1 (off) or >= 1"),
    Case("top-p-zero", lambda c: gen(c, "sampling.top_p=0"), "sampling.top_p must be in (0, 1]"),
    Case("top-p-over-one", lambda c: gen(c, "sampling.top_p=1.5"), "sampling.top_p must be in (0, 1]"),
    Case("min-p-over-one", lambda c: gen(c, "sampling.min_p=2"), "sampling.min_p must be in [0, 1]"),
    Case("temperature-negative", lambda c: gen(c, "sampling.temperature=-1"), "sampling.temperature must be"),
    Case("temperature-over-two", lambda c: gen(c, "sampling.temperature=3"), "sampling.temperature must be a finite number in [0, 2]"),
    Case("temperature-nan", lambda c: gen(c, "sampling.temperature=.nan"), "sampling.temperature must be a finite number in [0, 2]"),
    Case("greedy-with-n", lambda c: gen(c, "sampling.temperature=0", "sampling.n=4"), "temperature 0 is greedy"),
    Case("max-tokens-zero", lambda c: gen(c, "sampling.max_tokens=0"), "sampling.max_tokens must be at least 1"),
    Case("repetition-penalty-zero", lambda c: gen(c, "sampling.repetition_penalty=0"), "sampling.repetition_penalty must be a finite number > 0"),
    Case("repetition-penalty-inf", lambda c: gen(c, "sampling.repetition_penalty=.inf"), "sampling.repetition_penalty must be a finite number > 0"),
    Case("stop-empty-string", lambda c: gen(c, "sampling.stop=['']"), "sampling.stop cannot hold an empty string"),
    Case("n-over-vllm-limit", lambda c: gen(c, "sampling.n=20000"), "sampling.n must be at most 16384"),
    Case("logprobs-k-zero", lambda c: gen(c, "teacher_logprobs=true", "logprobs_k=0"), "logprobs_k must be in [1"),
    Case("logprobs-k-over-max", lambda c: gen(c, "teacher_logprobs=true", "logprobs_k=30", "engine.extra={max_logprobs: 20}"),
         "logprobs_k must be in [1, engine max_logprobs=20]"),
    Case("context-too-short", lambda c: gen(c, "sampling.max_tokens=100000"), "exceeds the context length"),
    # ---- engine, both backends ----
    Case("backend-unknown", lambda c: gen(c, "engine.backend=tgi"), "engine.backend must be one of vllm, openai"),
    Case("server-settings-in-process", lambda c: gen(c, "engine.max_tokens_field=max_completion_tokens", "engine.batch_poll=5"),
         "engine.max_tokens_field, batch_poll shape the requests to a server (backend openai)"),
    Case("dtype-bf16", lambda c: gen(c, "engine.dtype=bf16"), "engine.dtype must be one of auto"),
    Case("extra-unknown-key", lambda c: gen(c, "engine.extra={max_modle_len: 512}"),
         "engine.extra.max_modle_len is not a vLLM engine argument (did you mean max_model_len?)"),
    Case("tensor-parallel-zero", lambda c: gen(c, "engine.tensor_parallel_size=0"), "tensor_parallel_size and data_parallel_size must be at least 1"),
    Case("gpu-memory-over-one", lambda c: gen(c, "engine.gpu_memory_utilization=1.5"), "gpu_memory_utilization must be in (0, 1]"),
    Case("max-model-len-tiny", lambda c: gen(c, "engine.max_model_len=8"), "max_model_len must be at least 16"),
    Case("kv-cache-negative", lambda c: gen(c, "engine.kv_cache_memory_bytes=-1"), "kv_cache_memory_bytes must be > 0"),
    Case("seed-not-int", lambda c: gen(c, "engine.seed=abc"), "engine.seed must be an integer"),
    Case("openai-no-url", lambda c: gen(c, "engine.backend=openai"), "backend openai needs base_url"),
    Case("openai-bad-url", lambda c: gen(c, "engine.backend=openai", "engine.base_url=ftp://x"), "must start with http://"),
    Case("openai-top-k", lambda c: gen(c, "engine.backend=openai", "engine.base_url=http://127.0.0.1:9/v1", "sampling.top_k=5"),
         "sampling.top_k is not part of the OpenAI API"),
    Case("openai-vllm-setting", lambda c: gen(c, "engine.backend=openai", "engine.base_url=http://127.0.0.1:9/v1", "engine.dtype=float16"),
         "configure the in-process vllm backend"),
    Case("openai-key-not-a-name", lambda c: gen(c, "engine.backend=openai", "engine.base_url=http://127.0.0.1:9/v1", "engine.api_key_env=sk-123"),
         "api_key_env must be the NAME"),
    Case("openai-prefill-chat", lambda c: gen(c, "engine.backend=openai", "engine.base_url=http://127.0.0.1:9/v1", "prompt.prefill=<think>"),
         "prompt.prefill can't be sent through the chat API"),
    Case("openai-unreachable", lambda c: gen(c, "engine.backend=openai", "engine.base_url=http://127.0.0.1:9/v1", "engine.timeout=2"),
         "cannot reach http://127.0.0.1:9/v1/models"),
    Case("openai-zero-concurrency", lambda c: gen(c, "engine.backend=openai", "engine.base_url=http://127.0.0.1:9/v1", "engine.max_concurrency=0"),
         "max_concurrency >= 1"),
    # ---- model references ----
    Case("model-missing", lambda c: gen(c, f"model={c.root}/missing"), "model path"),
    Case("model-dir-no-config", lambda c: gen(c, f"model={c.root}"), "has no config.json"),
    Case("model-dir-no-weights", lambda c: gen(c, f"model={c.without_weights()}"), "has no weights"),
    Case("model-gguf-corrupt", lambda c: gen(c, f"model={c.file('broken.gguf', b'not a gguf file' * 10)}"), "is not a GGUF file"),
    Case("model-gguf-empty", lambda c: gen(c, f"model={c.file('empty.gguf', b'')}"), "is not a GGUF file"),
    Case("model-embedded-unknown", lambda c: gen(c, "model=embedded:Nope"), "unknown embedded model 'Nope'"),
    Case("model-config-not-json", lambda c: gen(c, f"model={c.file('m/config.json', '{oops') and c.root / 'm'}"), "config.json is not valid JSON"),
    # ---- problems ----
    Case("problems-file-missing", lambda c: gen(c, f"problems.source={c.root}/nope.jsonl"), "problem file"),
    Case("problems-wrong-extension", lambda c: gen(c, f"problems.source={c.file('p.txt', 'x')}"), "must end in"),
    Case("problems-jsonl-malformed", lambda c: gen(c, source(c, "p.jsonl", '{"question": "a", "answer": "1"}\n{oops\n')), "p.jsonl"),
    Case("problems-jsonl-empty", lambda c: gen(c, f"problems.source={c.file('p.jsonl', '')}"), "p.jsonl"),
    Case("problems-json-not-json", lambda c: gen(c, f"problems.source={c.file('p.json', '[1, 2')}"), "p.json"),
    Case("problems-csv-header-only", lambda c: gen(c, source(c, "p.csv", "question,answer\n")), "p.csv"),
    Case("problems-csv-empty", lambda c: gen(c, f"problems.source={c.file('p.csv', '')}"), "p.csv"),
    Case("problems-parquet-corrupt", lambda c: gen(c, f"problems.source={c.file('p.parquet', b'PAR1garbage')}"), "p.parquet"),
    Case("problems-source-a-directory", lambda c: gen(c, f"problems.source={c.root}/"), "must end in"),
    Case("problems-field-missing", lambda c: gen(c, f"problems.source={c.problems()}", "problems.question_fields=[Body]"), "field(s) Body"),
    Case("problems-id-repeated", lambda c: gen(c, "problems.id_field=answer", f"problems.source={c.file('p.jsonl', json.dumps({'question': 'a', 'answer': '1'}) + chr(10) + json.dumps({'question': 'b', 'answer': '1'}))}"),
         "repeated values"),
    Case("problems-preset-unknown", lambda c: gen(c, "problems.preset=gsm9k"), "preset 'gsm9k' is unknown"),
    Case("problems-count-zero", lambda c: gen(c, "problems.num_problems=0"), "num_problems must be at least 1"),
    Case("problems-answer-format", lambda c: gen(c, "problems.answer_format=xml"), "answer_format must be plain, gsm8k, boxed"),
    Case("problems-steps", lambda c: gen(c, "problems.min_steps=3", "problems.max_steps=1"), "min_steps <= max_steps"),
    Case("problems-operations", lambda c: gen(c, "problems.operations=+^"), "operations must use only"),
    Case("problems-split", lambda c: gen(c, "problems.split=test"), "splits train and heldout"),
    Case("problems-tasks-without-rg", lambda c: gen(c, "problems.tasks=chain_sum"), "tasks is for source: reasoning-gym"),
    Case("problems-tests-schema", lambda c: gen(c, "problems.tests=junit"), "tests schema 'junit' is unknown"),
    Case("problems-hub-offline", lambda c: gen(c, "problems.source=nobody/no-such-dataset"), "could not load hub dataset"),
    Case("problems-shard-index", lambda c: gen(c, "num_shards=2", "shard_index=2"), "shard_index must be in [0, num_shards=2)"),
    Case("chunk-size-zero", lambda c: gen(c, "chunk_size=0"), "chunk_size must be at least 1"),
    # ---- prompt, answer, filters, code ----
    Case("template-unknown", lambda c: gen(c, "prompt.template=nope"), "prompt template 'nope' not found"),
    Case("template-syntax", lambda c: gen(c, f"prompt.template={c.file('t.jinja', '{{ question ')}"), "t.jinja"),
    Case("template-unknown-field", lambda c: gen(c, f"prompt.template={c.file('t.jinja', '{{ nope }}')}"), "nope"),
    Case("answer-extraction", lambda c: gen(c, "answer.extraction=regex"), "extraction must be auto, boxed, last_number or marker"),
    Case("answer-rg-threshold", lambda c: gen(c, "answer.rg_threshold=0"), "rg_threshold must be in (0, 1]"),
    Case("filters-min-tokens", lambda c: gen(c, "filters.min_tokens=-1"), "need 0 <= min_tokens <= max_tokens"),
    Case("filters-max-below-min", lambda c: gen(c, "filters.min_tokens=10", "filters.max_tokens=5"), "need 0 <= min_tokens <= max_tokens"),
    Case("filters-near-duplicate", lambda c: gen(c, "filters.near_duplicate=0"), "near_duplicate must be in (0, 1]"),
    Case("filters-max-per-problem", lambda c: gen(c, "filters.max_per_problem=0"), "max_per_problem must be at least 1"),
    Case("filters-pass-rate", lambda c: gen(c, "filters.pass_rate=[0.8, 0.2]"), "pass_rate must be [lo, hi]"),
    Case("filters-repetition", lambda c: gen(c, "filters.repetition_ngram=0"), "repetition_ngram must be >= 1"),
    Case("filters-decontaminate-file", lambda c: gen(c, f"filters.decontaminate=[mine={c.root}/nope.jsonl]"), "nope.jsonl"),
    Case("code-timeout", lambda c: gen(c, "code.timeout=0"), "code.timeout must be > 0"),
    Case("code-memory", lambda c: gen(c, "code.memory_mb=10"), "code.memory_mb must be at least 64"),
    Case("code-isolation", lambda c: gen(c, "code.isolation=docker"), "code.isolation must be one of"),
    # ---- output directories ----
    Case("output-dir-is-a-file", lambda c: gen(c, f"output_dir={c.file('taken', 'x')}"), "is a file"),
    Case("output-dir-under-a-file", lambda c: gen(c, f"output_dir={c.file('taken', 'x')}/sub"), "cannot create output_dir"),
    Case("output-dir-unwritable", lambda c: gen(c, "output_dir=/sys/seqdistill-test-out"), "cannot create output_dir"),
    Case("output-dir-foreign", lambda c: gen(c), "holds no seqdistill run", setup=foreign),
    Case("output-dir-foreign-overwrite", lambda c: gen(c, "overwrite=true"), "holds no seqdistill run", setup=foreign),
    Case("output-dir-different-run", lambda c: gen(c), "holds a different run (sampling.n: 2 -> 1); use another output_dir",
         setup=another_run),
    Case("sft-output-dir-is-a-file", lambda c: sft(c, f"output_dir={c.file('taken', 'x')}"), "is a file"),
    # ---- sft: data, training values, lora, kd ----
    Case("sft-dataset-missing", lambda c: sft(c, dataset=f"{c.root}/nope.jsonl"), "does not exist"),
    Case("sft-dataset-malformed", lambda c: sft(c, dataset=c.file("t.jsonl", '{"messages": []}\n{oops\n')), "t.jsonl"),
    Case("sft-dataset-empty-jsonl", lambda c: sft(c, dataset=c.file("t.jsonl", "")), "t.jsonl"),
    Case("sft-dataset-csv-header-only", lambda c: sft(c, dataset=c.file("t.csv", "prompt,completion\n")), "t.csv"),
    Case("sft-dataset-no-messages", lambda c: sft(c, dataset=c.file("t.jsonl", '{"text": "hi"}\n')), "no `messages` column"),
    Case("sft-dataset-dir-not-generate", lambda c: sft(c, dataset=str(c.root) + "/"), "is it a generate output_dir"),
    Case("sft-dataset-parquet-corrupt", lambda c: sft(c, dataset=c.file("t.parquet", b"PAR1 cut short")), "t.parquet"),
    Case("sft-generate-parquet-torn", lambda c: sft(c, dataset=torn_generate(c)), "train.parquet is unreadable"),
    Case("sft-generate-stats-not-json", lambda c: sft(c, dataset=c.file("gen/stats.json", "{") and torn_generate(c, whole=True)),
         "stats.json is unreadable"),
    Case("sft-generate-kept-nothing", lambda c: sft(c, dataset=c.empty_generate()), "kept no trace (biggest drop: wrong_answer"),
    Case("sft-learning-rate-negative", lambda c: sft(c, "learning_rate=-1e-4"), "learning_rate must be > 0"),
    Case("sft-learning-rate-zero", lambda c: sft(c, "learning_rate=0"), "learning_rate must be > 0"),
    Case("sft-batch-zero", lambda c: sft(c, "per_device_train_batch_size=0"), "per_device_train_batch_size must be at least 1"),
    Case("sft-accumulation-zero", lambda c: sft(c, "gradient_accumulation_steps=0"), "gradient_accumulation_steps must be at least 1"),
    Case("sft-epochs-zero", lambda c: sft(c, "num_train_epochs=0", "max_steps=-1"), "num_train_epochs must be > 0"),
    Case("sft-max-steps-negative", lambda c: sft(c, "max_steps=-5"), "max_steps must be -1 (train num_train_epochs) or > 0"),
    Case("sft-max-length-zero", lambda c: sft(c, "max_length=0"), "max_length must be at least"),
    Case("sft-warmup-negative", lambda c: sft(c, "warmup_steps=-1"), "warmup_steps must be >= 0"),
    Case("sft-save-steps-zero", lambda c: sft(c, "save_steps=0"), "save_steps must be at least 1"),
    Case("sft-scheduler-unknown", lambda c: sft(c, "lr_scheduler_type=cosyne"), "lr_scheduler_type 'cosyne' is not"),
    Case("sft-lora-dropout", lambda c: sft(c, "lora.dropout=2"), "lora.dropout must be in [0, 1)"),
    Case("sft-lora-r-zero", lambda c: sft(c, "lora.r=0"), "lora.r must be at least 1"),
    Case("sft-lora-targets", lambda c: sft(c, "lora.target_modules=[nope_proj]"), "match no module"),
    Case("sft-method", lambda c: sft(c, "method=dora"), "method must be lora, full or qlora"),
    Case("sft-dtype", lambda c: sft(c, "dtype=bf16"), "dtype must be auto, bfloat16, float16 or float32"),
    Case("sft-eval-fraction", lambda c: sft(c, "eval_fraction=1"), "eval_fraction must be in [0, 1)"),
    Case("sft-trl-unknown", lambda c: sft(c, "trl={warmup_ratio: 0.1}"), "trl.warmup_ratio is not a trl.SFTConfig setting"),
    Case("sft-trl-owned", lambda c: sft(c, "trl={bf16: true}"), "trl.bf16 is set by seqdistill"),
    Case("sft-trl-kd-keep-end", lambda c: sft(c, "kd.mode=offline", "trl={truncation_mode: keep_end}"),
         "trl.truncation_mode keep_end cuts rows from the start"),
    Case("sft-student-no-weights", lambda c: sft(c, f"student={c.without_weights()}"), "has no weights"),
    Case("sft-student-gguf-corrupt", lambda c: sft(c, f"student={c.file('broken.gguf', b'junk' * 8)}"), "is not a GGUF file"),
    Case("sft-kd-mode", lambda c: sft(c, "kd.mode=offlne"), "mode must be one of"),
    Case("sft-kd-alpha", lambda c: sft(c, "kd.alpha=2"), "alpha must be in [0, 1]"),
    Case("sft-kd-online-no-teacher", lambda c: sft(c, "kd.mode=online"), "mode online needs kd.teacher"),
    Case("sft-kd-offline-no-logprobs", lambda c: sft(c, "kd.mode=offline"), "has no teacher log-probs"),
    Case("sft-kd-feature-offline", lambda c: sft(c, "kd.hidden_states.weight=1"), "hidden_states needs the teacher loaded"),
    # ---- score ----
    Case("score-dataset-missing", lambda c: score(c, f"dataset={c.root}/nope.jsonl"), "does not exist"),
    Case("score-dataset-no-messages", lambda c: score(c, f"dataset={c.file('s.jsonl', json.dumps({'text': 'x'}))}"), "no `messages` column"),
    Case("score-dataset-empty-generate", lambda c: score(c, f"dataset={c.empty_generate()}"), "kept no trace"),
    Case("score-logprobs-k", lambda c: score(c, "logprobs_k=0"), "logprobs_k must be in [1"),
    Case("score-batch-size", lambda c: score(c, "batch_size=0"), "batch_size must be at least 1"),
    Case("score-openai-chat", lambda c: score(c, "engine.backend=openai", "engine.base_url=http://127.0.0.1:9/v1"), "engine.api: completions"),
    # ---- eval ----
    Case("eval-model-missing", lambda c: ev(c, f"models=[{{model: {c.root}/nope}}]"), "model path"),
    Case("eval-model-no-weights", lambda c: ev(c, f"models=[{{model: {c.without_weights()}}}]"), "has no weights"),
    Case("eval-adapter-no-config", lambda c: ev(c, f"models=[{{model: {c.model_dir}, adapter: {c.root}}}]"), "has no adapter_config.json"),
    Case("eval-adapter-config-not-json", lambda c: ev(c, f"models=[{{model: {c.model_dir}, adapter: {adapter(c, '{oops')}}}]"), "adapter_config.json"),
    Case("eval-benchmark-unknown", lambda c: ev(c, "benchmarks=[{name: gsm9k}]"), "unknown benchmark 'gsm9k'"),
    Case("eval-benchmark-malformed", lambda c: ev(c, f"benchmarks=[{{name: mine, source: {c.file('b.jsonl', '{oops')}}}]"), "b.jsonl"),
    Case("eval-pass-k", lambda c: ev(c, "pass_k=[8]"), "pass@8 needs k <= samples per problem"),
    Case("eval-names-repeat", lambda c: ev(c, f"models=[{{model: {c.model_dir}}}, {{model: {c.model_dir}}}]"), "model names must be unique"),
    Case("eval-no-models", lambda c: ev(c, "models=[]"), "give at least one model and one benchmark"),
    Case("eval-context", lambda c: ev(c, "sampling.max_tokens=100000"), "exceeds the context length"),
    Case("eval-output-foreign-overwrite", lambda c: ev(c, "overwrite=true"), "holds no seqdistill run", setup=foreign),
    # ---- run (pipelines) ----
    Case("run-pipeline-missing", lambda c: ["run", str(c.root / "nope.yaml")], "does not exist"),
    Case("run-pipeline-empty", lambda c: ["run", c.file("p.yaml", "")], "seqdistill config run"),
    Case("run-no-stages", lambda c: run(c, {}), "has none of the stages"),
    Case("run-unknown-stage", lambda c: run(c, {"generate": GEN_STAGE}, "--only", "generat"), "unknown stage 'generat'"),
    Case("run-sft-value", lambda c: run(c, {"generate": GEN_STAGE, "sft": {"learning_rate": -1}}), "sft.learning_rate must be > 0"),
    Case("run-eval-context", lambda c: run(c, {"generate": GEN_STAGE, "eval": {"sampling": {"max_tokens": 100000}}}),
         "exceeds the context length"),
    Case("run-eval-benchmark-file", lambda c: run(c, {"generate": GEN_STAGE, "eval": {"benchmarks": [{"name": "m", "source": c.file("b.jsonl", "{oops")}]}}),
         "b.jsonl"),
    Case("run-sft-dataset-missing", lambda c: run(c, {"sft": {"dataset": f"{c.root}/nope.jsonl"}}), "does not exist"),
    Case("run-sft-dataset-kept-nothing", lambda c: run(c, {"sft": {"dataset": c.empty_generate()}}), "kept no trace"),
    Case("run-after-generate-kept-nothing", lambda c: ["run", str(c.root / "pipe.yaml")], "kept no trace (biggest drop: wrong_answer",
         setup=empty_generate_stage),
    Case("run-kd-offline-without-logprobs", lambda c: run(c, {"generate": GEN_STAGE, "sft": {"kd": {"mode": "offline"}}}),
         "set generate.teacher_logprobs: true"),
    # sft's own checks come before generate samples anything (the generate stage would trip the engine tripwire)
    Case("run-sft-lora-targets", lambda c: run(c, {"generate": GEN_STAGE, "sft": {"lora": {"target_modules": ["nope_proj"]}}}),
         "match no module"),
    Case("run-sft-lora-targets-unknown-architecture",
         lambda c: run(c, {"sft": {"student": unknown_architecture(c), "dataset": c.traces(), "lora": {"target_modules": ["q_proj"]}}}),
         "lora.target_modules: the config of student"),
    # ---- report ----
    Case("report-missing-dir", lambda c: ["report", str(c.root / "nope")], "holds no pipeline run"),
    Case("report-results-not-json", lambda c: ["report", str(c.root)], "results.json",
         setup=lambda c: c.file("eval/results.json", "{oops")),
    Case("report-stats-not-json", lambda c: ["report", str(c.root)], "stats.json",
         setup=lambda c: c.file("generate/stats.json", "")),
    Case("report-metrics-not-json", lambda c: ["report", str(c.root)], "metrics.json",
         setup=lambda c: c.file("sft/metrics.json", "[1,")),
]


class Tripwire(BaseException):
    """Raised where a model or engine would load: a bad input must be refused before that."""


@pytest.fixture
def tripwires(monkeypatch):
    from seqdistill.engines import engine
    from seqdistill import sft as sftlib

    def trip(what):
        def fail(*a, **k):
            raise Tripwire(f"{what} started for a run that must be refused")
        return fail

    monkeypatch.setattr(engine, "load_vllm", trip("a vLLM engine"))
    if hasattr(engine, "DataParallel"):  # one engine process per rank
        monkeypatch.setattr(engine, "DataParallel", trip("data-parallel vLLM engines"))
    monkeypatch.setattr(sftlib, "build_trainer", trip("training (the student model)"))


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))} if root.exists() else {}


def outcome(case: Case, root: Path, model: str, capsys) -> tuple[int | str, str]:
    """(exit code, stderr) of the command; the code is 'accepted' when it ran through."""
    c = Ctx(root, model)
    argv = case.argv(c)
    try:
        cli.main(argv)
    except SystemExit as e:
        return e.code, capsys.readouterr().err
    return "accepted", capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused_in_one_line_writing_nothing(case, tmp_path, smollm2_path, tripwires, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative defaults (outputs/...) land here
    if case.setup:
        case.setup(Ctx(tmp_path, smollm2_path))
    out = tmp_path / "out"
    before = snapshot(out)
    code, err = outcome(case, tmp_path, smollm2_path, capsys)
    lines = [line for line in err.splitlines() if "error: " in line]
    assert code == 2, f"exit {code}; stderr:\n{err}"
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert case.says in lines[0], lines[0]
    assert snapshot(out) == before, "the refused run wrote into its output directory"


# Found only with a model loaded, so not above (each would cost an engine start or a model load):
NEEDS_A_MODEL = {
    "weights that are corrupt or the wrong shape": "the header of a .safetensors file is readable, its tensors are "
                                                   "checked only when torch loads them",
    "a dtype the device cannot run (float16 training on some CPUs, bfloat16 on old GPUs for vLLM)": "vLLM decides per "
                                                                                                 "platform at start",
    "KV cache or GPU memory too small for max_model_len": "vLLM sizes the cache after profiling the loaded model",
    "a LoRA adapter whose shapes don't match its base": "peft/vLLM compare tensors at load",
    "an architecture vLLM or transformers does not support": "the registry is consulted when the engine builds the model",
}


def test_any_spelling_of_output_dir_resumes_the_same_run(tmp_path, monkeypatch):
    """`out`, `./out`, `/abs/out` and `out/` are one run: a rerun under each sends no request and is not refused."""
    from fault_server import FaultServer

    monkeypatch.chdir(tmp_path)
    with FaultServer() as server:
        def generate(out):
            cli.main(["generate", "--set", f"model={server.model}", f"output_dir={out}", "problems.num_problems=4",
                      "sampling.n=2", "sampling.max_tokens=16", "chunk_size=2", "prompt.template=number",
                      "answer.extraction=last_number", "engine.backend=openai", f"engine.base_url={server.url}"])

        generate("out")
        sent = server.requests
        assert sent == 8
        for spelling in ("./out", str(tmp_path / "out"), "out/", f"{tmp_path}/./out/"):
            generate(spelling)
        assert server.requests == sent
    assert (tmp_path / "out" / "stats.json").is_file()
