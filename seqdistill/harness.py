"""Runs one untrusted program inside the sandbox (stdlib only; not imported by seqdistill).

`seqdistill.sandbox` copies this file into a fresh directory and starts `python -I harness.py JOB`,
as pid 1 of new network/pid/mount namespaces where the machine allows. The harness reads and deletes
the job, makes the interpreter reachable for the sandbox user, forks a child that drops to that user,
sets the resource limits and runs the program (and its tests), and writes the child's report as JSON
to the job's `report` path. When pid 1 exits the kernel kills everything left in the namespace.

Job modes: `stdin` (run the program as __main__, its stdout is compared by the caller), `call` (call
`fn_name` on each argument list and report the return values), `program` (run a test program with
asserts after the solution, in the same namespace).
"""

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
    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGPROF, on_alarm)
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
        if mode == "program":
            tests = compile(job["test"], "tests.py", "exec")
            alarm(seconds)
            exec(tests, namespace)
            alarm(0)
        elif mode == "call":
            fn = find_function(namespace, job["fn_name"])
            for args in job["inputs"]:
                alarm(seconds)
                results.append(plain(fn(*args)))
                alarm(0)
    except SystemExit as e:
        alarm(0)
        if mode == "stdin" and e.code in (None, 0):
            return {"status": "ok"}
        return {"status": "exception", "error": f"SystemExit: {e.code}", "results": results}
    except CaseTimeout:
        return {"status": "timeout", "case": len(results), "results": results}
    except MemoryError:
        alarm(0)
        return {"status": "memory", "case": len(results), "results": results}
    except RecursionError as e:
        alarm(0)
        return {"status": "exception", "error": f"RecursionError: {e}", "case": len(results), "results": results}
    except BaseException as e:
        alarm(0)
        report = {"status": "exception", "error": f"{type(e).__name__}: {e}"[:1000], "case": len(results),
                  "results": results}
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == "tests.py"]
        if isinstance(e, AssertionError) and mode == "program" and frames:
            report.update(status="assertion", line=job["test"].splitlines()[frames[-1].lineno - 1].strip()[:500])
        return report
    return {"status": "ok", "results": results}


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
