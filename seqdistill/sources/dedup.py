"""Near-duplicate problems across sources: MinHash signatures of word 3-gram sets, banded into an LSH index.

A problem is a near-duplicate when its word 3-gram set has Jaccard similarity >= the threshold with a problem
kept before it (source order: the first occurrence stays). LSH only proposes candidates (so the work grows with
the problems, not their pairs); each candidate's Jaccard similarity is then computed exactly, so nothing under
the threshold is ever removed. The bands are chosen so that a pair exactly at the threshold is proposed with
probability >= 0.99 (higher above it). Shingles are hashed with CRC32 and permuted by seeded universal hashes:
the same problems give the same result on every machine and Python run (Python's own hash() is salted).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from seqdistill.sources.filters import jaccard, ngrams, words

NUM_PERM = 128  # hash functions per signature
PRIME = (1 << 31) - 1  # universal hashing (a * x + b) mod PRIME: products fit in uint64
RECALL_AT_THRESHOLD = 0.99
SHINGLE = 3  # words per shingle, as the per-problem near_duplicate filter uses


@dataclass
class Duplicate:
    index: int  # the removed problem's position in the input
    of: int  # the earlier, kept problem it repeats
    similarity: float  # their exact Jaccard similarity


def shingles(text: str) -> set[tuple]:
    """Word 3-grams of a lowercased text (a text under 3 words is one shingle)."""
    tokens = words(text)
    return set(ngrams(tokens, SHINGLE)) or {tuple(tokens)}


def bands(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows per band): the most rows (fewest candidates) that still propose a pair at the threshold
    with probability RECALL_AT_THRESHOLD."""
    for rows in range(num_perm, 0, -1):
        b = num_perm // rows
        if 1 - (1 - threshold**rows) ** b >= RECALL_AT_THRESHOLD:
            return b, rows
    return num_perm, 1


def signatures(sets: list[set[tuple]], seed: int = 0, num_perm: int = NUM_PERM) -> np.ndarray:
    """MinHash signatures, one row per set: uint64, num_perm columns. One set at a time: its (shingles x num_perm)
    block stays in cache, which measured faster than one array for many sets."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, PRIME, num_perm, dtype=np.uint64)
    b = rng.integers(0, PRIME, num_perm, dtype=np.uint64)
    prime = np.uint64(PRIME)  # numpy 1.x turns uint64 mixed with a Python int into float64
    out = np.empty((len(sets), num_perm), dtype=np.uint64)
    for i, s in enumerate(sets):  # (a * x + b) mod PRIME of every shingle hash x; the minimum per permutation
        x = np.fromiter((zlib.crc32("\x1f".join(g).encode()) % PRIME for g in s), dtype=np.uint64, count=len(s))
        out[i] = ((np.outer(x, a) + b) % prime).min(axis=0)
    return out


def near_duplicates(texts: list[str], threshold: float, seed: int = 0) -> list[Duplicate]:
    """The texts that repeat an earlier kept one (Jaccard of word 3-gram sets >= threshold), in input order."""
    sets = [shingles(t) for t in texts]
    sig = signatures(sets, seed)
    n_bands, rows = bands(threshold)
    buckets: list[dict[bytes, list[int]]] = [{} for _ in range(n_bands)]
    found = []
    for i, s in enumerate(sets):
        keys = [sig[i, k * rows : (k + 1) * rows].tobytes() for k in range(n_bands)]
        candidates = {j for band, key in zip(buckets, keys) for j in band.get(key, ())}
        best = max(((jaccard(s, sets[j]), -j) for j in candidates), default=(0.0, 0))
        if best[0] >= threshold:
            found.append(Duplicate(i, -best[1], round(best[0], 4)))
            continue
        for band, key in zip(buckets, keys):  # only kept texts enter the index
            band.setdefault(key, []).append(i)
    return found
