"""Text matching as the rubric does it: on a folded copy of the text (NFKD, combining marks stripped,
casefolded: "Cláudio" == "claudio"), on whole words and whole phrases, never inside a longer word.
Capitalisation, which the "other name" rule needs, is read back from the original text through the
index map `normalise_with_map` returns. Ground: imports nothing of the package.
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache


def _fold(s: str) -> str:
    s = unicodedata.normalize("NFKD", s)
    s = "".join(c for c in s if not unicodedata.combining(c)).casefold()
    # casefold can bring back a combining mark ("İ" -> "i̇"), so strip once more
    s = unicodedata.normalize("NFKD", s)
    return "".join(c for c in s if not unicodedata.combining(c))


def normalise_with_map(text: str) -> tuple[str, list[int]]:
    """Normalised text plus, for each of its characters, the index of the original character.
    Folding char by char gives the same string as folding the whole text (NFKD decomposes per
    character and the marks it would reorder are stripped), and keeps the mapping exact."""
    out: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        f = ch.lower() if ch.isascii() else _fold(ch)
        out.append(f)
        index.extend([i] * len(f))
    return "".join(out), index


def normalise(text: str) -> str:
    return normalise_with_map(text)[0]


@lru_cache(maxsize=4096)
def term_regex(term: str) -> re.Pattern[str]:
    """Whole-word / whole-phrase pattern for a normalised term. An end that is a word character
    must not touch another word character ("tipo" not in "tipografia", "Phi" not in "Phillip");
    an end that is not ("<|endoftext|>", "🦞", "$ ", "C:\\") is matched as a plain substring
    there, since a leaked token glued to a word ("tá<|endoftext|>") must still count.
    Inner whitespace matches any whitespace run."""
    t = normalise(term)
    body = "".join(r"\s+" if p.isspace() else re.escape(p) for p in re.split(r"(\s+)", t) if p)
    left = r"(?<!\w)" if re.match(r"\w", t[0]) else ""
    right = r"(?!\w)" if re.match(r"\w", t[-1]) else ""
    return re.compile(left + body + right)


def found(norm: str, terms: list[str]) -> list[str]:
    """The terms (as the data spells them) that occur in the normalised text, deduplicated."""
    seen: dict[str, str] = {}
    for term in terms:
        if term.strip() and normalise(term) not in seen and term_regex(term).search(norm):
            seen[normalise(term)] = term
    return list(seen.values())
