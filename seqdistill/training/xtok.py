"""Logit KD across tokenizers: which teacher token lines up with which student token, and which teacher id is
which student id (the losses are kd_loss.uld_topk and kd_loss.hybrid_topk).

The teacher's sampled ids are read back as UTF-8 bytes and decoded to the completion text; the student
tokenizes that text. Each token covers the bytes it decodes to (byte-level BPE: the token string read back
through GPT-2's byte map; added tokens: their content), so both tokenizations lie on the same bytes. A byte
offset where both start a token is a common boundary; the bytes up to the next one form a group: one token
on each side where the tokenizers agree, several on one or both where they split differently (12345.678,
runs of spaces, a CJK character cut into byte pieces). Each group gives one aligned pair, its first teacher
token and its first student token: both models predict it after reading exactly the same text (in logit
terms: the logits at the last token of the previous group). Later tokens of a group follow text the other
model has not read; they are not distilled (the cross-entropy still trains them). The same tokenizer on
both sides makes every group one token: the identity alignment. A teacher that ends its turn with a special
token has it aligned with the student's end-of-turn token.

The vocabularies are matched the same way: a teacher id and a student id that decode to the same bytes are
one token (GOLD's "shared vocabulary"), the part of the two distributions an exact KL can compare.

Bytes rather than the fast tokenizer's offset mapping: offsets give the byte pieces of one character that
character's whole span, and ByteLevel's trim_offsets moves spaces out of spans, so offsets lose boundaries
that the bytes keep. Tokenizers that are not byte-level (SentencePiece with byte fallback) are refused.
"""

from __future__ import annotations

import numpy as np


def is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and "ByteLevel" in repr(backend.decoder)


def check_pair(student, teacher, student_name: str, teacher_name: str) -> list[str]:
    """What keeps this pair from cross-tokenizer KD (before any model loads)."""
    return [f"kd.cross_tokenizer reads tokens as bytes and needs byte-level BPE tokenizers (GPT-2, Llama 3, Qwen2, "
            f"SmolLM2 families); {role} {name}'s is not: pick a byte-level {role} or set kd.mode none"
            for role, name, tok in (("student", student_name, student), ("teacher", teacher_name, teacher))
            if not is_byte_level(tok)]


def byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character -> byte (printable bytes stand for themselves, others are shifted
    past 255), as every byte-level BPE vocabulary writes its tokens."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(shifted)}}


def vocab_bytes(tokenizer) -> list[bytes]:
    """The bytes each id of a byte-level tokenizer decodes to (added tokens: their content)."""
    decoder = byte_decoder()
    added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
    size = max(len(tokenizer), max(added, default=-1) + 1)
    tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
    return [added[i].encode() if i in added else
            bytes(decoder[c] if c in decoder else ord(c) for c in t) if t is not None else b""
            for i, t in enumerate(tokens)]


def id_map(teacher_pieces: list[bytes], student_pieces: list[bytes]) -> np.ndarray:
    """Per teacher id, the student id that decodes to the same bytes, or -1: the shared part of the two vocabularies.

    One teacher id per student id (where a vocabulary spells the same bytes twice, the lowest id takes them), so
    no student probability is counted twice; empty tokens match nothing."""
    student = {}
    for j, piece in enumerate(student_pieces):
        if piece:
            student.setdefault(piece, j)
    out = np.full(len(teacher_pieces), -1, np.int64)
    taken = set()
    for i, piece in enumerate(teacher_pieces):
        j = student.get(piece, -1) if piece else -1
        if j >= 0 and j not in taken:
            out[i] = j
            taken.add(j)
    return out


def starts(ids, pieces: list[bytes], text: bytes) -> np.ndarray:
    """The byte offset in `text` where each token starts; -1 for tokens that start past the first byte where the
    tokens' bytes and the text disagree (a normalizer that rewrote the text, a character cut off at the end):
    a token is aligned when the text before it is the text, even if the token itself runs past it."""
    lengths = np.fromiter((len(pieces[i]) if 0 <= i < len(pieces) else 0 for i in ids), np.int64, len(ids))
    begins = np.cumsum(lengths) - lengths
    joined = b"".join(pieces[i] if 0 <= i < len(pieces) else b"" for i in ids)
    agree = len(text) if joined == text else common_prefix(joined, text)
    return np.where(begins <= agree, begins, -1)


def common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    differ = np.frombuffer(a[:n], np.uint8) != np.frombuffer(b[:n], np.uint8)
    return int(differ.argmax()) if differ.any() else n


def align(teacher_starts, student_starts) -> tuple[np.ndarray, np.ndarray]:
    """(teacher index, student index) pairs, in text order: at every common boundary, the first token on each side."""
    first_teacher, first_student = {}, {}
    for i, s in enumerate(np.asarray(teacher_starts).tolist()):
        if s >= 0:
            first_teacher.setdefault(s, i)
    for j, s in enumerate(np.asarray(student_starts).tolist()):
        if s >= 0:
            first_student.setdefault(s, j)
    common = sorted(first_teacher.keys() & first_student.keys())
    return (np.array([first_teacher[s] for s in common], np.int64), np.array([first_student[s] for s in common], np.int64))


def utf8(raw: bytes) -> str:
    """The text of a byte string; a multi-byte character cut off at the end (a truncated sample) is dropped."""
    try:
        return raw.decode()
    except UnicodeDecodeError as e:
        if e.end == len(raw) and "unexpected end" in e.reason:
            return raw[: e.start].decode(errors="replace")
        return raw.decode(errors="replace")


class Aligner:
    """A student and a teacher tokenizer with their byte vocabularies and the teacher id -> student id map, read
    once per dataset."""

    def __init__(self, student, teacher):
        self.student, self.teacher = student, teacher
        self.student_pieces, self.teacher_pieces = vocab_bytes(student), vocab_bytes(teacher)
        self.to_student = id_map(self.teacher_pieces, self.student_pieces)  # teacher id -> student id, -1: not shared
        self.teacher_special = {i for i, t in teacher.added_tokens_decoder.items() if t.special} | set(teacher.all_special_ids)

    def text(self, sampled) -> str:
        """The completion text the teacher's sampled ids spell (a closing special token left out)."""
        return utf8(b"".join(self.teacher_pieces[i] for i in self.body(sampled)))

    def body(self, sampled) -> list[int]:
        sampled = [int(i) for i in sampled]
        return sampled[:-1] if sampled and sampled[-1] in self.teacher_special else sampled

    def pairs(self, teacher_ids, student_ids, text: str) -> tuple[np.ndarray, np.ndarray]:
        raw = text.encode()
        return align(starts(teacher_ids, self.teacher_pieces, raw), starts(student_ids, self.student_pieces, raw))

    def tails(self, teacher_ids, teacher_text: str, student_ids, student_text: str) -> tuple[np.ndarray, np.ndarray]:
        """pairs() when one side's completion text is the end of the other's (a chat template that opens the think
        block itself has "<think>\n" in its prompt, not its completion): both are laid on the longer text's bytes."""
        t_raw, s_raw = teacher_text.encode(), student_text.encode()
        width = max(len(t_raw), len(s_raw))
        t, s = starts(teacher_ids, self.teacher_pieces, t_raw), starts(student_ids, self.student_pieces, s_raw)
        return align(np.where(t >= 0, t + width - len(t_raw), -1), np.where(s >= 0, s + width - len(s_raw), -1))

    def positions(self, teacher_ids, teacher_text: str, student_ids, student_text: str, head: int) -> list[int]:
        """Per teacher completion token, then its end of turn, the student position it is aligned with (-1: none):
        the student's completion tokens start at `head` and are closed by its own end of turn."""
        positions = np.full(len(teacher_ids) + 1, -1, np.int64)
        t_idx, s_idx = self.tails(teacher_ids, teacher_text, student_ids, student_text)
        positions[t_idx] = head + s_idx
        positions[-1] = head + len(student_ids)  # end of turn against end of turn
        return positions.tolist()

    def row(self, head: list[int], sampled, eot_id: int) -> tuple[list[int], list[int]]:
        """input_ids = head + the student's tokens for the teacher's text + eot_id, and per teacher token the
        student position whose distribution it is compared with (-1: not aligned)."""
        body = self.body(sampled)
        text = self.text(sampled)
        ids = self.student(text, add_special_tokens=False)["input_ids"]
        positions = np.full(len(sampled), -1, np.int64)
        t_idx, s_idx = self.pairs(body, ids, text)
        positions[t_idx] = len(head) + s_idx
        if len(body) < len(sampled):  # the teacher ended its turn: its end token against the student's
            positions[-1] = len(head) + len(ids)
        return head + ids + [eot_id], positions.tolist()

    def check(self, sampled_rows, completions, teacher_name: str) -> list[str]:
        """The stored ids must be the teacher tokenizer's: in its vocabulary, and decoding to the dataset's completions."""
        top = max((int(max(s)) for s in sampled_rows if len(s)), default=-1)
        if top >= len(self.teacher_pieces):
            return [f"teacher log-probs hold token id {top}, outside teacher {teacher_name}'s vocabulary "
                    f"({len(self.teacher_pieces)} tokens): the dataset's `teacher` column does not name the model that scored it"]
        pairs = [(self.text(s), c) for s, c in zip(sampled_rows, completions) if len(s)]
        if pairs and sum(text.strip() in c for text, c in pairs) < len(pairs) / 2:
            return [f"teacher {teacher_name}'s tokenizer decodes the stored token ids to text that is not the dataset's "
                    f"completions (first: {pairs[0][0][:40]!r}): the `teacher` column does not name the model that scored it"]
        return []
