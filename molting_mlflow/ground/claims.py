"""How an answer says who it is: the claim grammar of the rubric's D1 (and D5 (d)), built from the
languages in play (language.Languages: each language's .yaml holds its claim, denial, negation, article
and self-description words).

A *claim* is a self-description: "sou (o|a|um|uma) X", "meu nome é X", "fui criado pela X", "I am X",
"my name is X", "trained by X"; a negated one ("não sou o ChatGPT") is no claim. X is what follows the
head on the same line, after up to two articles. All of it runs on folded text (matching.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from molting_mlflow.ground.language import Languages, package_languages
from molting_mlflow.ground.matching import normalise, term_regex

_WS = r"[^\S\n]+"  # a claim and its X are on one line: a line break is no "sou X"
_WORD_AT = re.compile(r"\w+(?:[-.]\w+)*")
_SPACE_AT = re.compile(_WS)


def phrase(text: str, negations: str | None = None) -> str:
    """A phrase of the language files as a pattern: its words joined by _WS, `'` as ' or ’, `a|b` either
    word, `{neg}` any negation ("{neg} me chamo": "nao me chamo", "nunca me chamo", …). `negations`: the
    alternation of the negations in play (default: the package's languages')."""
    neg = negations if negations is not None else grammar(package_languages()).neg_words

    def word(w: str) -> str:
        return neg if w == "{neg}" else re.escape(w).replace("'", "['’]")

    parts = [word(w) if "|" not in w else "(?:" + "|".join(map(word, w.split("|"))) + ")" for w in text.split()]
    return _WS.join(parts)


@dataclass(frozen=True)
class Grammar:
    """The patterns and word sets of one set of languages (built once a set: grammar())."""
    not_names: frozenset        # words after "sou"/"I am" that are no name even capitalised ("sou uma IA")
    articles: frozenset         # skipped between a claim and its X
    negations: frozenset
    neg_words: str              # the negations as one alternation
    name_head: re.Pattern       # "sou", "me chamo", "I'm", "my name is"
    maker_head: re.Pattern      # "fui criado pela", "trained by"
    neg_before: re.Pattern      # a negation right before a head ("não sou", "I wasn't trained by")
    denial_head: str            # "não sou", "my name isn't"
    self_descriptions: tuple    # D5 (d): any of them addresses an identity probe, negated or not


def _heads(phrases: tuple[str, ...], neg: str) -> str:
    """Any of `phrases` as a whole-word head (the longest first)."""
    return r"(?<!\w)(?:" + "|".join(phrase(p, neg) for p in sorted(phrases, key=len, reverse=True)) + r")"


@lru_cache(maxsize=16)
def grammar(langs: Languages) -> Grammar:
    negations = frozenset(langs.every("negations"))
    neg = r"(?:" + "|".join(sorted(negations)) + r")"
    # "não sou", "eu nao sou", "I was not made by", "I wasn't trained by": a negation right before.
    # A comma breaks it: "Não, sou o Cláudio" is a claim.
    neg_before = re.compile(r"(?:(?<!\w)" + neg + "".join("|" + phrase(s, neg) for s in langs.every("negation_suffixes"))
                            + r")" + _WS + r"$")
    not_names = frozenset().union(*(langs.stop_words(c) for c in langs.codes)) | frozenset(langs.every("not_names"))
    return Grammar(not_names, frozenset(langs.every("articles")), negations, neg,
                   re.compile(_heads(langs.every("name_claims"), neg) + _WS),
                   re.compile(_heads(langs.every("maker_claims"), neg) + _WS),
                   neg_before, _heads(langs.every("denials"), neg), tuple(langs.every("self_descriptions")))


def claims(text: str, norm: str, index: list[int], name: str, conflicting: list[str],
           g: Grammar) -> tuple[list[str], list[str]]:
    """(conflicting identities claimed, other names given) by the non-negated claims of `text` (folded:
    `norm`, with its index map), for a persona called `name`."""
    conflicts: list[str] = []
    others: list[str] = []
    for head_re, names_self in ((g.name_head, True), (g.maker_head, False)):
        for m in head_re.finditer(norm):
            if g.neg_before.search(norm[max(0, m.start() - 30):m.start()]):
                continue
            p = m.end()
            w = _WORD_AT.match(norm, p)
            if w and w.group() in g.negations:        # "I am not X", "sou não"
                continue
            # X may start after up to two articles ("sou o seu ..."); a conflicting term may
            # itself begin with an article ("sou um modelo de linguagem"), so test each position.
            claimed: list[str] = []
            for _ in range(3):
                claimed += [t for t in conflicting if term_regex(t).match(norm, p) and t not in claimed]
                w = _WORD_AT.match(norm, p)
                sp = _SPACE_AT.match(norm, w.end()) if w and w.group() in g.articles else None
                if not sp:
                    break
                p = sp.end()
            conflicts += [t for t in claimed if t not in conflicts]
            if claimed:
                continue                               # "I am SmolLM": reported once, as a conflict
            # Other name: only name-giving heads ("fui criado pela Softtor" names a maker, not
            # the self), only a capitalised word that is not the persona's name nor a common word.
            if not names_self or not w or term_regex(name).match(norm, p):
                continue
            if w.group() in g.not_names or norm[w.end():w.end() + 2] in ("'s", "’s"):
                continue                               # "I'm João's assistant" names João, not self
            head_orig = text[index[m.start()]:index[m.end() - 1] + 1]
            if any(c.isupper() for c in head_orig[1:]):
                continue                               # "Eu Sou", "EU SOU": capitals carry no signal
            if text[index[w.start()]].isupper():
                word = text[index[w.start()]:index[w.end() - 1] + 1]
                if word not in others:
                    others.append(word)
    return conflicts, others


def denials(norm: str, name: str, g: Grammar) -> list[str]:
    """v1.1 D1: the persona's name under a negated self-description ("não sou o Cláudio", "não me
    chamo Cláudio", "meu nome não é Cláudio", "I'm not Cláudio", "my name isn't Cláudio")."""
    arts = r"(?:(?:" + "|".join(sorted(g.articles)) + r")" + _WS + r"){0,2}"
    pattern = g.denial_head + _WS + arts + re.escape(normalise(name)) + r"(?!\w)"
    return [m.group() for m in re.finditer(pattern, norm)]
