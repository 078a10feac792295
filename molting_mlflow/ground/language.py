"""Languages the rubric knows, as data. A language is two files named by its ISO 639-1 code: `<code>.txt`,
its stop words (D3's "mainly in the persona's language"), and `<code>.yaml`, how its answers say who they
are (the claims, denials, negations and articles D1 and D5 (d) read, and `molting chat`'s label).

The package ships some (data/languages/); a persona brings its own beside its card (the card's folder, or
`languages/` in it): a Spanish persona is its card, questions, dataset and es.txt + es.yaml next to them,
and no file of the package changes. A persona's own file of a code the package has too takes its place.
Every list of every language in play counts in answers of every language (a persona in pt may slip into
English), so the languages in play are a set (`Languages`), one per persona folder.

Nothing is read at import: `molting --help` reads no language file. A word list whose item YAML reads as
something else than a word (`negations: [no, nunca]`: `no` is the boolean false) is a one-line
LanguageError naming the file, the list, the item and the fix (quote it).

Why these lists and not a maintained collection: the lists of `stop-words` (python-stop-words) and
`stopwords-iso` were tried. Their English lists (1,232 and 1,298 words) hold "la", "s", "show",
"today", so that "Tudo certo, João, bora lá!</s>" counted more English than Portuguese stop words
and lost its voice points (a labelled case of tests/test_rubric.py); the Portuguese list of
`stop-words` lacks "tudo" and "você". Short, hand-checked lists of function words decide short
chat answers correctly, and each language's file says where its words came from.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from molting_mlflow.ground.errors import MoltingError, unreadable
from molting_mlflow.ground.paths import DATA_DIR
from molting_mlflow.ground.yamlwords import WordsError, read_words

LANGUAGE_DIR = DATA_DIR / "languages"
OWN_LANGUAGE_DIR = "languages"       # beside a card: where its own language files may also be
# A text is "mainly" in language L when at least this share of its word tokens are L's stop words
# and it has more of them than of any other known language's stop words that are not L's. Running
# prose has 35–50 % stop words; 0.15 leaves room for short, name-heavy replies ("Ele pratica tênis
# todo dia, João." is 1/6), while English text with a few Portuguese names fails the second test.
SHARE_MIN = 0.15
# The word lists of a language's .yaml; every one is read in answers of every language (rubric.py)
WORD_LISTS = ("name_claims", "maker_claims", "denials", "negations", "negation_suffixes", "articles",
              "self_descriptions", "not_names")
_CODE = re.compile(r"[a-z]{2,3}")    # ISO 639-1 (two letters; 639-2's three are taken too)


class LanguageError(MoltingError, ValueError):
    """A language file that is malformed, or a code no language file describes; the message says the fix."""


@dataclass(frozen=True, eq=False)
class Language:
    code: str
    name: str                              # in English ("Portuguese"): what a model judge is told
    you: str                               # the user's label in `molting chat`
    lists: dict                            # WORD_LISTS name → tuple of folded phrases (a missing list: ())
    stop: frozenset                        # folded stop words
    files: tuple[str, str]                 # (<code>.txt, <code>.yaml) it was read from

    def words(self, key: str) -> tuple[str, ...]:
        return self.lists[key]


def read_language(code: str, folder: Path) -> Language:
    """The language `code` from folder/<code>.txt and folder/<code>.yaml, checked."""
    txt, yml = folder / f"{code}.txt", folder / f"{code}.yaml"
    try:
        stop = frozenset(w.strip() for w in txt.read_text(encoding="utf-8").splitlines()
                         if w.strip() and not w.startswith("#"))
    except OSError as e:
        raise LanguageError(unreadable(txt, e)) from None
    except UnicodeDecodeError as e:
        raise LanguageError(f"{txt}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    try:
        data = read_words(yml, lists=WORD_LISTS, strings=("name", "you"))
    except WordsError as e:
        raise LanguageError(str(e)) from None
    return Language(code, data.get("name", code), data.get("you", "you"), {k: tuple(data.get(k, ())) for k in WORD_LISTS},
                    stop, (str(txt), str(yml)))


def _codes_in(folder: Path) -> list[str]:
    """The codes with both files in `folder` (a card's folder holds other YAML: only pairs count)."""
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.txt") if _CODE.fullmatch(p.stem) and (folder / f"{p.stem}.yaml").is_file())


@dataclass(frozen=True)
class Languages:
    """The languages in play: each code from the first folder that has it. Equal (and hashed) by the files
    they were read from, so the rubric builds its patterns once per set (rubric.grammar)."""
    key: tuple                              # ((code, txt, yaml, mtimes), …): what was read
    langs: tuple = field(compare=False)     # Language, in code order

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(lang.code for lang in self.langs)

    def get(self, code: str) -> Language | None:
        return next((lang for lang in self.langs if lang.code == code), None)

    def every(self, key: str) -> tuple[str, ...]:
        """One word list of all languages, without repeats, in code order and each file's."""
        return tuple(dict.fromkeys(w for lang in self.langs for w in lang.words(key)))

    def stop_words(self, code: str) -> frozenset:
        lang = self.get(code)
        return lang.stop if lang is not None else frozenset()

    def mainly_in(self, tokens: list[str], code: str) -> tuple[bool, str]:
        """Whether folded word tokens are mainly in `code`, and the counts that decided it. Words in both
        lists ("a", "as", "do", "me", "so" in pt and en) count for `code` only: another language has
        plenty of its own to outweigh them, while a short reply may have nothing else. A reply with no
        stop word of any language in play ("Massa, João! Bora codar, beleza?": names, slang and emoji) has
        nothing to tell the languages apart: it is taken as the persona's own (its markers decide D3)."""
        if not tokens:
            return False, "no words"
        own = self.stop_words(code)
        mine = sum(t in own for t in tokens)
        others = {o: sum(t in self.stop_words(o) and t not in own for t in tokens) for o in self.codes if o != code}
        top, top_n = max(others.items(), key=lambda kv: kv[1], default=("", 0))
        if mine == 0 and top_n == 0:
            return True, f"no stop words of any language in {len(tokens)} words: taken as the persona's '{code}'"
        ok = mine / len(tokens) >= SHARE_MIN and mine > top_n
        vs = f" vs {top_n} {top}-only" if top else ""
        return ok, f"{mine} {code}{vs} stop words in {len(tokens)} words"

    def likeliest(self, tokens: list[str]) -> str:
        """The code whose stop words the tokens hold most of."""
        counts = {code: sum(t in self.stop_words(code) for t in tokens) for code in self.codes}
        return max(counts, key=counts.get)


def folders_for(card: str | Path | None) -> tuple[Path, ...]:
    """Where a card's languages are looked for, first wins: languages/ beside it, its own folder, the package's."""
    if not card:
        return (LANGUAGE_DIR,)
    here = Path(card).resolve().parent
    return tuple(dict.fromkeys((here / OWN_LANGUAGE_DIR, here, LANGUAGE_DIR)))


def languages_in(folders: tuple[Path, ...]) -> Languages:
    """The languages of these folders (see Languages), read once while their files stay as they are."""
    chosen: dict[str, Path] = {}
    for folder in folders:
        for code in _codes_in(folder):
            chosen.setdefault(code, folder)
    key = tuple((code, str(f), *(_mtime(f / f"{code}.{ext}") for ext in ("txt", "yaml")))
                for code, f in sorted(chosen.items()))
    return _read(key)


def _mtime(p: Path) -> int:
    return p.stat().st_mtime_ns


@lru_cache(maxsize=32)
def _read(key: tuple) -> Languages:
    return Languages(key, tuple(read_language(code, Path(folder)) for code, folder, *_ in key))


def package_languages() -> Languages:
    """The package's own languages (a persona built in code, with no card, speaks in these)."""
    return languages_in((LANGUAGE_DIR,))


def unknown_language(card, code, langs: Languages) -> str:
    """The line for a card whose language no file describes: where the two files go, and from what to start."""
    here = Path(card).parent
    return (f"{card}: field 'language' is {code!r}, and no language file describes it (known: "
            f"{', '.join(langs.codes)}); put {code}.txt (its stop words) and {code}.yaml (how its answers say who "
            f"they are) beside the card, in {here} or {here / OWN_LANGUAGE_DIR}: start from a copy of "
            f"{LANGUAGE_DIR / 'en.txt'} and en.yaml and translate them (docs/own-persona.md)")


def words(folded: str) -> list[str]:
    """The word tokens of folded text that the test counts (letters only: no digits, no emoji)."""
    return re.findall(r"[^\W\d_]+", folded)
