"""sft hands freed tensors' memory back to the OS (release_freed_memory): without it, glibc's dynamic mmap
threshold keeps blocks of a few MB in its heap, and a process holds memory long freed (see
benchmarks/results/sft_memory.md for what it does to a training run's peak RSS)."""

import subprocess
import sys

import pytest

PROBE = """
import ctypes, sys
from seqdistill import sft
if sys.argv[1] == "release":
    assert sft.release_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    return next(int(l.split()[1]) // 1024 for l in open("/proc/self/status") if l.startswith("VmRSS"))
big = libc.malloc(16 << 20); libc.free(big)  # what a large freed tensor does: glibc raises its mmap threshold
blocks = [libc.malloc(4 << 20) for _ in range(100)]  # then 400 MB of 4 MB tensors
for b in blocks:
    ctypes.memset(b, 1, 4 << 20)
before = rss()
for b in blocks[:-1]:  # all freed but the last, which pins the heap's top
    libc.free(b)
print(before, rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_blocks_leave_the_process():
    def held(mode):
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        return [int(x) for x in out.stdout.split()]

    before, after = held("default")
    assert before >= 400 and after >= 350  # glibc's default: 396 MB freed, still resident
    before, after = held("release")
    assert before >= 400 and after < before - 350  # released: what is freed leaves the process
