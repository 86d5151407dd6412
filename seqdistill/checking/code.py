"""Code problems: the program in an answer, tests in one internal form, and a verdict from the sandbox.

Tests of every known schema are normalised to one of three forms (JSON-able dicts):
  {"kind": "stdin", "cases": [{"input": str, "output": str}, ...]}          # one run per case
  {"kind": "call", "fn_name": str, "cases": [{"args": [...], "output": value}, ...]}  # one run, values compared
  {"kind": "program", "test": str, "prefix": str, "context": str, "calls": [str]}  # a test program
`prefix` is code put before the program (HumanEval's imports, which answers often leave out).

A test program never runs beside the program it tests: the program runs in one sandbox and answers
calls of its functions; the test program runs in another with the problem's own code (`context`:
HumanEval's prompt with its helpers, MBPP's setup) and those functions (`calls`, plus every name the
tests use that nothing defines) replaced by calls across, which return plain builtin values only.

Comparison follows the anchors (LiveCodeBench, APPS, open-r1): stdout line by line with surrounding
whitespace ignored and numbers equal within `float_tolerance`; call results as values (tuples are lists,
APPS's one-element list around a result is accepted).
"""

from __future__ import annotations

import ast
import base64
import builtins
import io
import json
import math
import pickle
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from seqdistill.checking import sandbox
from seqdistill.checking.answers import is_code, strip_think
from seqdistill.config import ConfigError

VERDICTS = ("passed", "wrong_output", "runtime_error", "timeout", "memory", "no_code", "syntax_error")
SCHEMAS = {  # name -> the fields it reads
    "input_output": "APPS/TACO: input_output = {inputs, outputs[, fn_name]}",
    "verification_info": "open-r1: verification_info = {language, test_cases: [{input, output}]}",
    "livecodebench": "LiveCodeBench: public_test_cases [+ private_test_cases], metadata.func_name",
    "humaneval": "HumanEval: test (defines check) + entry_point [+ prompt]",
    "mbpp": "MBPP: test_list [+ test_setup_code, test_imports]",
}
FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)```", re.DOTALL)
PYTHON_TAGS = ("python", "py", "python3", "")


@dataclass
class CodeConfig:
    # CPU seconds for each stdin test case, each call-based case and each test program; the wall clock
    # allows twice that plus a second, so a loaded machine (vLLM beside it) doesn't fail right programs
    timeout: float = 6.0
    memory_mb: int = 1024  # address space of each program; more is the verdict `memory`
    output_mb: float = 8.0  # stdout + stderr of one run; more is a wrong_output
    workers: int | None = None  # programs run at once; None: the CPU cores this process may use
    isolation: str = "auto"  # auto (bwrap, else unshare as root) | unshare | bwrap | none
    allow_unisolated: bool = False  # run untrusted code without isolation where none can be made
    float_tolerance: float = 1e-6  # absolute or relative difference at which numbers count as equal
    max_cases: int | None = None  # first N test cases of a problem; None: all

    def validate(self) -> list[str]:
        errors = []
        if not self.timeout > 0:
            errors.append(f"code.timeout must be > 0 seconds, got {self.timeout}")
        if self.memory_mb < 64:
            errors.append(f"code.memory_mb must be at least 64 (Python needs it to start), got {self.memory_mb}")
        if not self.output_mb > 0:
            errors.append(f"code.output_mb must be > 0, got {self.output_mb}")
        if self.workers is not None and self.workers < 1:
            errors.append(f"code.workers must be at least 1 (or null for the CPU count), got {self.workers}")
        if self.isolation not in sandbox.ISOLATIONS:
            errors.append(f"code.isolation must be one of {', '.join(sandbox.ISOLATIONS)}, got {self.isolation!r}")
        if self.float_tolerance < 0:
            errors.append(f"code.float_tolerance must be >= 0, got {self.float_tolerance}")
        if self.max_cases is not None and self.max_cases < 1:
            errors.append(f"code.max_cases must be at least 1 (or null for all), got {self.max_cases}")
        return errors

    def limits(self, cases: int = 1) -> sandbox.Limits:
        """Limits of one run of `cases` cases: the wall clock of each case, plus a second."""
        wall = (2 * self.timeout + 1) * cases + 1
        return sandbox.Limits(timeout=wall, memory_mb=self.memory_mb, output_mb=self.output_mb)


@dataclass
class Verdict:
    status: str  # one of VERDICTS
    detail: str = ""  # the first failing case or the error
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# ---- extraction ---------------------------------------------------------------------------------

def extract_code(text: str, think_tag: str = "think") -> str | None:
    """The last fenced Python block after the reasoning block; None when there is none."""
    body = strip_think(text, think_tag)
    if body is None:
        return None
    blocks = [code for tag, code in FENCE.findall(body) if tag.lower() in PYTHON_TAGS]
    return blocks[-1] if blocks else None


# ---- schemas ------------------------------------------------------------------------------------

def detect_schema(row: dict) -> str:
    if "input_output" in row:
        return "input_output"
    if "verification_info" in row:
        return "verification_info"
    if "public_test_cases" in row:
        return "livecodebench"
    if "test_list" in row:
        return "mbpp"
    if "test" in row and "entry_point" in row:
        return "humaneval"
    raise ConfigError(f"no tests found in a code problem with fields {', '.join(row)}; known schemas: "
                      + "; ".join(SCHEMAS.values()))


def normalize(row: dict, schema: str = "auto") -> dict:
    """The tests of one problem row in the internal form (see the module docstring)."""
    schema = detect_schema(row) if schema == "auto" else schema
    if schema not in SCHEMAS:
        raise ConfigError(f"unknown test schema {schema!r}; known: {', '.join(SCHEMAS)} (or auto)")
    field = {"input_output": "input_output", "verification_info": "verification_info",
             "livecodebench": "public_test_cases", "humaneval": "test", "mbpp": "test_list"}[schema]
    if not row.get(field):
        raise ConfigError(f"code problem {row.get('id', '')!r} has no tests: expected field {field!r} ({SCHEMAS[schema]})")
    tests = globals()[f"_from_{schema}"](row)
    if tests["kind"] != "program" and not tests["cases"]:
        raise ConfigError(f"code problem {row.get('id', '')!r} has no test cases in {field!r}")
    if tests["kind"] == "program":  # the functions the tests call across (see _run_program), found once per problem
        tests["context"] = f"{tests['prefix']}\n{tests.get('context', '')}"
        try:
            tests["calls"] = sorted({*tests.get("calls", []), *free_names(tests["test"], tests["context"])})
        except SyntaxError as e:
            raise ConfigError(f"code problem {row.get('id', '')!r}: its test program is not valid Python ({e}); "
                              "fix or drop the problem") from e
    return tests


def _json(value):
    return json.loads(value) if isinstance(value, str) else value


def _lines(value) -> str:
    return "\n".join(map(str, value)) if isinstance(value, list) else str(value)


def _from_input_output(row: dict) -> dict:
    io_ = _json(row["input_output"])
    fn_name = io_.get("fn_name") or row.get("fn_name")
    pairs = list(zip(io_["inputs"], io_["outputs"]))
    if fn_name:
        return {"kind": "call", "fn_name": fn_name, "cases": [{"args": i if isinstance(i, list) else [i], "output": o}
                                                              for i, o in pairs]}
    return {"kind": "stdin", "cases": [{"input": _lines(i), "output": _lines(o)} for i, o in pairs]}


def _from_verification_info(row: dict) -> dict:
    info = _json(row["verification_info"])
    sandbox.check_language(info.get("language", "python"))
    other = {c.get("type") for c in info["test_cases"]} - {None, "stdin_stdout"}
    if other:
        raise ConfigError(f"verification_info test type(s) {', '.join(map(str, other))} are not supported; "
                          "only stdin_stdout")
    return {"kind": "stdin", "cases": [{"input": c["input"], "output": c["output"]} for c in info["test_cases"]]}


def _from_livecodebench(row: dict) -> dict:
    cases = _json(row["public_test_cases"]) + (decode_private(row["private_test_cases"]) if row.get("private_test_cases") else [])
    if cases and cases[0].get("testtype") == "functional":
        fn_name = (_json(row.get("metadata") or "{}") or {}).get("func_name")
        if not fn_name:
            raise ConfigError(f"LiveCodeBench problem {row.get('question_id', '')!r} has functional tests but no "
                              "metadata.func_name")
        return {"kind": "call", "fn_name": fn_name, "cases": [
            {"args": [json.loads(line) for line in c["input"].split("\n") if line.strip()],
             "output": json.loads(c["output"])} for c in cases]}
    return {"kind": "stdin", "cases": [{"input": c["input"], "output": c["output"]} for c in cases]}


def _from_humaneval(row: dict) -> dict:
    prompt = str(row.get("prompt", ""))
    imports = [line for line in prompt.splitlines() if line.startswith(("import ", "from "))]
    return {"kind": "program", "test": f"{row['test']}\n\ncheck({row['entry_point']})\n", "prefix": "\n".join(imports),
            "context": _runnable(prompt, "\n".join(imports)), "calls": [row["entry_point"]]}


def _runnable(prompt: str, fallback: str) -> str:
    """HumanEval's prompt as code the tests can run beside (its helpers: `poly`, `encode_cyclic`): it ends
    in the function's signature and docstring, which needs a body."""
    for source in (prompt, prompt.rstrip() + "\n    pass\n"):
        try:
            ast.parse(source)
            return source
        except SyntaxError:
            continue
    return fallback


def _from_mbpp(row: dict) -> dict:
    setup = "\n".join([row.get("test_setup_code") or "", *(row.get("test_imports") or [])])
    prefix = "\n".join(line for line in setup.splitlines() if line.strip())
    return {"kind": "program", "test": "\n".join(_json(row["test_list"])) + "\n", "prefix": prefix}


def free_names(test: str, context: str = "") -> list[str]:
    """Names a test program reads that neither it, the problem's code nor Python defines: the program's."""
    bound, read = set(dir(builtins)), set()
    for source in (context, test):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Name):
                (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bound.add(node.name)
            elif isinstance(node, ast.arg):
                bound.add(node.arg)
            elif isinstance(node, ast.alias):
                bound.add((node.asname or node.name).split(".")[0])
            elif isinstance(node, ast.ExceptHandler) and node.name:
                bound.add(node.name)
    return sorted(read - bound)


class _PlainUnpickler(pickle.Unpickler):
    """Builds only what pickle's own opcodes make (str, numbers, lists, dicts ...); no class, no call."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


def decode_private(value) -> list:
    """LiveCodeBench private tests: JSON, or base64(zlib(pickle(JSON string))) read without running code."""
    if isinstance(value, list):
        return value
    if value.lstrip().startswith("["):
        return json.loads(value)
    try:
        data = _PlainUnpickler(io.BytesIO(zlib.decompress(base64.b64decode(value)))).load()
    except Exception as e:
        raise ConfigError(f"LiveCodeBench private_test_cases could not be decoded safely ({e}); only pickles of "
                          "lists, dicts, strings and numbers are read; drop the field to use the public tests") from e
    data = json.loads(data) if isinstance(data, str) else data
    if not _plain(data) or not isinstance(data, list):
        raise ConfigError("LiveCodeBench private_test_cases hold something other than a list of plain values; "
                          "drop the field to use the public tests")
    return data


def _plain(value) -> bool:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return True
    if isinstance(value, list):
        return all(map(_plain, value))
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


# ---- comparison ---------------------------------------------------------------------------------

def _number(token: str) -> float | None:
    try:
        return float(token)
    except ValueError:
        return None


def same_token(a: str, b: str, tol: float) -> bool:
    if a == b:
        return True
    x, y = _number(a), _number(b)
    return x is not None and y is not None and math.isclose(x, y, rel_tol=tol, abs_tol=tol)


def same_stdout(got: str, expected: str, tol: float) -> bool:
    """Line by line, surrounding whitespace ignored, numbers within the tolerance."""
    got_lines, want_lines = got.strip().splitlines(), expected.strip().splitlines()
    if len(got_lines) != len(want_lines):
        return False
    for g, w in zip(got_lines, want_lines):
        g_tokens, w_tokens = g.split(), w.split()
        if len(g_tokens) != len(w_tokens) or not all(same_token(a, b, tol) for a, b in zip(g_tokens, w_tokens)):
            return False
    return True


def same_value(got, expected, tol: float) -> bool:
    if isinstance(got, bool) or isinstance(expected, bool):
        return got is expected or got == expected and type(got) is type(expected)
    if isinstance(got, (int, float)) and isinstance(expected, (int, float)):
        return math.isclose(got, expected, rel_tol=tol, abs_tol=tol) or got == expected
    if isinstance(got, list) and isinstance(expected, list):
        return len(got) == len(expected) and all(same_value(g, e, tol) for g, e in zip(got, expected))
    if isinstance(got, dict) and isinstance(expected, dict):
        return got.keys() == expected.keys() and all(same_value(got[k], expected[k], tol) for k in got)
    return got == expected


# ---- verification -------------------------------------------------------------------------------

def _clip(value, n: int = 200) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=repr)
    return text if len(text) <= n else text[:n] + "..."


def _failure(result: sandbox.Result, case_label: str) -> Verdict | None:
    """The verdict of a run that did not finish normally, or None."""
    report, status = result.report, result.report.get("status")
    seconds = result.seconds
    if status == "syntax_error":
        return Verdict("syntax_error", report.get("error", ""), seconds)
    if status == "memory":
        return Verdict("memory", f"{case_label}: over the memory limit", seconds)
    if result.timed_out or status == "timeout" or result.returncode == 128 + 24:  # SIGXCPU: the CPU limit
        return Verdict("timeout", f"{case_label}: no result within the time limit", seconds)
    if result.output_exceeded:
        return Verdict("wrong_output", f"{case_label}: more output than the output_mb limit", seconds)
    if status == "sandbox_error":
        raise RuntimeError(f"the sandbox failed: {report.get('error')}")
    if status == "exception":
        return Verdict("runtime_error", f"{case_label}: {report.get('error', '')}", seconds)
    if status == "no_report" and (result.returncode or 0) != 0:
        return Verdict("runtime_error", f"{case_label}: killed (exit {result.returncode}) {result.stderr[-200:]}".strip(), seconds)
    return None


def check_sandbox(cfg: CodeConfig, rows: list[dict]) -> str | None:
    """The isolation code problems among `rows` will run under, found out before any sampling (None: no code)."""
    return sandbox.isolation(cfg.isolation, cfg.allow_unisolated) if any(map(is_code, rows)) else None


def run_tests(code: str, tests: dict, cfg: CodeConfig, kind: str) -> Verdict:
    """Run a program against normalised tests; the first failing case decides the verdict."""
    run = {"program": _run_program, "call": _run_call, "stdin": _run_stdin}[tests["kind"]]
    return run(code, tests, cfg, kind)


def _run_program(code: str, tests: dict, cfg: CodeConfig, kind: str) -> Verdict:
    """The program answers calls in one sandbox; the test program runs in another (`sandbox.run_pair`)."""
    # the prefix can't go above a __future__ import; such programs bring their own imports anyway
    prefix = tests["prefix"]
    source = f"{prefix}\n{code}" if prefix and "from __future__" not in code else code
    serve = {"mode": "serve", "source": source, "case_timeout": cfg.timeout}
    drive = {"mode": "drive", "context": tests["context"], "test": tests["test"], "names": tests["calls"],
             "case_timeout": cfg.timeout}
    result = sandbox.run_pair(serve, drive, cfg.limits(), kind)
    if result.report["status"] == "assertion":
        return Verdict("wrong_output", f"failed: {result.report.get('line', '')}", result.seconds)
    failed = _failure(result, "tests")
    if failed:
        return failed
    if result.report["status"] != "ok":
        return Verdict("runtime_error", f"the program ended before its tests finished (exit {result.returncode})",
                       result.seconds)
    return Verdict("passed", "", result.seconds)


def _run_call(code: str, tests: dict, cfg: CodeConfig, kind: str) -> Verdict:
    """One run calls the function on every case (each with its own alarm); values compared here."""
    cases = tests["cases"][: cfg.max_cases]
    limits = cfg.limits(len(cases))
    job = {"mode": "call", "source": code, "fn_name": tests["fn_name"], "case_timeout": cfg.timeout,
           "inputs": [c["args"] for c in cases]}
    result = sandbox.run(job, limits, kind)
    results = result.report.get("results") or []
    for i, (got, case) in enumerate(zip(results, cases)):
        want = case["output"]
        # APPS wraps a return value in a one-element list
        if not (same_value(got, want, cfg.float_tolerance) or isinstance(want, list) and len(want) == 1
                and same_value(got, want[0], cfg.float_tolerance)):
            return Verdict("wrong_output", f"case {i}: args {_clip(case['args'])} expected {_clip(want)} got {_clip(got)}",
                           result.seconds)
    failed = _failure(result, f"case {len(results)}")
    if failed:
        return failed
    if len(results) < len(cases):
        return Verdict("runtime_error", f"case {len(results)}: the program ended before returning", result.seconds)
    return Verdict("passed", "", result.seconds)


def _run_stdin(code: str, tests: dict, cfg: CodeConfig, kind: str) -> Verdict:
    """A fresh run per case, its stdout compared with the expected output."""
    limits, seconds = cfg.limits(), 0.0
    for i, case in enumerate(tests["cases"][: cfg.max_cases]):
        job = {"mode": "stdin", "source": code, "case_timeout": cfg.timeout}
        result = sandbox.run(job, limits, kind, stdin=case["input"])
        seconds += result.seconds
        failed = _failure(result, f"case {i}")
        if failed:
            failed.seconds = seconds
            return failed
        if not same_stdout(result.stdout, case["output"], cfg.float_tolerance):
            return Verdict("wrong_output", f"case {i}: input {_clip(case['input'])} expected {_clip(case['output'])} "
                                           f"got {_clip(result.stdout)}", seconds)
    return Verdict("passed", "", seconds)


def verify_program(text: str, tests: dict | str, cfg: CodeConfig, think_tag: str = "think") -> Verdict:
    """The verdict of a model's answer: its last Python block run against the tests in the sandbox."""
    code = extract_code(text, think_tag)
    if code is None:
        return Verdict("no_code", "no fenced python block after the reasoning")
    tests = json.loads(tests) if isinstance(tests, str) else tests
    if not isinstance(tests, dict) or tests.get("kind") not in ("stdin", "call", "program"):
        raise ConfigError("tests must be a dict with kind stdin, call or program (from seqdistill.checking.code.normalize), "
                          f"got {str(tests)[:100]}")
    return run_tests(code, tests, cfg, sandbox.isolation(cfg.isolation, cfg.allow_unisolated))


def verify_many(items: list[tuple[str, dict | str]], cfg: CodeConfig, think_tag: str = "think") -> list[Verdict]:
    """Verdicts of many (answer text, tests) pairs, `cfg.workers` sandboxes at a time, in order."""
    import os

    sandbox.isolation(cfg.isolation, cfg.allow_unisolated)  # refuse before starting anything
    with ThreadPoolExecutor(cfg.workers or len(os.sched_getaffinity(0))) as pool:
        return list(pool.map(lambda item: verify_program(item[0], item[1], cfg, think_tag), items))
