"""Code verification: extraction, each test schema with a right and a wrong program, adversarial
programs in the sandbox (verdict, time, nothing left behind), and HumanEval's own solutions."""

import base64
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

import psutil
import pytest

from seqdistill.checking import code, sandbox
from seqdistill.checking.code import CodeConfig
from seqdistill.config import ConfigError

CFG = CodeConfig(timeout=1, workers=2)  # CPU seconds per case; wall 3 s


def fenced(program: str) -> str:
    return f"<think>easy</think>Here it is:\n```python\n{program}\n```"


def verdict(program: str, tests: dict, cfg: CodeConfig = CFG) -> code.Verdict:
    return code.verify_program(fenced(program), tests, cfg)


def isolated() -> bool:
    try:
        return sandbox.isolation("auto") in ("unshare", "bwrap")
    except ConfigError:
        return False


@pytest.fixture
def nothing_left(no_leftovers):
    """For tests that run programs: a sandbox must be possible here (unshare or bubblewrap)."""
    if not isolated():
        pytest.skip("no sandbox can be made on this machine (unshare -n -p or bubblewrap)")


@pytest.fixture
def no_leftovers():
    """After the test: no child process of ours, no process or /tmp file of our sandbox users, no sandbox dir."""
    yield
    time.sleep(0.1)
    assert psutil.Process().children(recursive=True) == []
    ours = sandbox.own_uids()
    assert [p.pid for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real in ours] == []
    leftovers = [e.path for base in sandbox.WORLD_WRITABLE if os.path.isdir(base) for e in os.scandir(base)
                 if e.name.startswith(f"seqdistill-sandbox-{os.getpid()}-") or owner(e) in ours]
    assert leftovers == []


def owner(entry) -> int | None:
    try:
        return entry.stat(follow_symlinks=False).st_uid
    except OSError:  # others' files come and go in /tmp
        return None


# ---- extraction and config ----------------------------------------------------------------------

def test_extraction_takes_the_last_python_block_after_thinking():
    text = "<think>```python\nprint(0)\n```</think>```py\nprint(1)\n```\nand\n```python\nprint(2)\n```"
    assert code.extract_code(text) == "print(2)\n"
    assert code.extract_code("```\nprint(3)\n```") == "print(3)\n"
    assert code.extract_code("```cpp\nint main(){}\n```") is None
    assert code.extract_code("<think>```python\nprint(0)\n```") is None  # unclosed think: no answer
    with pytest.raises(ConfigError, match="tests must be a dict with kind stdin, call or program"):
        verdict("print(1)", {"cases": []})
    assert code.verify_program("print(1)", {"kind": "stdin", "cases": []}, CFG).status == "no_code"


def test_config_errors():
    assert CodeConfig().validate() == []
    errors = CodeConfig(timeout=0, workers=0, isolation="docker").validate()
    assert any("timeout must be > 0" in e for e in errors) and any("workers" in e for e in errors)
    assert any("isolation must be one of auto, unshare, bwrap, none" in e for e in errors)
    with pytest.raises(ConfigError, match="set allow_unisolated: true"):
        sandbox.isolation("none")
    assert sandbox.isolation("none", allow_unisolated=True) == "none"
    if not __import__("shutil").which("bwrap"):
        with pytest.raises(ConfigError, match="bwrap is not installed .apt install bubblewrap.; or set allow_unisolated"):
            sandbox.isolation("bwrap")


def test_without_root_auto_never_opens_the_callers_files(monkeypatch):
    """No bubblewrap and no root: auto refuses rather than run unshare on the caller's filesystem."""
    which = shutil.which
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None if name == "bwrap" else which(name))
    with pytest.raises(ConfigError, match="bwrap is not installed .apt install bubblewrap.; unshare without root "
                                          "leaves the caller's files open .* or set allow_unisolated: true"):
        sandbox.isolation("auto")


def test_only_code_problems_ask_for_a_sandbox():
    # generate and eval call this before any sampling: a math-only run needs no sandbox, a code run one that works
    math_rows, code_rows = [{"question": "1 + 1?", "answer": "2"}], [{"question": "q", "tests": {"fn_name": "f"}}]
    assert code.check_sandbox(CodeConfig(isolation="none"), math_rows) is None
    with pytest.raises(ConfigError, match="allow_unisolated"):
        code.check_sandbox(CodeConfig(isolation="none"), math_rows + code_rows)
    assert code.check_sandbox(CodeConfig(isolation="none", allow_unisolated=True), code_rows) == "none"


def test_unisolated_runs_still_limited(no_leftovers):
    cfg = CodeConfig(timeout=1, isolation="none", allow_unisolated=True)
    tests = code.normalize(APPS_STDIN)
    assert [verdict(p, tests, cfg).status for p in (ADD_STDIN, "while True:\n    pass", "x = bytearray(4 << 30)")] == [
        "passed", "timeout", "memory"]


def test_bad_tests_are_named():
    with pytest.raises(ConfigError, match="known schemas: APPS/TACO"):
        code.normalize({"id": "p", "question": "q"})
    with pytest.raises(ConfigError, match="has no tests: expected field 'test_list'"):
        code.normalize({"id": "p", "test_list": []})
    with pytest.raises(ConfigError, match="unknown test schema 'codeforces'"):
        code.normalize({"id": "p"}, "codeforces")
    with pytest.raises(ConfigError, match="cannot run 'cpp' programs; it runs: python"):
        code.normalize({"verification_info": {"language": "cpp", "test_cases": [{"input": "", "output": ""}]}})
    with pytest.raises(ConfigError, match=r"code problem 'p': its test program is not valid Python .*fix or drop"):
        code.normalize({"id": "p", "test_list": ["assert add(1, 2) == (3"]})  # refused as problems load, not per sample
    assert code.normalize({"id": "p", "test_list": ["assert add(1, 2) == 3"]})["calls"] == ["add"]


# ---- schemas: a right and a wrong program each --------------------------------------------------

ADD_STDIN = "a, b = map(int, input().split())\nprint(a + b)"
APPS_STDIN = {"input_output": json.dumps({"inputs": ["1 2\n", "10 -3\n"], "outputs": ["3\n", "7\n"]})}
APPS_CALL = {"input_output": json.dumps({"fn_name": "area", "inputs": [[2, 3], [1.5, 2]], "outputs": [[6], [3.0]]})}


@pytest.mark.parametrize("row,right,wrong", [
    (APPS_STDIN, ADD_STDIN, "a, b = map(int, input().split())\nprint(a - b)"),
    (APPS_CALL, "def area(w, h):\n    return w * h", "def area(w, h):\n    return w + h"),
    ({"verification_info": json.dumps({"language": "python", "test_cases": [
        {"type": "stdin_stdout", "input": "4\n1 2 3 4\n", "output": "10\n"}]})},
     "input()\nprint(sum(map(int, input().split())))", "input()\nprint(max(map(int, input().split())))"),
    ({"public_test_cases": json.dumps([{"input": "3\n", "output": "0.333333333\n", "testtype": "stdin"}]),
      "metadata": "{}"}, "print(1 / int(input()))", "print(round(1 / int(input()), 2))"),
    ({"public_test_cases": json.dumps([{"input": "[2, 7, 11, 15]\n9", "output": "[0, 1]", "testtype": "functional"}]),
      "metadata": json.dumps({"func_name": "twoSum"})},
     "class Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n        for i, x in enumerate(nums):\n"
     "            if target - x in seen:\n                return (seen[target - x], i)\n            seen[x] = i",
     "class Solution:\n    def twoSum(self, nums, target):\n        return [1, 0]"),
    ({"prompt": "from typing import List\n\ndef total(xs: List[int]) -> int:\n", "entry_point": "total",
      "test": "def check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n"},
     "def total(xs: List[int]) -> int:\n    return sum(xs)", "def total(xs: List[int]) -> int:\n    return len(xs) + 1"),
    ({"test_list": ["assert is_even(2)", "assert not is_even(3)"], "test_setup_code": ""},
     "def is_even(n):\n    return n % 2 == 0", "def is_even(n):\n    return n > 1"),
], ids=["apps-stdin", "apps-call", "open-r1", "livecodebench-stdin", "livecodebench-functional", "humaneval", "mbpp"])
def test_schema_right_and_wrong(row, right, wrong, nothing_left):
    tests = code.normalize(row)
    assert verdict(right, tests).status == "passed"
    bad = verdict(wrong, tests)
    assert bad.status == "wrong_output" and ("case 0" in bad.detail or "case 1" in bad.detail or "failed: assert" in bad.detail)


def test_first_failing_case_and_error_verdicts(nothing_left):
    tests = code.normalize(APPS_STDIN)
    assert verdict("a, b = map(int, input().split())\nprint(3)", tests).detail.startswith("case 1: input 10 -3")
    assert verdict("def f(:\n  pass", tests).status == "syntax_error"
    assert verdict("raise ValueError('boom')", tests).status == "runtime_error"
    assert "ValueError: boom" in verdict("raise ValueError('boom')", tests).detail
    assert verdict("def other(w, h):\n    return 0", code.normalize(APPS_CALL)).status == "runtime_error"
    assert verdict("import sys\nsys.exit(0)", code.normalize({"test_list": ["assert False"]})).status == "runtime_error"


def test_stdin_comparison_and_values():
    assert code.same_stdout("1 2  \n3.0000001\n\n", "1 2\n3\n", 1e-6)
    assert not code.same_stdout("1 2\n3\n", "1 2 3\n", 1e-6)
    assert not code.same_stdout("3.01\n", "3\n", 1e-6)
    assert code.same_value([0, 1], [0, 1], 1e-6) and not code.same_value(True, 1, 1e-6)


def test_livecodebench_private_tests_decoded_without_running_code(tmp_path):
    cases = [{"input": "1\n", "output": "1\n", "testtype": "stdin"}]
    packed = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(cases)))).decode()
    tests = code.normalize({"public_test_cases": "[]", "private_test_cases": packed, "metadata": "{}"})
    assert tests["cases"] == [{"input": "1\n", "output": "1\n"}]
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = base64.b64encode(zlib.compress(pickle.dumps([Evil()]))).decode()
    with pytest.raises(ConfigError, match="refused to load posix.system"):
        code.decode_private(evil)
    assert not marker.exists()


# ---- adversarial programs -----------------------------------------------------------------------

ECHO = {"kind": "stdin", "cases": [{"input": "", "output": "done"}]}


def timed(program: str, tests: dict = ECHO):
    start = time.monotonic()
    out = verdict(program, tests)
    return out, time.monotonic() - start


@pytest.mark.parametrize("program,expected", [
    ("while True:\n    pass", "timeout"),
    ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass", "timeout"),
    ("x = bytearray(4 << 30)\nprint('done')", "memory"),
    ("import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(100):\n    sys.stdout.write(chunk)", "wrong_output"),
], ids=["infinite-loop", "fork-bomb", "4GB", "100MB-stdout"])
def test_adversarial_verdicts(program, expected, nothing_left):
    out, seconds = timed(program)
    assert out.status == expected, out
    assert seconds < 5


@pytest.mark.skipif(not isolated(), reason="no network namespace here; the test would reach the network")
def test_no_network(nothing_left):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        for host, p in (("127.0.0.1", port), ("1.1.1.1", 80)):
            program = f"import socket\ns = socket.create_connection(('{host}', {p}), timeout=1)\nprint('done')"
            out, seconds = timed(program)  # bubblewrap brings its own loopback up: refused there
            assert out.status == "runtime_error" and ("unreachable" in out.detail or "refused" in out.detail), out
            assert seconds < 2
        server.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing reached the host's port
            server.accept()
    finally:
        server.close()


def test_no_writes_outside_its_directory(tmp_path, nothing_left):
    outside, shared_tmp = tmp_path / "escaped", f"/tmp/seqdistill-escape-{os.getpid()}"
    program = (f"open('mine.txt', 'w').write('ok')\n"
               f"try:\n    open('{outside}', 'w').write('x')\n    print('wrote')\nexcept OSError:\n    print('denied')\n"
               f"open('{shared_tmp}', 'w').write('x')\nprint('done')")
    tests = {"kind": "stdin", "cases": [{"input": "", "output": "denied\ndone"}]}
    out, _ = timed(program, tests)
    assert out.status == "passed", out  # a private root, or (unshare, only as root) a sandbox user of its own
    assert not os.path.exists(shared_tmp)  # its /tmp is its own, or its files there are swept with it
    assert not outside.exists()


def test_no_secrets_in_its_environment(monkeypatch, nothing_left):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    program = ("import os\nleak = [k for k, v in os.environ.items() if 'sk-test' in v]\n"
               "for pid in os.listdir('/proc'):\n    try:\n        leak += ['proc'] * ('sk-test' in open(f'/proc/{pid}/environ').read())\n"
               "    except (OSError, ValueError):\n        pass\nprint('done' if not leak else leak)")
    out, _ = timed(program)
    assert out.status == "passed", out


# ---- escapes, as root and as an unprivileged user ------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
ESCAPE = """
import json, os, sys
from seqdistill.checking import code, sandbox
from seqdistill.checking.code import CodeConfig
from seqdistill.config import ConfigError
home, port = sys.argv[1], int(sys.argv[2])
try:
    out = {"can": sandbox.isolation("bwrap"), "default": sandbox.isolation("auto")}
except ConfigError as e:
    print(json.dumps({"error": str(e)}))
    sys.exit()
sample = lambda program: f"```python\\n{program}\\n```"
echo = {"kind": "stdin", "cases": [{"input": "", "output": "done"}]}
pair = code.normalize({"prompt": "def add(a, b):\\n    pass\\n", "entry_point": "add",
                       "test": "def check(candidate):\\n    assert candidate(1, 2) == 3\\n"})
attacks = {  # each prints done (or adds right) only where it got out
    "write": (f"open('{home}/escaped', 'w').write('x')\\nprint('done')", echo),
    "secret": (f"print('done' if 'hf_' in open('{home}/.cache/huggingface/token').read() else 'no')", echo),
    "network": (f"import socket\\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\\nprint('done')", echo),
    "env": ("import glob, os\\nseen = list(os.environ.values())\\nfor path in glob.glob('/proc/*/environ'):\\n"
            "    try:\\n        seen.append(open(path).read())\\n    except OSError:\\n        pass\\n"
            "print('done' if any('sk-test' in v for v in seen) else 'no')", echo),
    "other-run": ("import glob, os\\nown = os.path.dirname(os.getcwd())\\n"  # the tests' run: their job, their report
                  "others = [d for d in glob.glob(os.path.dirname(own) + '/seqdistill-sandbox-*') if d != own]\\n"
                  "def add(a, b):\\n    return a + b if any(os.access(d, os.W_OK) for d in others) else 0", pair),
}
for kind in ("auto", "none"):
    cfg = CodeConfig(timeout=1, workers=1, isolation=kind, allow_unisolated=True)
    out[kind] = {name: code.verify_program(sample(p), tests, cfg).status for name, (p, tests) in attacks.items()}
    out[kind + "-wrote"] = os.path.exists(f"{home}/escaped")
print(json.dumps(out))
"""


def escapes(home: Path, user: str | None = None) -> dict:
    """Run ESCAPE (as `user`, or as we are) with a secret token in `home` and an API key in the environment."""
    (home / ".cache/huggingface").mkdir(parents=True)
    (home / ".cache/huggingface/token").write_text("hf_secret")
    for path in (".cache", ".cache/huggingface", ".cache/huggingface/token"):
        shutil.chown(home / path, user or os.getuid(), user or os.getgid())
    os.chmod(home / ".cache/huggingface/token", 0o600)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    become = [*reachable([*sandbox._interpreter_dirs(), str(REPO)]),
              "setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"] if user else []
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "OPENAI_API_KEY": "sk-test"}
    try:
        proc = subprocess.run([*become, sys.executable, "-c", ESCAPE, str(home), str(server.getsockname()[1])],
                              capture_output=True, text=True, env=env, cwd=home, timeout=120)
    finally:
        server.close()
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    if "error" in out:
        pytest.skip(f"bubblewrap cannot run here: {out['error']}")
    return out


def reachable(paths: list[str]) -> list[str]:
    """bwrap (run as root) showing the machine as it is, except that a directory closed to other users on the way
    to one of `paths` (pyenv under /root, mode 700) is covered by an empty one holding only those paths."""
    argv, made = ["bwrap", "--dev-bind", "/", "/"], set()
    for path in sorted(paths):
        above = list(reversed(Path(path).parents))[1:]  # /root, /root/.pyenv, ...
        closed = [p for p in above if not p.stat().st_mode & 0o001]
        if not closed:
            continue
        for parent in above[above.index(closed[0]):]:
            if parent not in made:
                made.add(parent)
                argv += ["--perms", "0755", "--tmpfs" if parent == closed[0] else "--dir", str(parent)]
        argv += ["--ro-bind", path, path]
    return argv


def check_escapes(out: dict) -> None:
    assert out["can"] == out["default"] == "bwrap"  # a private root is the default where it works
    assert out["auto"] == {"write": "runtime_error", "secret": "runtime_error", "network": "runtime_error",
                           "env": "wrong_output", "other-run": "wrong_output"}, out
    assert not out["auto-wrote"]
    assert set(out["none"].values()) == {"passed"} and out["none-wrote"], out  # the same programs, unisolated, get out


@pytest.mark.skipif(not shutil.which("bwrap"), reason="bubblewrap is not installed (make bwrap)")
def test_no_escape_as_root(tmp_path, no_leftovers):
    check_escapes(escapes(tmp_path))


@pytest.fixture
def unprivileged_user():
    """A user of its own for this test, with a home, removed after."""
    if os.geteuid() != 0 or not all(map(shutil.which, ("useradd", "userdel", "setpriv", "bwrap"))):
        pytest.skip("needs root (as CI runs), useradd, setpriv (util-linux) and bubblewrap (make bwrap) "
                    "to create a user and run the sandbox as that user")
    name = f"seqdistill{os.getpid()}"
    subprocess.run(["useradd", "--create-home", "--user-group", "--shell", "/bin/sh", name], check=True)
    try:
        yield name, Path(os.path.expanduser(f"~{name}"))
    finally:
        subprocess.run(["userdel", "--remove", name], capture_output=True)


def test_no_escape_without_root(unprivileged_user):
    """As a normal user: no write to its home, no read of its token, no network, no API key, no other run's files."""
    user, home = unprivileged_user
    check_escapes(escapes(home, user))


# ---- forged passes: a program that tries to fake its verdict fails --------------------------------

ADD = {"prompt": "def add(a, b):\n    \"\"\"a + b\"\"\"\n", "entry_point": "add",
       "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(20, 22) == 42\n"}
MBPP_ADD = {"test_list": ["assert add(1, 2) == 3", "assert add(20, 22) == 42"], "test_setup_code": ""}
WRONG = "def add(a, b):\n    return 0\n"
FORGERIES = {
    "eq-always-true": "class Yes:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n"
                      "def add(a, b):\n    return Yes()",
    "int-subclass": "class Int(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
                    "def add(a, b):\n    return Int(0)",
    "write-every-fd": "import os\nfor fd in range(256):\n    for line in (b'{\"ready\": true}\\n', b'{\"status\": \"ok\"}\\n'):\n"
                      "        try:\n            os.write(fd, line)\n        except OSError:\n            pass\nos._exit(0)",
    "write-ok-to-every-fd": "import os\nfor fd in range(256):\n    try:\n        os.write(fd, b'{\"status\": \"ok\"}')\n"
                            "    except OSError:\n        pass\nos._exit(0)",
    "answer-ahead": "import os, json\nfor fd in range(256):\n    try:\n        os.write(fd, b'{\"ready\": true}\\n' + "
                    "b'{\"value\": 3}\\n' * 50)\n    except OSError:\n        pass\n" + WRONG,
    "sys-exit-early": "import sys\nsys.exit(0)\n" + WRONG,
    "os-exit-early": "import os\nos._exit(0)\n" + WRONG,
    "fake-summary": "print('{\"status\": \"ok\"}')\nprint('All tests passed')\n" + WRONG,
    "patch-builtins": "import builtins\nbuiltins.AssertionError = type('Never', (Exception,), {})\n"
                      "builtins.__build_class__ = None\nbuiltins.print = None\n" + WRONG,
    "patch-check": "import sys\ndef check(candidate):\n    return None\nsys.modules['__main__'].check = check\n" + WRONG,
    "exit-in-function": "def add(a, b):\n    raise SystemExit(0)",
    "exit-in-checker": "import os\ndef add(a, b):\n    os._exit(0)",
    "overwrite-report": "import glob, threading\ndef forge():\n    while True:\n"
                        "        for path in glob.glob('/tmp/seqdistill-sandbox-*/report.json'):\n"
                        "            try:\n                open(path, 'w').write('{\"status\": \"ok\"}')\n"
                        "            except OSError:\n                pass\n"
                        "threading.Thread(target=forge, daemon=True).start()\n" + WRONG,
}


@pytest.mark.parametrize("row", [ADD, MBPP_ADD], ids=["humaneval", "mbpp"])
@pytest.mark.parametrize("name", FORGERIES)
def test_forged_passes_fail(row, name, nothing_left):
    tests = code.normalize(row)
    assert verdict("def add(a, b):\n    return a + b", tests).passed  # the channel works for an honest program
    out = verdict(FORGERIES[name], tests)
    assert not out.passed and out.status in ("wrong_output", "runtime_error"), out


def test_plain_values_cross_whole():
    """What a program returns reaches the tests as the same builtin value, or not at all."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("harness", sandbox.HARNESS)
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    value = [1, 2.5, "x", None, True, (1, (2,)), {3, 4}, frozenset({5}), {"a": [1], 2: (3,)}, b"\x00", 1j, 10 ** 1000]
    back = harness.decode(json.loads(json.dumps(harness.encode(value))))
    assert back == value and [type(v) for v in back] == [type(v) for v in value]

    class Int(int):
        pass
    for forged in (Int(3), [Int(3)], {"k": object()}, type("Yes", (), {"__eq__": lambda s, o: True})()):
        with pytest.raises(TypeError, match="is not a plain value"):
            harness.encode(forged)


# ---- HumanEval: the benchmark's own solutions pass, broken copies fail ----------------------------

BREAK = """
_original_{e} = {e}
def {e}(*args, **kwargs):
    value = _original_{e}(*args, **kwargs)
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, (list, tuple)):
        return type(value)([*value, None])
    return 0 if value is None else None
"""


def test_humaneval_agrees_with_its_ground_truth(nothing_left):
    """164 reference solutions pass and 164 broken copies fail (24 s with 2 workers on 2 AVX2 cores: two sandboxes
    per run, the program and its tests)."""
    from seqdistill.sources import problems

    rows = problems.load(problems.ProblemsConfig(source="", preset="humaneval"))
    assert len(rows) == 164
    items = []
    for row in rows:
        program = row["prompt"] + row["canonical_solution"]
        items += [(fenced(program), row["tests"]), (fenced(program + BREAK.format(e=row["entry_point"])), row["tests"])]
    verdicts = code.verify_many(items, CodeConfig(timeout=6, workers=2))
    right, broken = verdicts[::2], verdicts[1::2]
    assert [r["id"] for r, v in zip(rows, right) if not v.passed] == []
    assert [r["id"] for r, v in zip(rows, broken) if v.passed] == []


# ---- problem rows, the filter funnel and judge --------------------------------------------------

def test_code_problem_rows_from_local_files(tmp_path):
    from seqdistill.sources import problems
    from seqdistill.sources.problems import ProblemsConfig

    mbpp = tmp_path / "mbpp.jsonl"
    mbpp.write_text(json.dumps({"task_id": 2, "text": "Write is_even.", "code": "", "test_list": ["assert is_even(2)"],
                                "test_setup_code": "", "challenge_test_list": []}) + "\n")
    row = problems.load(ProblemsConfig(source=str(mbpp), preset="mbpp"))[0]
    assert (row["id"], row["question"], row["answer"]) == ("2", "Write is_even.", "")
    assert json.loads(row["tests"])["kind"] == "program"
    apps = tmp_path / "apps.jsonl"
    apps.write_text(json.dumps({"question": "Add.", **APPS_STDIN}) + "\n")
    assert json.loads(problems.load(ProblemsConfig(source=str(apps), tests="auto"))[0]["tests"])["cases"][1]["output"] == "7\n"
    apps.write_text(json.dumps({"question": "Add.", "input_output": ""}) + "\n")
    with pytest.raises(ConfigError, match="has no tests: expected field 'input_output'"):
        problems.load(ProblemsConfig(source=str(apps), tests="input_output"))
    assert "tests schema 'codeforces' is unknown; known: auto, input_output" in ProblemsConfig(tests="codeforces").validate()[0]


def test_filters_drop_code_samples_with_their_verdict(nothing_left):
    from seqdistill.checking.verify import AnswerConfig
    from seqdistill.sources import filters
    from seqdistill.sources.filters import FilterConfig

    problem = {"id": "add", "question": "Add.", "answer": "", "tests": json.dumps(code.normalize(APPS_STDIN))}
    programs = {None: ADD_STDIN, "wrong_output": "print(3)", "runtime_error": "raise SystemExit(1)",
                "timeout": "while True:\n    pass", "memory": "x = ' ' * (8 << 30)", "syntax_error": "print(("}
    samples = [{"completion": fenced(p), "finish_reason": "stop", "completion_tokens": 10} for p in programs.values()]
    samples.append({"completion": "I would add them.", "finish_reason": "stop", "completion_tokens": 4})
    out = filters.apply(samples, "", FilterConfig(), AnswerConfig(), False, problem=problem,
                        code_cfg=CodeConfig(timeout=1, workers=2))
    assert [o["drop_reason"] for o in out] == [*programs, "no_code"]
    assert out[0]["keep"] and out[0]["answer"] == ADD_STDIN + "\n" and out[1]["verdict_detail"].startswith("case 1: input 10 -3")
    assert filters.funnel([o["drop_reason"] for o in out]) == {
        "generated": 7, "finished": 7, "formatted": 6, "correct": 1, "deduplicated": 1, "kept": 1}


def test_judge_picks_the_verifier_per_problem(nothing_left):
    from seqdistill.checking.verify import AnswerConfig, judge_many

    math_row = {"id": "m", "question": "5 + 7?", "answer": "12"}
    code_row = {"id": "c", "question": "Add.", "answer": "", "tests": json.dumps(code.normalize(APPS_STDIN))}
    out = judge_many(["The answer is 12.", fenced(ADD_STDIN), fenced("print(0)"), "no idea"],
                     [math_row, code_row, code_row, math_row], AnswerConfig(), CFG)
    assert [(j.correct, j.verdict) for j in out] == [(True, "passed"), (True, "passed"), (False, "wrong_output"),
                                                     (False, "no_answer")]


def test_parallel_runs_do_not_disturb_each_other(nothing_left):
    """A fork bomb beside programs that start threads: each run has its own user and process limit."""
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    threads = ("import threading\nout = []\nts = [threading.Thread(target=out.append, args=(i,)) for i in range(8)]\n"
               "[t.start() for t in ts]\n[t.join() for t in ts]\nprint('done' if len(out) == 8 else 'lost')")
    items = [(fenced(bomb), ECHO), *[(fenced(threads), ECHO)] * 6]
    verdicts = code.verify_many(items, CFG)
    assert [v.status for v in verdicts] == ["timeout"] + ["passed"] * 6
