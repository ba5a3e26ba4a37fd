"""Exact and near-duplicate detection that streams: each example leaves only an 8-byte digest and a
64-value MinHash signature (datasketch) behind, so 100,000 rows cost about 30 MB.

Near duplicates are pairs whose estimated Jaccard similarity of word 3-grams is at least
``threshold`` (0.8 by default), found with locality-sensitive hashing over signature bands.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass

import numpy as np

from tunewise.data.types import Conversation

NUM_PERM = 64
BANDS = 16
MAX_SHINGLES = 500


def conversation_text(conv: Conversation) -> str:
    """The text two examples are compared on: every turn with its role (and the tools)."""
    parts = [f"{m.role}: {m.content}" + (f" {m.tool_calls}" if m.tool_calls else "") for m in conv.messages]
    if conv.tools:
        parts.append(f"tools: {conv.tools}")
    return "\n".join(parts)


def _crc(s: str) -> int:
    return zlib.crc32(s.encode("utf-8", "surrogatepass"))


# Word hashing in numpy (no per-word Python work): words are runs of ASCII letters, digits, "_"
# and any non-ASCII byte, lower-cased; each word's hash is a polynomial hash of its bytes computed
# from prefix sums (P is odd, so it has an inverse Q modulo 2**64), then mixed.
_WORD_BYTE = np.zeros(256, dtype=bool)
_WORD_BYTE[np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789_", dtype=np.uint8)] = True
_WORD_BYTE[128:] = True
_P = np.uint64(0x100000001B3)
_Q = np.uint64(pow(0x100000001B3, -1, 1 << 64))
_A, _B = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F)
_LOW32 = np.uint64(0xFFFFFFFF)
_powers: dict[str, np.ndarray] = {}


def _power_table(n: int) -> tuple[np.ndarray, np.ndarray]:
    if "p" not in _powers or len(_powers["p"]) < n:
        size = max(n, 1 << 16)
        with np.errstate(over="ignore"):
            _powers["p"] = _cumpow(_P, size)
            _powers["q"] = _cumpow(_Q, size)
    return _powers["p"], _powers["q"]


def _cumpow(base: np.uint64, n: int) -> np.ndarray:
    """[1, base, base**2, ...] modulo 2**64."""
    out = np.empty(n, dtype=np.uint64)
    out[0] = 1
    if n > 1:
        out[1:] = base
        np.multiply.accumulate(out[1:], out=out[1:])
    return out


def _mix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    return h ^ (h >> np.uint64(33))


def word_hashes(text: str) -> np.ndarray:
    """One uint64 hash per word of ``text`` (case-insensitive), in order."""
    return _word_hashes_bytes(text.lower().encode("utf-8", "surrogatepass"))[0]


def _word_hashes_bytes(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the words of lower-cased UTF-8 bytes, and the byte offset each word starts at. A
    word's hash depends only on its bytes (not on where it is), so texts joined by a non-word byte
    give every text's words the hashes they get alone."""
    data = np.frombuffer(raw, dtype=np.uint8)
    if data.size == 0:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    is_word = _WORD_BYTE[data]
    edges = np.diff(np.concatenate(([False], is_word, [False])).astype(np.int8))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    if starts.size == 0:
        return np.zeros(0, dtype=np.uint64), starts
    p, q = _power_table(data.size + 1)
    with np.errstate(over="ignore"):
        prefix = np.zeros(data.size + 1, dtype=np.uint64)
        np.cumsum(data.astype(np.uint64) * q[: data.size], out=prefix[1:])
        return _mix((prefix[ends] - prefix[starts]) * p[starts]), starts


_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))
_MAX_CHUNK_BYTES = 1 << 18  # characters hashed together (bounds the prefix-sum and power tables: ~10 MB)
_CHUNK_SHINGLES = 1 << 14  # shingles permuted together (a 4 MB matrix at 64 permutations)


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, as datasketch applies it before its affine permutations."""
    s1, m1, s2, m2, s3 = _FMIX32
    h = h ^ (h >> s1)
    h = h * m1
    h = h ^ (h >> s2)
    h = h * m2
    return h ^ (h >> s3)


def shingle_sets(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The word 3-gram hashes (32 bits) of many texts at once: ``(hashes, counts)`` where text i
    owns the next ``counts[i]`` hashes. The same multiset per text as hashing each text alone
    (first ``MAX_SHINGLES + 2`` words; texts of 1-2 words use the words, texts without words the
    CRC of the text); duplicates are kept, which a MinHash (a minimum) does not see."""
    encoded = [t.lower().encode("utf-8", "surrogatepass") for t in texts]
    lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths + 1, out=offsets[1:])  # + the "\n" joining each text to the next
    hashes, starts = _word_hashes_bytes(b"\n".join(encoded))
    text_of = np.searchsorted(offsets, starts, side="right") - 1  # which text each word is in
    n_words = np.bincount(text_of, minlength=len(texts))
    first = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(n_words, out=first[1:])
    rank = np.arange(len(hashes)) - first[text_of]  # the word's position in its text
    with np.errstate(over="ignore"):
        tri = _mix(hashes[:-2] * _A + hashes[1:-1] * _B + hashes[2:]) & _LOW32 if len(hashes) >= 3 \
            else np.zeros(0, dtype=np.uint64)
    many = n_words >= 3
    keep_tri = (text_of[:-2] == text_of[2:]) & (rank[:-2] < MAX_SHINGLES) if len(hashes) >= 3 else np.zeros(0, bool)
    keep_word = (~many[text_of]) if len(hashes) else np.zeros(0, bool)
    # Both kinds in text order: a trigram sits at the position of its first word.
    key = np.concatenate([np.flatnonzero(keep_tri), np.flatnonzero(keep_word)])
    values = np.concatenate([tri[keep_tri], hashes[keep_word] & _LOW32])
    owner = text_of[key]
    empty = np.flatnonzero(n_words == 0)
    if empty.size:
        owner = np.concatenate([owner, empty])
        values = np.concatenate([values, np.array([_crc(texts[i]) for i in empty], dtype=np.uint64)])
    order = np.argsort(owner, kind="stable")
    counts = np.bincount(owner, minlength=len(texts))
    return values[order], counts


@dataclass
class DuplicateGroups:
    exact: list[list[int]]  # groups of example ids with identical text (first id kept by dedupe)
    near: list[list[int]]  # groups joined by near-duplicate pairs (exact copies folded in)
    pairs: list[tuple[int, int, float]]  # near-duplicate pairs (id, id, estimated similarity)

    def clusters(self) -> list[list[int]]:
        """Every group of two or more ids that are exact or near copies of each other."""
        return self.near


class DuplicateFinder:
    """Feed examples with :meth:`add`; ask for :meth:`groups` at the end."""

    def __init__(self, threshold: float = 0.8, num_perm: int = NUM_PERM, bands: int = BANDS):
        from datasketch import MinHash

        if num_perm % bands:
            raise ValueError("num_perm must be a multiple of bands")
        self.threshold = threshold
        self.num_perm = num_perm
        self.bands = bands
        self._minhash = MinHash(num_perm=num_perm, seed=1, hashfunc=int, scheme="affine32")
        self._digests: dict[bytes, int] = {}
        self._exact_of: dict[int, int] = {}  # id -> first id with the same digest
        self._sigs = bytearray()
        self.n = 0

    def add_text(self, text: str) -> int:
        return self.add_texts([text])

    def add(self, conv: Conversation) -> int:
        return self.add_texts([conversation_text(conv)])

    def add_many(self, convs: list[Conversation]) -> int:
        """Add many conversations at once (much faster than one by one); returns the first id."""
        return self.add_texts([conversation_text(c) for c in convs])

    def add_texts(self, texts: list[str]) -> int:
        """Add texts in order; returns the id of the first. Signatures are exactly datasketch's
        ``MinHash(num_perm, seed=1, hashfunc=int, scheme="affine32").update_batch(shingles)``,
        computed for a whole batch of texts in a few array operations."""
        first_id = self.n
        if not texts:
            return first_id
        for text in texts:
            i = self.n
            self.n += 1
            digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
            first = self._digests.setdefault(digest, i)
            if first != i:
                self._exact_of[i] = first
        a, b = self._minhash.permutations
        chunk: list[str] = []
        size = 0
        for text in texts:
            chunk.append(text)
            size += len(text)
            if size >= _MAX_CHUNK_BYTES:
                self._sign(chunk, a, b)
                chunk, size = [], 0
        if chunk:
            self._sign(chunk, a, b)
        return first_id

    def _sign(self, texts: list[str], a: np.ndarray, b: np.ndarray) -> None:
        values, counts = shingle_sets(texts)
        bounds = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=bounds[1:])
        hv = _fmix32(values.astype(np.uint32))
        out = np.empty((len(counts), len(a)), dtype=np.uint32)
        lo = 0
        while lo < len(counts):  # whole texts per slice, ~_CHUNK_SHINGLES shingles (stays in cache)
            hi = int(np.searchsorted(bounds, bounds[lo] + _CHUNK_SHINGLES, side="right")) - 1
            hi = min(max(hi, lo + 1), len(counts))
            permuted = np.multiply.outer(a, hv[bounds[lo]:bounds[hi]])  # (perm, shingle), uint32 wraps
            permuted += b[:, None]
            out[lo:hi] = np.minimum.reduceat(permuted, bounds[lo:hi] - bounds[lo], axis=1).T
            lo = hi
        self._sigs += out.tobytes()

    def signatures(self) -> np.ndarray:
        return np.frombuffer(self._sigs, dtype=np.uint32).reshape(self.n, self.num_perm)  # a view, no copy

    def exact_of(self, i: int) -> int | None:
        return self._exact_of.get(i)

    def groups(self) -> DuplicateGroups:
        n = self.n
        parent = list(range(n))

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        def union(a: int, b: int) -> None:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)

        exact: dict[int, list[int]] = {}
        for i, first in self._exact_of.items():
            exact.setdefault(first, [first]).append(i)
            union(i, first)
        pairs: list[tuple[int, int, float]] = []
        if n > 1:
            sigs = self.signatures()
            r = self.num_perm // self.bands
            seen: set[tuple[int, int]] = set()
            for b in range(self.bands):
                band = np.ascontiguousarray(sigs[:, b * r:(b + 1) * r]).view(np.dtype((np.void, 4 * r))).ravel()
                order = np.argsort(band, kind="stable")
                sorted_band = band[order]
                starts = np.flatnonzero(np.r_[True, sorted_band[1:] != sorted_band[:-1]])
                ends = np.r_[starts[1:], len(order)]
                for s, e in zip(starts, ends):
                    if e - s < 2:
                        continue
                    members = order[s:e].tolist()
                    head = members[0]
                    for other in members[1:]:
                        a, c = (head, other) if head < other else (other, head)
                        if (a, c) in seen:
                            continue
                        seen.add((a, c))
                        if self._exact_of.get(c, c) == self._exact_of.get(a, a):
                            continue  # exact copies are reported as such
                        sim = float(np.mean(sigs[a] == sigs[c]))
                        if sim >= self.threshold:
                            pairs.append((a, c, sim))
                            union(a, c)
        clusters: dict[int, list[int]] = {}
        for i in range(n):
            root = find(i)
            if root != i:
                clusters.setdefault(root, [root]).append(i)
        near = [sorted(g) for g in clusters.values() if len(g) > 1]
        return DuplicateGroups(exact=[sorted(g) for g in exact.values()], near=sorted(near), pairs=sorted(pairs))
