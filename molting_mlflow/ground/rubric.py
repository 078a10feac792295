"""Rubric v1.1 (shared/spec/rubric-v1.md): a deterministic, offline scorer for persona responses.

Every lost point carries a machine-readable reason code next to its sentence (`d5.repetition`,
`d4.template_token`, … : REASON_CODES), so that diagnose and other tools work from codes, never
from the wording of a sentence. RUBRIC_VERSION goes with every score.

Every list the rules use (name, voice markers, boilerplate, conflicting identities,
hallucinations, template tokens, agent contamination, role prefixes) comes from the `Persona`
data, so another persona changes data, not code. What stays in code is language, not persona:
stop-word lists for the Portuguese test, articles, and the claim grammar of the spec.

Matching is done on a normalised copy of the text (NFKD, combining marks stripped, casefolded:
"Cláudio" == "claudio") on whole words / whole phrases; capitalisation, which the "other name"
rule needs, is read back from the original text through a character index map.
"""
from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from molting_mlflow.ground.errors import MoltingError, too_deep, unreadable
from molting_mlflow.ground.language import LANGUAGES, every, mainly_in, stop_words, words
from molting_mlflow.ground.persona import Persona

RUBRIC_VERSION = "1.2"
# What a scored run without the tag `molting.rubric_version` was scored under: runs before the tag.
UNTAGGED_RUBRIC_VERSION = "1.0"
DIMENSIONS = ("d1_identity", "d2_factual", "d3_voice", "d4_cleanliness", "d5_quality")


def short_name(dim: str) -> str:
    """A dimension's name in reports and in the rubric's sentences: "D1" for d1_identity."""
    return dim.split("_")[0].upper()


def code_prefix(dim: str) -> str:
    """The start of the reason codes that cost a dimension: "d1." for d1_identity (or for "D1")."""
    return dim.split("_")[0].lower() + "."

FINISH_REASONS = ("stop", "length")
MIN_WORDS, MAX_WORDS = 3, 150       # D5(b): an answer of fewer or more words loses a point (rubric spec v1.1, D5 (b))

# Every reason code the scorer emits, with what it means (the prefix names the dimension it costs).
REASON_CODES = {
    "empty": "empty or whitespace-only response: 0 on every dimension",
    "d1.conflicting_identity": "claims an identity on the persona's conflicting list",
    "d1.other_name": "gives itself another name than the persona's",
    "d1.denies_name": "denies being the persona (v1.1)",
    "d1.probe_without_name": "an identity probe answered without the persona's name",
    "d1.no_name": "the persona's name does not appear (1 point)",
    "d2.hallucination": "states a known hallucination",
    "d2.forbidden": "states a claim the question forbids",
    "d2.loop_to_limit": "a loop to the token limit keeps no facts (v1.1)",
    "d2.facts_missed": "covers too few of the question's fact groups",
    "d3.not_language": "not mainly in the persona's language",
    "d3.no_marker": "no voice marker",
    "d3.one_marker": "only one voice marker",
    "d3.boilerplate": "generic-assistant boilerplate",
    "d3.degenerate": "degenerate (repeating) text is not the persona's voice",
    "d3.other_identity": "speaks as another identity (a claim, another name or a denial)",
    "d3.loop_to_limit": "a loop to the token limit has no voice (v1.1)",
    "d4.template_token": "chat-template or special token in the text",
    "d4.agent_contamination": "tool-call markup, shell, paths or tool-use narration",
    "d4.role_line": "a line speaks for another role",
    "d4.text_after_token": "text after a chat-template token",
    "d5.run_on": "text after a chat-template token: the turn ran on (D5 = 0, v1.1)",
    "d5.length_limit": "hit the token limit (finish_reason length)",
    "d5.no_ending": "no finish_reason and the text does not end properly",
    "d5.word_count": f"fewer than {MIN_WORDS} or more than {MAX_WORDS} words",
    "d5.repetition": "degenerate repetition",
    "d5.off_topic": "does not address the question",
}


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    identity_probe: bool
    facts: list[list[str]]          # groups of alternatives; a group is covered by any one of them
    forbidden: list[str]            # question-specific wrong claims (added to the hallucinations)
    topic: list[str] = field(default_factory=list)  # words naming the subject (D5 (d))
    reference: str = ""             # an answer in the persona's voice stating the facts (ref_nll, ref_chrf)


class RubricInputError(MoltingError, ValueError):
    """A question or response file is malformed; the message is one line naming file and place."""


# --------------------------------------------------------------------------------------------
# Normalisation and whole-word matching
# --------------------------------------------------------------------------------------------

def _fold(s: str) -> str:
    s = unicodedata.normalize("NFKD", s)
    s = "".join(c for c in s if not unicodedata.combining(c)).casefold()
    # casefold can bring back a combining mark ("İ" -> "i̇"), so strip once more
    s = unicodedata.normalize("NFKD", s)
    return "".join(c for c in s if not unicodedata.combining(c))


def _normalise_with_map(text: str) -> tuple[str, list[int]]:
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
    return _normalise_with_map(text)[0]


@lru_cache(maxsize=4096)
def _term_regex(term: str) -> re.Pattern[str]:
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
        if term.strip() and normalise(term) not in seen and _term_regex(term).search(norm):
            seen[normalise(term)] = term
    return list(seen.values())


# --------------------------------------------------------------------------------------------
# Words that are never a "name" (D1); the language test itself lives in language.py
# --------------------------------------------------------------------------------------------

# Words after "sou"/"I am" that are not a name even when capitalised ("sou uma IA").
_NOT_NAMES = frozenset().union(*(stop_words(lang) for lang in LANGUAGES)) | frozenset(every("not_names"))
_ARTICLES = frozenset(every("articles"))  # skipped before X
_NEGATIONS = frozenset(every("negations"))
_NEG_WORDS = r"(?:" + "|".join(sorted(_NEGATIONS)) + r")"

# --------------------------------------------------------------------------------------------
# D1 claims (on normalised text), from the languages' phrases (data/languages/<code>.yaml).
# X is what follows the head on the same line.
# --------------------------------------------------------------------------------------------
_WS = r"[^\S\n]+"  # a claim and its X are on one line: a line break is no "sou X"


def _phrase(phrase: str) -> str:
    """A phrase of the language files as a pattern: its words joined by _WS, `'` as ' or ’, `a|b` either
    word, `{neg}` any negation ("{neg} me chamo": "nao me chamo", "nunca me chamo", …)."""
    def word(w: str) -> str:
        return _NEG_WORDS if w == "{neg}" else re.escape(w).replace("'", "['’]")

    parts = [word(w) if "|" not in w else "(?:" + "|".join(map(word, w.split("|"))) + ")" for w in phrase.split()]
    return _WS.join(parts)


def _heads(phrases: tuple[str, ...]) -> str:
    """Any of `phrases` as a whole-word head (the longest first)."""
    return r"(?<!\w)(?:" + "|".join(_phrase(p) for p in sorted(phrases, key=len, reverse=True)) + r")"


_NAME_HEAD = re.compile(_heads(every("name_claims")) + _WS)       # "sou", "me chamo", "I'm", "my name is"
_MAKER_HEAD = re.compile(_heads(every("maker_claims")) + _WS)     # "fui criado pela", "trained by"
# "não sou", "eu nao sou", "I was not made by", "I wasn't trained by": negation right before.
# A comma breaks it: "Não, sou o Cláudio" is a claim.
_NEG_BEFORE = re.compile(r"(?:(?<!\w)" + _NEG_WORDS + "".join("|" + _phrase(s) for s in every("negation_suffixes"))
                         + r")" + _WS + r"$")
_DENIAL_HEAD = _heads(every("denials"))                            # "não sou", "my name isn't"
_WORD_AT = re.compile(r"\w+(?:[-.]\w+)*")
_SPACE_AT = re.compile(_WS)
# D5 (d): any self-description counts as addressing an identity probe, negated or not.
_SELF_DESCRIPTION = list(every("self_descriptions"))


def _claims(text: str, norm: str, index: list[int], persona: Persona) -> tuple[list[str], list[str]]:
    """(conflicting identities claimed, other names given) by non-negated claims."""
    conflicts: list[str] = []
    others: list[str] = []
    for head_re, names_self in ((_NAME_HEAD, True), (_MAKER_HEAD, False)):
        for m in head_re.finditer(norm):
            if _NEG_BEFORE.search(norm[max(0, m.start() - 30):m.start()]):
                continue
            p = m.end()
            w = _WORD_AT.match(norm, p)
            if w and w.group() in _NEGATIONS:        # "I am not X", "sou não"
                continue
            # X may start after up to two articles ("sou o seu ..."); a conflicting term may
            # itself begin with an article ("sou um modelo de linguagem"), so test each position.
            claimed: list[str] = []
            for _ in range(3):
                claimed += [t for t in persona.conflicting_identities
                            if _term_regex(t).match(norm, p) and t not in claimed]
                w = _WORD_AT.match(norm, p)
                sp = _SPACE_AT.match(norm, w.end()) if w and w.group() in _ARTICLES else None
                if not sp:
                    break
                p = sp.end()
            conflicts += [t for t in claimed if t not in conflicts]
            if claimed:
                continue                               # "I am SmolLM": reported once, as a conflict
            # Other name: only name-giving heads ("fui criado pela Softtor" names a maker, not
            # the self), only a capitalised word that is not the persona's name nor a common word.
            if not names_self or not w or _term_regex(persona.name).match(norm, p):
                continue
            if w.group() in _NOT_NAMES or norm[w.end():w.end() + 2] in ("'s", "’s"):
                continue                               # "I'm João's assistant" names João, not self
            head_orig = text[index[m.start()]:index[m.end() - 1] + 1]
            if any(c.isupper() for c in head_orig[1:]):
                continue                               # "Eu Sou", "EU SOU": capitals carry no signal
            if text[index[w.start()]].isupper():
                word = text[index[w.start()]:index[w.end() - 1] + 1]
                if word not in others:
                    others.append(word)
    return conflicts, others


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------

def _is_emoji(ch: str) -> bool:
    cp = ord(ch)
    return unicodedata.category(ch) == "So" or 0x1F000 <= cp <= 0x1FAFF or 0x2600 <= cp <= 0x27BF


def _ends_properly(text: str) -> bool:
    t = text.rstrip()
    # an emoji may end in a variation selector, a zero-width joiner or a skin-tone modifier
    t = t.rstrip("\ufe0f\ufe0e\u200d\U0001F3FB\U0001F3FC\U0001F3FD\U0001F3FE\U0001F3FF")
    return bool(t) and (t[-1] in '.!?…)"' or _is_emoji(t[-1]))


def _degenerate(norm: str) -> str | None:
    """D5 (c): a reason string when a 4-word sequence occurs 3+ times or a sentence of 3+ words
    occurs twice (normalised words, so case and accents do not hide a loop)."""
    words = re.findall(r"\w+", norm)
    grams = Counter(tuple(words[i:i + 4]) for i in range(len(words) - 3))
    if grams:
        gram, n = grams.most_common(1)[0]
        if n >= 3:
            return f"D5(c): 4-word sequence repeated {n}x: '{' '.join(gram)}'"
    # NFKD has turned "…" into "...", so [.!?] covers it
    sentences = Counter(tuple(s) for s in (re.findall(r"\w+", x) for x in re.split(r"[.!?\n]+", norm))
                        if len(s) >= 3)
    if sentences:
        sent, n = sentences.most_common(1)[0]
        if n >= 2:
            return f"D5(c): sentence repeated {n}x: '{' '.join(sent)}'"
    return None


def _role_tag(token: str, persona: Persona) -> bool:
    """A template token that names a speaker ("<|user|>", "<|assistant|>"): its letters are a role."""
    name = "".join(re.findall(r"\w+", normalise(token)))
    return name in {normalise(r) for r in persona.role_prefixes} | {"user", "assistant", "system"}


def _role_lines(norm: str, persona: Persona) -> list[str]:
    """D4 (c): lines that start (after whitespace) with a role prefix and ':' ("User:"), with a
    symbol prefix and a space ("### "), or with a role tag ("<|user|>")."""
    hits = []
    for prefix in persona.role_prefixes:
        p = normalise(prefix).strip()
        if not p:
            continue
        tail = r"[^\S\n]*:" if re.match(r"\w", p[-1]) else r"(?:[^\S\n]|:)"
        if re.search(r"(?m)^[^\S\n]*" + re.escape(p) + tail, norm):
            hits.append(prefix.strip() + (":" if tail.endswith(":") else " "))
    for tok in persona.template_tokens:
        if _role_tag(tok, persona) and re.search(r"(?m)^[^\S\n]*" + _term_regex(tok).pattern, norm):
            hits.append(tok)
    return hits


# Special tokens that are no turn boundary: the spec's run-on rule speaks of *chat-template*
# tokens, and a decoded unknown/padding token mid-sentence is noise (still D4 (a)), not a new turn.
_NOT_TURN_TOKENS = frozenset({"<unk>", "<pad>", "[unk]", "[pad]"})


def _text_after_token(norm: str, persona: Persona) -> str | None:
    """The first chat-template token that has non-whitespace text after it (the turn went on)."""
    for tok in persona.template_tokens:
        if normalise(tok).strip() in _NOT_TURN_TOKENS:
            continue
        for m in _term_regex(tok).finditer(norm):
            if norm[m.end():].strip():
                return tok
    return None


def _denials(norm: str, persona: Persona) -> list[str]:
    """v1.1 D1: the persona's name under a negated self-description ("não sou o Cláudio", "não me
    chamo Cláudio", "meu nome não é Cláudio", "I'm not Cláudio", "my name isn't Cláudio")."""
    name = re.escape(normalise(persona.name))
    arts = r"(?:(?:" + "|".join(sorted(_ARTICLES)) + r")" + _WS + r"){0,2}"
    pattern = _DENIAL_HEAD + _WS + arts + name + r"(?!\w)"
    return [m.group() for m in re.finditer(pattern, norm)]


class _Card:
    """One response's lost points: dimension values plus (code, sentence) for every loss."""

    def __init__(self):
        self.dims: dict[str, int] = {}
        self.lost: list[tuple[str, str]] = []

    def lose(self, code: str, sentence: str) -> None:
        assert code in REASON_CODES, code
        self.lost.append((code, sentence))


def score_response(question: Question, response: str, finish_reason: str | None,
                   persona: Persona) -> dict:
    """{d1_identity … d5_quality, score, reasons: [sentence], codes: [code]} for one response."""
    if finish_reason not in (None, *FINISH_REASONS):
        raise ValueError(f"finish_reason must be 'stop', 'length' or None, got {finish_reason!r}")
    if not response or not response.strip():
        return {**{d: 0 for d in DIMENSIONS}, "score": 0, "reasons": ["empty response"], "codes": ["empty"]}
    norm, index = _normalise_with_map(response)
    c = _Card()
    degenerate = _degenerate(norm)
    # v1.1: a loop that did not end (D5 (a)'s first two cases) keeps no D2 or D3 points
    unended = finish_reason == "length" or (finish_reason is None and not _ends_properly(response))
    loop_to_limit = bool(degenerate) and unended
    other, has_name = _d1(c, question, response, norm, index, persona)
    covered, wrong = _d2(c, question, norm, persona, loop_to_limit)
    _d3(c, norm, persona, degenerate, other, loop_to_limit)
    after_token = _d4(c, norm, persona)
    _d5(c, question, response, norm, finish_reason, after_token, degenerate, covered, wrong, has_name)
    return {**c.dims, "score": sum(c.dims.values()), "reasons": [t for _, t in c.lost],
            "codes": [k for k, _ in c.lost]}


def _d1(c: _Card, q: Question, text: str, norm: str, index: list[int], persona: Persona) -> tuple[bool, bool]:
    """D1 identity; returns (speaks as someone else (for D3), the persona's name appears (for D5 (d)))."""
    conflicts, others = _claims(text, norm, index, persona)
    denials = _denials(norm, persona)
    has_name = bool(_term_regex(persona.name).search(norm))
    for x in conflicts:
        c.lose("d1.conflicting_identity", f"D1: claims conflicting identity '{x}'")
    for x in others:
        c.lose("d1.other_name", f"D1: gives itself another name '{x}'")
    for x in denials:
        c.lose("d1.denies_name", f"D1: denies being {persona.name} ('{x}')")
    if q.identity_probe and not has_name:
        c.lose("d1.probe_without_name", f"D1: identity probe and the name '{persona.name}' does not appear")
    if conflicts or others or denials or (q.identity_probe and not has_name):
        c.dims["d1_identity"] = 0
    elif has_name:
        c.dims["d1_identity"] = 2
    else:
        c.dims["d1_identity"] = 1
        c.lose("d1.no_name", f"D1: the name '{persona.name}' does not appear")
    return bool(conflicts or others or denials), has_name


def _d2(c: _Card, q: Question, norm: str, persona: Persona, loop_to_limit: bool) -> tuple[int, list[str]]:
    """D2 factual: wrong claims first, then the v1.1 loop rule, then coverage. Returns (groups covered, wrong)."""
    hallucinated = found(norm, persona.hallucinations)
    forbidden = found(norm, q.forbidden)
    covered = sum(1 for group in q.facts if found(norm, group))
    c.dims["d2_factual"] = 2
    if hallucinated or forbidden:
        c.dims["d2_factual"] = 0
        for w in hallucinated:
            c.lose("d2.hallucination", f"D2: states known hallucination '{w}'")
        for w in forbidden:
            c.lose("d2.forbidden", f"D2: states forbidden claim '{w}'")
    elif loop_to_limit:
        c.dims["d2_factual"] = 0
        c.lose("d2.loop_to_limit", "D2: a loop to the token limit keeps no D2 points (v1.1)")
    elif q.facts and covered < len(q.facts):
        c.dims["d2_factual"] = 1 if covered * 2 >= len(q.facts) else 0
        c.lose("d2.facts_missed", f"D2: covers {covered}/{len(q.facts)} fact groups")
    return covered, hallucinated + forbidden


def _d3(c: _Card, norm: str, persona: Persona, degenerate: str | None, other: bool, loop_to_limit: bool) -> None:
    """D3 voice: mainly in the persona's language, its markers, no boilerplate, no loop, as itself."""
    in_language, evidence = mainly_in(words(norm), persona.language)
    markers = found(norm, persona.voice_markers)
    boiler = found(norm, persona.boilerplate)
    if not in_language:
        c.dims["d3_voice"] = 0
        c.lose("d3.not_language", f"D3: not mainly in the persona's language '{persona.language}' ({evidence})")
        return
    if not markers:
        c.dims["d3_voice"] = 0
        c.lose("d3.no_marker", "D3: no voice marker")
        return
    if loop_to_limit:
        c.dims["d3_voice"] = 0
        c.lose("d3.loop_to_limit", "D3: a loop to the token limit keeps no D3 points (v1.1)")
        return
    c.dims["d3_voice"] = 2
    if len(markers) < 2:
        c.dims["d3_voice"] = 1
        c.lose("d3.one_marker", f"D3: only one voice marker '{markers[0]}'")
    if boiler:
        c.dims["d3_voice"] = 1
        for b in boiler:
            c.lose("d3.boilerplate", f"D3: generic boilerplate '{b}'")
    if degenerate:
        c.dims["d3_voice"] = 1
        c.lose("d3.degenerate", "D3: degenerate text is not the persona's voice (capped at 1)")
    if other:
        c.dims["d3_voice"] = 1
        c.lose("d3.other_identity", "D3: speaks as another identity (capped at 1)")


def _d4(c: _Card, norm: str, persona: Persona) -> str | None:
    """D4 cleanliness; returns the chat-template token that text follows, if any (D5 needs it)."""
    d4 = 2
    tokens_found = found(norm, persona.template_tokens)
    if tokens_found:
        d4 -= 1
        c.lose("d4.template_token", "D4(a): template/special token " + ", ".join(f"'{t}'" for t in tokens_found))
    agent = found(norm, persona.agent_contamination)
    if agent:
        d4 -= 1
        c.lose("d4.agent_contamination", "D4(b): agent contamination " + ", ".join(f"'{a}'" for a in agent))
    roles = _role_lines(norm, persona)
    after_token = _text_after_token(norm, persona)
    if roles or after_token:
        d4 -= 1
        if roles:
            c.lose("d4.role_line", "D4(c): line starts with role " + ", ".join(f"'{r}'" for r in roles))
        if after_token:
            c.lose("d4.text_after_token", f"D4(c): text after template token '{after_token}'")
    c.dims["d4_cleanliness"] = max(d4, 0)
    return after_token


def _d5(c: _Card, q: Question, text: str, norm: str, finish_reason: str | None, after_token: str | None,
        degenerate: str | None, covered: int, wrong: list[str], has_name: bool) -> None:
    """D5 quality: 0 for a run-on turn (v1.1); else 2 minus one per problem (a)–(d)."""
    if after_token:
        c.dims["d5_quality"] = 0
        c.lose("d5.run_on", f"D5: text after template token '{after_token}': the turn ran on (D5 = 0, v1.1)")
        return
    d5 = 2
    if finish_reason == "length":
        d5 -= 1
        c.lose("d5.length_limit", "D5(a): finish_reason is 'length'")
    elif finish_reason is None and not _ends_properly(text):
        d5 -= 1
        c.lose("d5.no_ending", f"D5(a): no finish_reason and the text ends with {text.rstrip()[-1]!r}")
    n_words = sum(1 for w in text.split() if re.search(r"\w", w))
    if not MIN_WORDS <= n_words <= MAX_WORDS:
        d5 -= 1
        c.lose("d5.word_count", f"D5(b): {n_words} words (expected {MIN_WORDS}-{MAX_WORDS})")
    if degenerate:
        d5 -= 1
        c.lose("d5.repetition", degenerate)
    if q.topic or q.facts or q.identity_probe:
        addressed = bool(found(norm, q.topic)) or covered > 0 or bool(wrong)
        if q.identity_probe:
            addressed = addressed or has_name or bool(found(norm, _SELF_DESCRIPTION))
        if not addressed:
            d5 -= 1
            c.lose("d5.off_topic", "D5(d): off topic (no topic word, fact, wrong claim"
                   + (" or self-description)" if q.identity_probe else ")"))
    c.dims["d5_quality"] = max(d5, 0)


def score_responses(questions: list[Question], records: list[dict], persona: Persona) -> dict:
    """Score records in input order; summary holds the mean of each dimension and their sum."""
    by_id = {q.id: q for q in questions}
    if not records:
        raise RubricInputError("no response records to score; expected at least one")
    results = []
    for i, rec in enumerate(records):
        q = by_id.get(rec.get("id"))
        if q is None:
            raise RubricInputError(f"record[{i}]: id {rec.get('id')!r} names no question; "
                                   f"expected one of {sorted(by_id)}")
        s = score_response(q, rec.get("response", ""), rec.get("finish_reason"), persona)
        results.append({"id": q.id, "question": q.question, "response": rec.get("response", ""),
                        "finish_reason": rec.get("finish_reason"), **s})
    n = len(results)
    summary: dict = {d: sum(r[d] for r in results) / n for d in DIMENSIONS}
    summary["score"] = sum(summary[d] for d in DIMENSIONS)
    summary["n"] = n
    summary["rubric_version"] = RUBRIC_VERSION
    chrf = reference_chrf(results, by_id)
    if chrf is not None:
        summary["ref_chrf"] = chrf
    return {"results": results, "summary": summary}


def reference_chrf(results: list[dict], by_id: dict) -> float | None:
    """chrF (sacrebleu, 0–100) of each answer against its question's reference answer, set on each
    result as `ref_chrf`; returns the corpus chrF of all answers that have a reference (None if none).
    Next to the rubric: a fluent, in-voice, wrong answer scores low here."""
    from sacrebleu.metrics import CHRF

    chrf = CHRF()
    pairs = [(r, by_id[r["id"]].reference) for r in results if by_id[r["id"]].reference]
    for r, ref in pairs:
        r["ref_chrf"] = round(chrf.sentence_score(r["response"], [ref]).score, 2)
    if not pairs:
        return None
    return chrf.corpus_score([r["response"] for r, _ in pairs], [[ref for _, ref in pairs]]).score


def format_summary(scored: dict) -> str:
    """The summary line and one line per answer, as the CLI prints them."""
    s = scored["summary"]
    head = "  ".join(f"{short_name(d)} {s[d]:.2f}" for d in DIMENSIONS)
    extra = "".join(f"  {k} {s[k]:.2f}" for k in ("ref_chrf", "ref_nll") if s.get(k) is not None)
    lines = [f"rubric v{s.get('rubric_version', RUBRIC_VERSION)}: score {s['score']:.2f}/10   ({head}){extra}"]
    for r in scored["results"]:
        lines.append(f"  {r['id']} {r['score']:>2}/10  {r['response'][:90]!r}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Input files
# --------------------------------------------------------------------------------------------
_Q_REQUIRED = ("id", "question", "identity_probe", "facts", "forbidden")
_Q_KEYS = _Q_REQUIRED + ("topic", "reference")
_Q_FORM = ('expected {"id": str, "question": str, "identity_probe": bool, "facts": [[str, ...], ...], '
           '"forbidden": [str, ...], "topic": [str, ...] (optional), "reference": str (optional)}')
_R_FORM = 'expected {"id": str, "response": str, "finish_reason": "stop"|"length"|null (optional)}'


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise RubricInputError(f"{path}: file not found; expected {what}")
    try:
        return path.read_text(encoding="utf-8-sig")  # a BOM is not an error
    except UnicodeDecodeError as e:
        raise RubricInputError(f"{path}: not valid UTF-8 (byte {e.start}); expected {what} in UTF-8") from None
    except OSError as e:
        raise RubricInputError(unreadable(path, e)) from None


def _str_list(v, *, nonempty: bool = False) -> bool:
    return (isinstance(v, list) and (v or not nonempty)
            and all(isinstance(x, str) and x.strip() for x in v))


def _check_keys(where: str, obj: dict, required: tuple, allowed: tuple, form: str) -> None:
    missing = [k for k in required if k not in obj]
    extra = sorted(set(obj) - set(allowed))
    if missing or extra:
        what = "; ".join(x for x in (missing and f"missing key(s) {missing}",
                                     extra and f"unknown key(s) {extra}") if x)
        raise RubricInputError(f"{where}: {what}; {form}")


def load_questions(path: str | Path) -> list[Question]:
    p = Path(path)
    raw_text = _read_text(p, "a JSON list of question objects")
    try:
        raw = json.loads(raw_text)
    except json.JSONDecodeError as e:
        raise RubricInputError(f"{p}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg}); "
                               "expected a JSON list of question objects") from None
    except RecursionError:
        raise RubricInputError(too_deep(p, "a questions file is a list of question objects, 4 levels deep")) from None
    if not isinstance(raw, list) or not raw:
        raise RubricInputError(f"{p}: top level is {type(raw).__name__}"
                               f"{' (empty)' if raw == [] else ''}; expected a non-empty JSON list of question objects")
    out: list[Question] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        where = f"{p}: item[{i}]"
        if not isinstance(item, dict):
            raise RubricInputError(f"{where}: is {type(item).__name__}; {_Q_FORM}")
        if isinstance(item.get("id"), str):
            where += f" (id {item['id']!r})"
        _check_keys(where, item, _Q_REQUIRED, _Q_KEYS, _Q_FORM)
        checks = (
            ("id", isinstance(item["id"], str) and item["id"].strip() != "", "a non-empty string"),
            ("question", isinstance(item["question"], str) and item["question"].strip() != "",
             "a non-empty string"),
            ("identity_probe", isinstance(item["identity_probe"], bool), "true or false"),
            ("facts", isinstance(item["facts"], list)
             and all(_str_list(g, nonempty=True) for g in item["facts"]),
             "a list of non-empty lists of non-empty strings"),
            ("forbidden", _str_list(item["forbidden"]), "a list of non-empty strings"),
            ("topic", _str_list(item.get("topic", [])), "a list of non-empty strings"),
            ("reference", isinstance(item.get("reference", ""), str), "a string (the reference answer)"),
        )
        for key, ok, form in checks:
            if not ok:
                raise RubricInputError(f"{where}: key '{key}' is {json.dumps(item.get(key), ensure_ascii=False)[:60]}; "
                                       f"expected {form}")
        if item["id"] in seen:
            raise RubricInputError(f"{where}: duplicate id {item['id']!r}; expected unique ids")
        seen.add(item["id"])
        out.append(Question(id=item["id"], question=item["question"], identity_probe=item["identity_probe"],
                            facts=[list(g) for g in item["facts"]], forbidden=list(item["forbidden"]),
                            topic=list(item.get("topic", [])), reference=item.get("reference", "")))
    return out


def load_responses(path: str | Path, questions: list[Question]) -> list[dict]:
    p = Path(path)
    ids = {q.id for q in questions}
    records: list[dict] = []
    # split on "\n" only: str.splitlines() would also cut at U+2028 inside a JSON string
    for lineno, line in enumerate(_read_text(p, "JSON Lines, one response object per line").split("\n"), 1):
        if not line.strip():
            continue
        where = f"{p}: line {lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise RubricInputError(f"{where}: invalid JSON at column {e.colno} ({e.msg}); {_R_FORM}") from None
        except RecursionError:
            raise RubricInputError(too_deep(p, "a response is one flat object", f" (line {lineno})")) from None
        if not isinstance(rec, dict):
            raise RubricInputError(f"{where}: is {type(rec).__name__}; {_R_FORM}")
        _check_keys(where, rec, ("id", "response"), ("id", "response", "finish_reason"), _R_FORM)
        if not isinstance(rec["id"], str):
            raise RubricInputError(f"{where}: 'id' is {type(rec['id']).__name__}; {_R_FORM}")
        if rec["id"] not in ids:
            raise RubricInputError(f"{where}: id {rec['id']!r} names no question in the question file; "
                                   f"expected one of {sorted(ids)[:10]}")
        if not isinstance(rec["response"], str):
            raise RubricInputError(f"{where}: 'response' is {type(rec['response']).__name__}; {_R_FORM}")
        fr = rec.get("finish_reason")
        if fr is not None and fr not in FINISH_REASONS:
            raise RubricInputError(f"{where}: finish_reason is {json.dumps(fr)}; {_R_FORM}")
        records.append({"id": rec["id"], "response": rec["response"], "finish_reason": fr})
    if not records:
        raise RubricInputError(f"{p}: no response records; expected at least one JSON object line")
    return records
