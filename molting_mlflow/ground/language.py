"""Languages the rubric knows, as data: a language's stop words (`data/languages/<ISO 639-1 code>.txt`,
D3's "mainly in the persona's language") and how its answers say who they are (`<code>.yaml`: the
claims, denials, negations and articles D1 and D5 (d) read, and `molting chat`'s label). A persona card
names its language (`language: pt`); adding a language is adding its two files.

Why these lists and not a maintained collection: the lists of `stop-words` (python-stop-words) and
`stopwords-iso` were tried. Their English lists (1,232 and 1,298 words) hold "la", "s", "show",
"today", so that "Tudo certo, João, bora lá!</s>" counted more English than Portuguese stop words
and lost its voice points (a labelled case of tests/test_rubric.py); the Portuguese list of
`stop-words` lacks "tudo" and "você". Short, hand-checked lists of function words decide short
chat answers correctly, and each language's file says where its words came from.
"""
from __future__ import annotations

import re
from functools import lru_cache

import yaml

from molting_mlflow.ground.paths import DATA_DIR

LANGUAGE_DIR = DATA_DIR / "languages"
# A text is "mainly" in language L when at least this share of its word tokens are L's stop words
# and it has more of them than of any other known language's stop words that are not L's. Running
# prose has 35–50 % stop words; 0.15 leaves room for short, name-heavy replies ("Ele pratica tênis
# todo dia, João." is 1/6), while English text with a few Portuguese names fails the second test.
SHARE_MIN = 0.15


@lru_cache(maxsize=1)
def languages() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in LANGUAGE_DIR.glob("*.txt")))


LANGUAGES = languages()
# The word lists of a language's .yaml; every one is read in answers of every language (rubric.py)
WORD_LISTS = ("name_claims", "maker_claims", "denials", "negations", "negation_suffixes", "articles",
              "self_descriptions", "not_names")


@lru_cache(maxsize=None)
def language_words(lang: str) -> dict:
    """`lang`'s .yaml: `you` (a string) and the WORD_LISTS (lists of folded phrases; a missing list is empty)."""
    path = LANGUAGE_DIR / f"{lang}.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    unknown = set(data) - {"you", *WORD_LISTS}
    if unknown:   # a misspelt list would be read as empty: never silently
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; expected you, {', '.join(WORD_LISTS)}")
    return {"you": str(data.get("you", "you")), **{k: tuple(data.get(k) or ()) for k in WORD_LISTS}}


def every(key: str) -> tuple[str, ...]:
    """One word list of all languages, without repeats, in LANGUAGES' order and each file's."""
    return tuple(dict.fromkeys(w for lang in LANGUAGES for w in language_words(lang)[key]))


# The user's turn label in `molting chat`, by the persona's language (English for one not listed).
YOU = {lang: language_words(lang)["you"] for lang in LANGUAGES}


@lru_cache(maxsize=None)
def stop_words(lang: str) -> frozenset:
    """The folded stop words of `lang` (its data file; `#` lines are comments)."""
    path = LANGUAGE_DIR / f"{lang}.txt"
    return frozenset(w.strip() for w in path.read_text(encoding="utf-8").splitlines()
                     if w.strip() and not w.startswith("#"))


def words(folded: str) -> list[str]:
    """The word tokens of folded text that the test counts (letters only: no digits, no emoji)."""
    return re.findall(r"[^\W\d_]+", folded)


def mainly_in(tokens: list[str], lang: str) -> tuple[bool, str]:
    """Whether folded word tokens are mainly in `lang`, and the counts that decided it. Words in both
    lists ("a", "as", "do", "me", "so" in pt and en) count for `lang` only: another language has
    plenty of its own to outweigh them, while a short reply may have nothing else. A reply with no
    stop word of any known language ("Massa, João! Bora codar, beleza?": names, slang and emoji) has
    nothing to tell the languages apart: it is taken as the persona's own (its markers decide D3)."""
    if not tokens:
        return False, "no words"
    own = stop_words(lang)
    mine = sum(t in own for t in tokens)
    others = {o: sum(t in stop_words(o) and t not in own for t in tokens) for o in LANGUAGES if o != lang}
    top, top_n = max(others.items(), key=lambda kv: kv[1], default=("", 0))
    if mine == 0 and top_n == 0:
        return True, f"no stop words of any language in {len(tokens)} words: taken as the persona's '{lang}'"
    ok = mine / len(tokens) >= SHARE_MIN and mine > top_n
    vs = f" vs {top_n} {top}-only" if top else ""
    return ok, f"{mine} {lang}{vs} stop words in {len(tokens)} words"
