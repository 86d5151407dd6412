"""Run untrusted Python programs on this machine, one fresh process per run, isolated and limited.

Each run gets its own temporary working directory (HOME too), an environment with nothing but PATH,
LANG, HOME and single-thread settings, and `resource` limits on CPU time, address space, file size,
open files and processes. It starts in a new session that is killed as a group at the wall timeout,
its stdout/stderr are read up to a cap (the run is killed when it writes more), and it has no network.

Isolation (`isolation`; auto picks bubblewrap where it works, else unshare):
- `bwrap`: bubblewrap with a private root per run: /usr (and /bin, /lib links) and the interpreter
  read-only, a fresh /tmp, /proc and /dev of its own, and of the host's other files only the run's own
  directory (its working directory, also HOME, inside), the one place of the host's it can write:
  nothing of the user's home, no other run's directory. New network (loopback only), pid, ipc and uts
  namespaces. Without root it runs in a user namespace as the caller's uid (Debian allows that by
  default); as root the program runs as a uid of its own per run (below) and can write only its
  working directory.
- `unshare`: util-linux `unshare -n -p -f --mount-proc`: an empty network namespace (no interface but
  a down loopback, so every connect fails at once) and a pid namespace whose processes all die with
  its first one, on the host's filesystem. Without root (`unshare -r`) the program could read and
  write whatever the caller can; use it as root, or where bubblewrap is missing.
- `none`: no namespaces; refused for untrusted code unless `allow_unisolated` is set.

As root (either kind) the program runs as a user of its own (a uid no one else has), so the process
limit holds (root ignores RLIMIT_NPROC), files owned by others can't be written and any process or
/tmp file it leaves is found by uid and removed.

A test program (HumanEval, MBPP) runs apart from the program it tests (`run_pair`): two sandboxes, the
program's answering calls over a pipe, the tests' deciding the verdict, so nothing the program writes,
patches or returns can fake a pass. Under bubblewrap each side sees only its own run directory; as
root each side also has its own uid. Either way the program cannot read the tests' job or write their
report. The one gap left is `unshare` without root, where both share the caller's uid and filesystem.

`harness.py` (copied into each run's directory) is what runs inside; see its docstring.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from seqdistill.config import ConfigError

LANGUAGES = ("python",)  # what the sandbox can run
ISOLATIONS = ("auto", "unshare", "bwrap", "none")
HARNESS = Path(__file__).with_name("harness.py")
UID_BASE = 1_900_000_000  # sandbox users: unused uids, one per concurrent run
WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm")  # where a sandbox user could leave files behind
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",  # read-only in a private root
          "/etc/alternatives", "/etc/ld.so.cache", "/etc/localtime")
_uids = itertools.count()


@dataclass
class Limits:
    timeout: float = 6.0  # wall seconds for the whole run; its CPU-time limit is one second more
    memory_mb: int = 1024  # address space of the program
    output_mb: float = 8.0  # stdout + stderr; more kills the run
    file_mb: int = 16  # largest file the program may write
    processes: int = 32  # processes and threads of the program's own user


@dataclass
class Result:
    report: dict  # the harness's report: status ok | syntax_error | exception | assertion | timeout | memory ...
    stdout: str = ""
    stderr: str = ""
    returncode: int | None = None
    timed_out: bool = False  # killed at the wall timeout
    output_exceeded: bool = False  # killed for writing more than output_mb
    seconds: float = 0.0
    isolation: str = "none"


def check_language(language: str) -> None:
    if language.lower() not in LANGUAGES and language.lower() not in ("py", "python3"):
        raise ConfigError(f"the sandbox cannot run {language!r} programs; it runs: {', '.join(LANGUAGES)}")


@functools.lru_cache(maxsize=None)
def _works(argv: tuple) -> bool:
    try:
        return subprocess.run([*argv, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _prefix(kind: str, root: Path | None = None) -> list[str]:
    """The command that puts a program into namespaces of the given kind (bwrap: with `root` its only host dir)."""
    if kind == "unshare":
        user = [] if os.geteuid() == 0 else ["-r"]  # not root: a user namespace makes the others possible
        return ["unshare", *user, "-n", "-p", "-f", "--kill-child", "--mount-proc", "--"]
    if kind == "bwrap":
        return _private_root(root)
    return []


def _private_root(root: Path | None) -> list[str]:
    """bubblewrap with a root of its own: the system and the interpreter read-only, `root` read-write."""
    argv = ["bwrap", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session", "--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
    if os.geteuid() == 0:  # no user namespace; the harness keeps only what it needs to become the run's user
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-user"]
    made = {"/", "/tmp"}
    binds = [(path, "--ro-bind") for path in (*SYSTEM, *_interpreter_dirs())]
    if root:
        binds.append((str(root), "--bind"))
    for path, bind in binds:
        if not os.path.lexists(path):
            continue
        for parent in list(reversed(Path(path).parents))[1:]:  # bwrap would make them mode 700
            if str(parent) not in made:
                made.add(str(parent))
                argv += ["--perms", "0755", "--dir", str(parent)]
        argv += ["--symlink", os.readlink(path), path] if os.path.islink(path) else [bind, path, path]
    return [*argv, "--"]


@functools.lru_cache(maxsize=None)
def _interpreter_dirs() -> list[str]:
    """What the interpreter needs besides the system: its prefixes (a venv, pyenv) outside /usr."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.realpath(sys.executable))}
    kept: list[str] = []
    for path in sorted(paths):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in ["/usr", *kept]):
            kept.append(path)
    return kept


def isolation(mode: str = "auto", allow_unisolated: bool = False) -> str:
    """The isolation that runs here: `bwrap`, `unshare` or (only when allowed) `none`. Without root, auto takes
    unshare (the caller's files open to the program) only where unisolated runs are allowed."""
    if mode not in ISOLATIONS:
        raise ConfigError(f"isolation must be one of {', '.join(ISOLATIONS)}, got {mode!r}")
    if mode == "none":
        if not allow_unisolated:
            raise ConfigError("isolation none runs untrusted code with network and no namespaces; "
                              "set allow_unisolated: true to accept that")
        return "none"
    why = []
    for kind in ("bwrap", "unshare") if mode == "auto" else (mode,):
        if kind == "unshare" and mode == "auto" and os.geteuid() != 0 and not allow_unisolated:
            why.append("unshare without root leaves the caller's files open to the program "
                       "(set isolation: unshare to accept that)")
        elif not shutil.which(kind):
            why.append(f"{kind} is not installed" + (" (apt install bubblewrap)" if kind == "bwrap" else " (util-linux)"))
        elif not _works(tuple(_prefix(kind))):
            why.append(f"{kind} cannot make namespaces here (run as root, or allow user namespaces: "
                       "sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces, "
                       "kernel.apparmor_restrict_unprivileged_userns=0)")
        else:
            return kind
    if allow_unisolated:
        return "none"
    raise ConfigError(f"no sandbox can be made here: {'; '.join(why)}; or set allow_unisolated: true to run "
                      "untrusted code without isolation")


def describe(kind: str) -> str:
    """One line for a dataset card: which isolation the programs ran under."""
    own = os.geteuid() == 0 and (kind != "none" or not _closed_prefixes())
    user = "a uid of its own per run" if own else "the caller's uid"
    spaces = {"unshare": "unshare: new network (no interfaces up), pid and mount namespaces on the host's filesystem",
              "bwrap": "bubblewrap: a private root (system read-only, only its own directory writable), "
                       "new network (loopback only), pid, ipc and uts namespaces",
              "none": "NO isolation (allow_unisolated)"}[kind]
    return f"{spaces}; {user}; rlimits on CPU time, address space, file size, processes; output capped"


def run(job: dict, limits: Limits, kind: str, stdin: str = "") -> Result:
    """Run one harness job (mode, source, and fn_name + inputs) and return what it did."""
    with _roots(1) as [(root, uid)]:
        (root / "stdin").write_text(stdin)
        start = time.monotonic()
        with open(root / "stdin", "rb") as stdin_file:
            proc = _start(root, uid, job, limits, kind, stdin_file, subprocess.PIPE)
        [(out, err)], timed_out, exceeded = _collect([proc], start + limits.timeout, _cap(limits))
        return _result(root, proc, kind, out, err, timed_out, exceeded, start)


def run_pair(serve: dict, drive: dict, limits: Limits, kind: str) -> Result:
    """A program (`serve` job) and its tests (`drive` job) in two sandboxes, joined only by two pipes:
    drive's calls go to the program's stdin, its plain answers come back on its stdout. The result is
    drive's: the program never holds the tests, their expected values or the verdict."""
    with _roots(2) as [(serve_root, serve_uid), (drive_root, drive_uid)]:
        calls, answers = os.pipe(), os.pipe()
        start = time.monotonic()
        try:
            server = _start(serve_root, serve_uid, serve, limits, kind, calls[0], answers[1])
            driver = _start(drive_root, drive_uid, drive, limits, kind, answers[0], calls[1])
        finally:
            for fd in (*calls, *answers):
                os.close(fd)
        [(_, program_err), (_, tests_err)], timed_out, exceeded = _collect([server, driver], start + limits.timeout,
                                                                           _cap(limits))
        program = _result(serve_root, server, kind, b"", program_err, timed_out, exceeded, start)
        if program.report.get("status") == "sandbox_error":
            raise RuntimeError(f"the sandbox failed: {program.report.get('error')}")
        return _result(drive_root, driver, kind, b"", program_err + tests_err, timed_out, exceeded, start)


@contextlib.contextmanager
def _roots(n: int):
    """`n` fresh run directories (and, as root, a sandbox user for each), removed with all they left."""
    made = []
    try:
        for _ in range(n):
            root = Path(tempfile.mkdtemp(prefix=f"seqdistill-sandbox-{os.getpid()}-"))
            made.append((root, own_uids().start + next(_uids) % 1000 if os.geteuid() == 0 else None))
        yield made
    finally:
        for root, uid in made:
            if uid is not None:
                _sweep(uid)
            shutil.rmtree(root, ignore_errors=True)


def own_uids() -> range:
    """The sandbox users of this process's runs (root only)."""
    start = UID_BASE + (os.getpid() % 100_000) * 1000
    return range(start, start + 1000)


def _cap(limits: Limits) -> int:
    return int(limits.output_mb * (1 << 20))


def _start(root: Path, uid: int | None, job: dict, limits: Limits, kind: str, stdin, stdout) -> subprocess.Popen:
    work, stage = root / "work", root / "stage"
    work.mkdir()
    stage.mkdir()
    os.chmod(root, 0o755 if uid is not None else 0o700)  # a sandbox user must enter it; no one else need
    if uid is not None:
        os.chown(work, uid, uid)
        os.chmod(work, 0o700)
    shutil.copy(HARNESS, root / "harness.py")
    cpu = math.ceil(limits.timeout) + 1
    full = {**job, "cwd": str(work), "report": str(root / "report.json"), "report_bytes": 64 << 20, "wall": limits.timeout + 2,
            "uid": uid, "stage": str(stage), "expose": _closed_prefixes() if kind == "unshare" else [],
            "limits": {"RLIMIT_CPU": cpu, "RLIMIT_AS": limits.memory_mb << 20, "RLIMIT_FSIZE": limits.file_mb << 20,
                       "RLIMIT_NPROC": limits.processes, "RLIMIT_NOFILE": 256, "RLIMIT_CORE": 0}}
    if kind == "none" and _closed_prefixes():  # without a mount namespace the interpreter may be closed to others
        full["uid"] = None
    job_path = root / "job.json"
    job_path.write_text(json.dumps(full))
    os.chmod(job_path, 0o600)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work),
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    argv = [*_prefix(kind, root), sys.executable, "-I", str(root / "harness.py"), str(job_path)]
    return subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, cwd=work, env=env,
                            start_new_session=True)


def _result(root: Path, proc: subprocess.Popen, kind: str, out: bytes, err: bytes, timed_out: bool, exceeded: bool,
            start: float) -> Result:
    report_path = root / "report.json"
    if not report_path.exists() and not (timed_out or exceeded):  # pid 1 never finished: the sandbox broke
        raise RuntimeError(f"the sandbox ({kind}) did not run (exit {proc.returncode}): {err.decode(errors='replace')[-500:]}")
    try:  # empty when the program died without a word (a signal, os._exit)
        report = json.loads(report_path.read_text() or "{}") if report_path.exists() else {}
    except json.JSONDecodeError:
        report = {}
    report.setdefault("status", "no_report")
    return Result(report, out.decode(errors="replace"), err.decode(errors="replace")[-4000:], proc.returncode,
                  timed_out, exceeded, time.monotonic() - start, kind)


def _collect(procs: list[subprocess.Popen], deadline: float, cap: int) -> tuple[list[tuple[bytes, bytes]], bool, bool]:
    """Read the processes' stdout (where piped) and stderr until all close, the deadline passes or together
    they exceed `cap`; then kill what is left. Returns (stdout, stderr) per process, timed out, exceeded."""
    buffers = {stream: bytearray() for proc in procs for stream in (proc.stdout, proc.stderr) if stream}
    timed_out = exceeded = False
    with selectors.DefaultSelector() as sel:
        for stream in buffers:
            sel.register(stream, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=left):
                data = os.read(key.fd, 1 << 16)
                if not data:
                    sel.unregister(key.fileobj)
                    continue
                buffers[key.fileobj] += data
                if sum(map(len, buffers.values())) > cap:
                    exceeded = True
            if exceeded:
                break
    for proc in procs:
        if timed_out or exceeded:
            _kill_group(proc)
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()) + 1)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            proc.wait()
    for stream in buffers:
        stream.close()
    return ([(bytes(buffers.get(p.stdout, b"")[:cap]), bytes(buffers[p.stderr][:cap])) for p in procs],
            timed_out, exceeded)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@functools.lru_cache(maxsize=None)
def _closed_prefixes() -> list[str]:
    """Interpreter directories under an ancestor that other users can't enter (pyenv in /root)."""
    paths = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, os.path.dirname(sys.executable))}
    closed = []
    for path in sorted(paths):
        parts = path.strip("/").split("/")
        if any(not os.stat("/" + "/".join(parts[:i])).st_mode & 0o001 for i in range(1, len(parts))):
            closed.append(path)
    return closed


def _sweep(uid: int, wait: float = 2.0) -> None:
    """Kill every process of a sandbox user and delete its files in the world-writable directories."""
    end = time.monotonic() + wait
    while True:
        pids = [p for p in _pids_of(uid)]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not pids or time.monotonic() > end:
            break
        time.sleep(0.02)
    for base in WORLD_WRITABLE:
        try:
            entries = list(os.scandir(base))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid == uid:
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path, ignore_errors=True)
                    else:
                        os.unlink(entry.path)
            except OSError:
                pass


def _pids_of(uid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    pids.append(int(name))
            except OSError:
                pass
    return pids
