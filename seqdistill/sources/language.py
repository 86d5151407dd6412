"""Which writing system a trace is in: the share of its words in scripts other than the target one.

DeepSeek-R1-Zero's traces drift from English into Chinese mid-reasoning; R1 rewards the share of target-language
words in the chain of thought, and `filters.language` drops a trace whose foreign share is above
`filters.max_foreign_share` (reason `language_mixed`). A word is a run of letters of one script; a Han, kana or
Thai character counts as a word of its own (those scripts put no spaces between words). Digits, punctuation,
math symbols, tags (`<think>`), LaTeX (`$...$`, `\\(...\\)`, `\\[...\\]` and `\\commands`), one-letter Latin words (variables),
Greek letters (angles, constants; unless the target is greek) and letter-like math symbols (ℝ, 𝑥) are not counted.
"""

from __future__ import annotations

import re
import unicodedata
from itertools import groupby

# filters.language value -> the scripts (first word of a letter's Unicode name) that are not foreign
LANGUAGES: dict[str, set[str]] = {
    "latin": {"LATIN"}, "english": {"LATIN"},
    "cyrillic": {"CYRILLIC"}, "russian": {"CYRILLIC"},
    "chinese": {"CJK"}, "japanese": {"CJK", "HIRAGANA", "KATAKANA"}, "korean": {"HANGUL", "CJK"},
    "arabic": {"ARABIC"}, "hebrew": {"HEBREW"}, "greek": {"GREEK"}, "devanagari": {"DEVANAGARI"}, "thai": {"THAI"},
}
PER_CHARACTER = {"CJK", "HIRAGANA", "KATAKANA", "THAI"}  # no spaces between words: each character is a word
NEUTRAL = {"GREEK", "MATHEMATICAL", "DOUBLE-STRUCK", "SCRIPT", "BLACK-LETTER", "MODIFIER", "PLANCK", "ANGSTROM",
           "KELVIN", "OHM", "UNKNOWN"}  # math letters, unnamed ones; GREEK counts only for a greek target
MARKUP = re.compile(r"</?\w+>|\$\$.*?\$\$|\$[^$\n]*\$|\\\(.*?\\\)|\\\[.*?\\\]|\\[A-Za-z]+", re.S)
LETTERS = re.compile(r"[^\W\d_]+")


def script(ch: str) -> str | None:
    """The script of a letter as the first word of its Unicode name (LATIN, CYRILLIC, CJK, HANGUL, ...); None for
    anything but a letter."""
    if not ch.isalpha():  # \w also matches superscript digits (²) and other numerals
        return None
    name = unicodedata.name(ch, "")
    for prefix in ("FULLWIDTH ", "HALFWIDTH "):
        name = name.removeprefix(prefix)
    return name.split(" ", 1)[0] if name else "UNKNOWN"


def script_words(text: str) -> dict[str, int]:
    """Words per script in a text, tags, LaTeX and one-letter Latin words left out."""
    counts: dict[str, int] = {}
    for run in LETTERS.findall(MARKUP.sub(" ", text)):
        # the common case without a Unicode name lookup per letter; else split the run where its script changes
        segments = [("LATIN", run)] if run.isascii() else [(s, "".join(g)) for s, g in groupby(run, key=script)]
        for s, segment in segments:
            if s is None or (s == "LATIN" and len(segment) == 1):
                continue
            counts[s] = counts.get(s, 0) + (len(segment) if s in PER_CHARACTER else 1)
    return counts


def foreign_share(text: str, language: str) -> float:
    """Share of a text's counted words that are in a script other than `language`'s (0 when none are counted)."""
    target = LANGUAGES[language]
    counts = {s: n for s, n in script_words(text).items() if n and (s in target or s not in NEUTRAL)}
    total = sum(counts.values())
    return sum(n for s, n in counts.items() if s not in target) / total if total else 0.0
