"""Runs one untrusted program inside the sandbox (stdlib only; not imported by seqdistill).

`seqdistill.checking.sandbox` copies this file into a fresh directory and starts `python -I harness.py JOB`
as the first process of new network/pid/mount namespaces (under bubblewrap, in a private root that shows
of the host's files only the system, the interpreter and that directory). The harness reads and deletes
the job, makes the interpreter reachable for the sandbox user (`unshare` as root only), forks a child
that drops to that user (as root), sets the resource limits and runs the program (and its tests), and
writes the child's report as JSON to the job's `report` path. When it exits the kernel kills everything
left in the namespace.

Job modes: `stdin` (run the program as __main__, its stdout is compared by the caller), `call` (call
`fn_name` on each argument list and report the return values), and a pair for test programs (HumanEval,
MBPP) that keeps the verdict out of the program's reach: `serve` runs the program and answers calls of
its functions, one JSON line each way over stdin/stdout; `drive`, another sandbox, runs the problem's own
code and test program with those functions replaced by proxies that send the arguments to `serve` and
get back plain values (exact builtin types, never the program's objects, so an `__eq__` can't lie). The
program never sees the tests, their expected values or the report of `drive`; all it can do is answer.
"""

import builtins
import ctypes
import json
import os
import resource
import signal
import stat
import sys
import threading
import traceback

MS_BIND, MS_REC = 4096, 16384


class CaseTimeout(BaseException):
    """Raised by the per-case alarm; a BaseException so `except Exception` in the program can't swallow it."""


class Failed(BaseException):
    """In `drive`: the program failed (its status and error); tests can't catch it with `except Exception`."""

    def __init__(self, status: str, error: str = ""):
        super().__init__(error)
        self.status, self.error = status, error


def main() -> None:
    job_path = sys.argv[1]
    with open(job_path) as f:
        job = json.load(f)
    os.unlink(job_path)
    if job.get("uid") is not None and job.get("expose"):
        for path in job["expose"]:
            expose(path, job["stage"])
    # a wall clock of its own, so nothing outlives the run even if the caller died
    signal.signal(signal.SIGALRM, lambda *_: os._exit(137))
    signal.setitimer(signal.ITIMER_REAL, job["wall"])
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        child(job, write_end)
    os.close(write_end)
    chunks: list[bytes] = []
    reader = threading.Thread(target=drain, args=(read_end, chunks, job["report_bytes"]), daemon=True)
    reader.start()
    _, status = os.waitpid(pid, 0)
    reader.join(timeout=0.5)  # a grandchild may hold the pipe open; it dies with this namespace
    with open(job["report"], "wb") as f:
        f.write(b"".join(chunks))
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


def drain(fd: int, chunks: list, limit: int) -> None:
    size = 0
    while data := os.read(fd, 65536):
        size += len(data)
        if size <= limit:
            chunks.append(data)


def expose(path: str, stage: str) -> None:
    """Make `path` reachable for the sandbox user when an ancestor is closed to others (pyenv under
    /root, mode 700): bind the branch aside, cover the ancestor with an empty tmpfs, bind it back."""
    libc = ctypes.CDLL(None, use_errno=True)

    def call(fn, *args):
        if fn(*[a.encode() if isinstance(a, str) else a for a in args]) != 0:
            raise OSError(ctypes.get_errno(), f"{fn.__name__}{args}")

    for _ in range(8):
        parts = os.path.realpath(path).strip("/").split("/")
        closed = [i for i in range(1, len(parts)) if not os.stat("/" + "/".join(parts[:i])).st_mode & stat.S_IXOTH]
        if not closed:
            return
        blocked = "/" + "/".join(parts[: closed[0]])  # e.g. /root
        branch = "/" + "/".join(parts[: closed[0] + 1])  # e.g. /root/.pyenv
        call(libc.mount, branch, stage, None, MS_BIND | MS_REC, None)
        call(libc.mount, "tmpfs", blocked, "tmpfs", 0, "mode=755,size=1m")
        os.mkdir(branch)
        call(libc.mount, stage, branch, None, MS_BIND | MS_REC, None)
        call(libc.umount2, stage, 2)  # MNT_DETACH
    raise OSError(f"cannot make {path} reachable for the sandbox user")


def child(job: dict, write_end: int) -> None:
    try:
        uid = job.get("uid")
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        limits = job["limits"]
        for name, value in limits.items():  # CPU: SIGXCPU at the soft limit (a timeout), SIGKILL a second later
            resource.setrlimit(getattr(resource, name), (value, value + (name == "RLIMIT_CPU")))
        os.chdir(job["cwd"])
        report = run(job)
    except BaseException as e:  # a failure of the harness itself, reported rather than hidden
        report = {"status": "sandbox_error", "error": f"{type(e).__name__}: {e}"}
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    try:
        os.write(write_end, json.dumps(report, default=repr).encode())
    except BaseException:
        pass
    os._exit(0)


def alarm(seconds: float) -> None:
    """Limit the next case to `seconds` of CPU time, and to twice that plus a second of wall time
    (a sleeping program uses no CPU; a loaded machine stretches the wall clock)."""
    signal.setitimer(signal.ITIMER_PROF, seconds)
    signal.setitimer(signal.ITIMER_REAL, 2 * seconds + 1 if seconds else 0)


def on_alarm(signum, frame):
    raise CaseTimeout()


def run(job: dict) -> dict:
    mode, seconds = job["mode"], job["case_timeout"]
    sys.argv = ["solution.py"]
    sys.set_int_max_str_digits(0)  # big integers cross the JSON channel whole
    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGPROF, on_alarm)
    if mode == "drive":
        return drive(job)
    if mode == "serve":  # the channel to `drive` gets fds of its own; the program's prints go to stderr
        channel = os.fdopen(os.dup(0), "rb"), os.fdopen(os.dup(1), "wb")
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(2, 1)
    try:
        code = compile(job["source"], "solution.py", "exec")
    except (SyntaxError, ValueError) as e:
        return {"status": "syntax_error", "error": f"{type(e).__name__}: {e}"}
    namespace = {"__name__": "__main__" if mode == "stdin" else "solution", "__builtins__": __builtins__}
    results: list = []
    try:
        alarm(seconds)
        exec(code, namespace)
        alarm(0)
        if mode == "serve":
            return serve(namespace, seconds, *channel)
        if mode == "call":
            fn = find_function(namespace, job["fn_name"])
            for args in job["inputs"]:
                alarm(seconds)
                results.append(plain(fn(*args)))
                alarm(0)
    except BaseException as e:
        report = {**failure(e), "case": len(results), "results": results}
        if mode == "stdin" and isinstance(e, SystemExit) and e.code in (None, 0):
            report = {"status": "ok"}
        if mode == "serve":  # tell `drive` why the program never answered
            send(channel[1], {"failed": report["status"], "error": report.get("error", "")})
        return report
    return {"status": "ok", "results": results}


def failure(e: BaseException) -> dict:
    """The report of a run that raised `e`."""
    alarm(0)
    if isinstance(e, CaseTimeout):
        return {"status": "timeout"}
    if isinstance(e, MemoryError):
        return {"status": "memory"}
    if isinstance(e, SystemExit):
        return {"status": "exception", "error": f"SystemExit: {e.code}"}
    return {"status": "exception", "error": f"{type(e).__name__}: {e}"[:1000]}


# ---- the test-program pair: `serve` answers calls, `drive` runs the tests ------------------------------

def send(stream, message: dict) -> None:
    stream.write(json.dumps(message).encode() + b"\n")
    stream.flush()


def serve(namespace: dict, seconds: float, requests, answers) -> dict:
    """Answer `{"name", "args"}` lines with `{"value"}` (plain, encoded) or why not, until `drive` hangs up."""
    send(answers, {"ready": True})
    calls = 0
    while line := requests.readline():
        request = json.loads(line)
        try:
            fn = find_function(namespace, request["name"])
            args = decode(request["args"])
            alarm(seconds)
            value = fn(*args)
            alarm(0)
            answer = {"value": encode(value)}
        except BaseException as e:  # SystemExit and the alarm too: the call failed, the caller decides
            report = failure(e)
            answer = {"failed": report["status"], "error": report.get("error", "")}
        send(answers, answer)
        calls += 1
        if answer.get("failed") in ("timeout", "memory"):
            break
    return {"status": "ok", "calls": calls}


def drive(job: dict) -> dict:
    """Run the problem's code and test program with `job["names"]` answered by `serve` (stdin/stdout)."""
    requests, answers = os.fdopen(os.dup(1), "wb"), os.fdopen(os.dup(0), "rb")
    os.dup2(2, 1)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}

    def proxy(name: str):
        def call(*args):
            send(requests, {"name": name, "args": encode(list(args))})
            return receive(answers)["value"]
        call.__name__ = name
        return call

    try:
        hello = receive(answers)
        if not hello.get("ready"):
            raise Failed("exception", "the program's first answer was not its greeting")
        exec(compile(job["context"], "context.py", "exec"), namespace)
        namespace.update({name: proxy(name) for name in job["names"]})
        tests = compile(job["test"], "tests.py", "exec")
        alarm(job["case_timeout"])
        exec(tests, namespace)
        alarm(0)
    except Failed as e:
        alarm(0)
        return {"status": e.status, "error": e.error}
    except BaseException as e:
        report = failure(e)
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == "tests.py"]
        if isinstance(e, AssertionError) and frames:
            report.update(status="assertion", line=job["test"].splitlines()[frames[-1].lineno - 1].strip()[:500])
        return report
    return {"status": "ok"}


def receive(answers) -> dict:
    """The next answer of `serve`; a program that died, lied about the format or failed is `Failed`."""
    line = answers.readline()
    if not line:
        raise Failed("exception", "the program ended before answering")
    try:
        message = json.loads(line)
        if "value" in message:
            message["value"] = decode(message["value"])
    except (ValueError, TypeError, KeyError) as e:
        raise Failed("exception", f"the program answered something that is not a plain value ({type(e).__name__})")
    if "failed" in message:
        error = str(message.get("error", ""))[:1000]
        kind = error.split(":", 1)[0]
        exc = getattr(builtins, kind, None)  # a builtin exception is raised as itself, for tests that expect it
        if message["failed"] == "exception" and isinstance(exc, type) and issubclass(exc, Exception):
            raise exc(error.split(":", 1)[-1].strip())
        raise Failed(str(message["failed"]), error)
    return message


def encode(value):
    """A plain value as JSON: exact builtin types only (a subclass or any other object is refused)."""
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if kind is list:
        return [encode(v) for v in value]
    if kind in (tuple, set, frozenset):
        return {kind.__name__: [encode(v) for v in value]}
    if kind is dict:
        return {"dict": [[encode(k), encode(v)] for k, v in value.items()]}
    if kind is bytes:
        return {"bytes": value.hex()}
    if kind is complex:
        return {"complex": [value.real, value.imag]}
    raise TypeError(f"a {kind.__name__} object is not a plain value (int, float, str, list, tuple, dict, ...)")


def decode(value):
    """The inverse of `encode`; builds nothing but builtin values."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    (kind, items), = value.items()
    if kind in ("tuple", "set", "frozenset"):
        return {"tuple": tuple, "set": set, "frozenset": frozenset}[kind](decode(v) for v in items)
    if kind == "dict":
        return {decode(k): decode(v) for k, v in items}
    if kind == "bytes":
        return bytes.fromhex(items)
    if kind == "complex":
        return complex(*items)
    raise ValueError(f"unknown kind {kind!r}")


def find_function(namespace: dict, name: str):
    """A top-level function, or the method of LeetCode's `class Solution`."""
    if callable(namespace.get(name)):
        return namespace[name]
    if isinstance(namespace.get("Solution"), type) and hasattr(namespace["Solution"], name):
        return getattr(namespace["Solution"](), name)
    raise NameError(f"the program defines no function {name!r} (nor Solution.{name})")


def plain(value):
    """Return values as JSON values: tuples become lists; what JSON can't hold becomes its repr."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return {"__repr__": repr(value)[:1000]}


if __name__ == "__main__":
    main()
