"""Rubric v1.2 (docs/rubric.md): a deterministic, offline scorer for persona responses, as a table of
dimensions.

Each `Dimension` is a row: its name, its maximum points, the reason codes it can cost (`d5.repetition`,
`d4.template_token`, …), the persona-card fields its rules read, its scorer, the advice diagnose gives
where it loses points, and the yes/no checklist a model judge is asked for it (judge.py). The maximum
score, the dimension list (`DIMENSIONS`), the reason codes (`REASON_CODES`), the metrics every run logs,
the columns of compare and the UI, diagnose's attributions and docs/rubric.md's table all read the table:
adding a dimension is adding a row. Readers, diagnose first, work from codes, never from wording.

Every list the rules use (name, voice markers, boilerplate, conflicting identities, hallucinations,
template tokens, agent contamination, role prefixes) comes from the `Persona` data, and every word of a
language from its files (language.py), so another persona changes data, not code. RUBRIC_VERSION goes
with every score; a rule that moves any score of the fixed corpus is a new version
(tests/test_rubric_snapshot.py).
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

from molting_mlflow.ground.claims import claims, denials, grammar
from molting_mlflow.ground.language import words
from molting_mlflow.ground.matching import found, normalise, normalise_with_map, term_regex
from molting_mlflow.ground.persona import Persona
from molting_mlflow.ground.questions import FINISH_REASONS, Question, RubricInputError

RUBRIC_VERSION = "1.2"
# What a scored run without the tag `molting.rubric_version` was scored under: runs before the tag.
UNTAGGED_RUBRIC_VERSION = "1.0"
MIN_WORDS, MAX_WORDS = 3, 150       # D5 (b): an answer of fewer or more words loses a point
EMPTY = "empty"                     # the reason code of an empty answer: 0 on every dimension
# A run's means are kept to this many decimals (every metric, compare, the UI, the sweep's values): eighths
# of a point stay exact (7.625), and 56/6 reads 9.333, not 9.333333333333334
SCORE_DECIMALS = 3


# --------------------------------------------------------------------------------------------
# One answer as the rules see it
# --------------------------------------------------------------------------------------------

class Answer:
    """A response to a question by a persona: the text, its folded copy and index map, the points and
    lost points (code, sentence) the dimensions record, and the facts several of them read, each found
    once when first asked (claims for D1 and D3, fact coverage for D2 and D5, the run-on token for D4 and D5)."""

    def __init__(self, question: Question, text: str, finish_reason: str | None, persona: Persona):
        self.q, self.text, self.finish_reason, self.persona = question, text, finish_reason, persona
        self.norm, self.index = normalise_with_map(text)
        self.g = grammar(persona.languages)
        self.lost: list[tuple[str, str]] = []

    def lose(self, code: str, sentence: str) -> None:
        assert code in REASON_CODES, code
        self.lost.append((code, sentence))

    @cached_property
    def degenerate(self) -> str | None:
        return _degenerate(self.norm)

    @cached_property
    def loop_to_limit(self) -> bool:
        """v1.1: a loop that did not end (D5 (a)'s first two cases) keeps no D2 or D3 points."""
        unended = self.finish_reason == "length" or (self.finish_reason is None and not _ends_properly(self.text))
        return bool(self.degenerate) and unended

    @cached_property
    def claims(self) -> tuple[list[str], list[str]]:
        return claims(self.text, self.norm, self.index, self.persona.name, self.persona.conflicting_identities, self.g)

    @cached_property
    def denials(self) -> list[str]:
        return denials(self.norm, self.persona.name, self.g)

    @cached_property
    def has_name(self) -> bool:
        return bool(term_regex(self.persona.name).search(self.norm))

    @property
    def speaks_as_other(self) -> bool:
        """A conflicting identity, another name or a denial: not the persona speaking (D1 0, D3 capped)."""
        conflicts, others = self.claims
        return bool(conflicts or others or self.denials)

    @cached_property
    def hallucinated(self) -> list[str]:
        return found(self.norm, self.persona.hallucinations)

    @cached_property
    def forbidden(self) -> list[str]:
        return found(self.norm, self.q.forbidden)

    @cached_property
    def covered(self) -> int:
        """Fact groups the answer covers (a group is covered by any one of its alternatives)."""
        return sum(1 for group in self.q.facts if found(self.norm, group))

    @cached_property
    def after_token(self) -> str | None:
        return _text_after_token(self.norm, self.persona)


# --------------------------------------------------------------------------------------------
# The rules each dimension shares with none other
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
    tokens = re.findall(r"\w+", norm)
    grams = Counter(tuple(tokens[i:i + 4]) for i in range(len(tokens) - 3))
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
        if _role_tag(tok, persona) and re.search(r"(?m)^[^\S\n]*" + term_regex(tok).pattern, norm):
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
        for m in term_regex(tok).finditer(norm):
            if norm[m.end():].strip():
                return tok
    return None


# --------------------------------------------------------------------------------------------
# The five dimensions' scorers: each returns its points and records what it cost
# --------------------------------------------------------------------------------------------

def _d1(a: Answer) -> int:
    """D1 identity: 0 for speaking as someone else or an identity probe without the name; 2 with the name."""
    conflicts, others = a.claims
    name = a.persona.name
    for x in conflicts:
        a.lose("d1.conflicting_identity", f"D1: claims conflicting identity '{x}'")
    for x in others:
        a.lose("d1.other_name", f"D1: gives itself another name '{x}'")
    for x in a.denials:
        a.lose("d1.denies_name", f"D1: denies being {name} ('{x}')")
    probe_without_name = a.q.identity_probe and not a.has_name
    if probe_without_name:
        a.lose("d1.probe_without_name", f"D1: identity probe and the name '{name}' does not appear")
    if a.speaks_as_other or probe_without_name:
        return 0
    if a.has_name:
        return 2
    a.lose("d1.no_name", f"D1: the name '{name}' does not appear")
    return 1


def _d2(a: Answer) -> int:
    """D2 facts: wrong claims first, then the v1.1 loop rule, then fact coverage."""
    if a.hallucinated or a.forbidden:
        for w in a.hallucinated:
            a.lose("d2.hallucination", f"D2: states known hallucination '{w}'")
        for w in a.forbidden:
            a.lose("d2.forbidden", f"D2: states forbidden claim '{w}'")
        return 0
    if a.loop_to_limit:
        a.lose("d2.loop_to_limit", "D2: a loop to the token limit keeps no D2 points (v1.1)")
        return 0
    facts = a.q.facts
    if facts and a.covered < len(facts):
        a.lose("d2.facts_missed", f"D2: covers {a.covered}/{len(facts)} fact groups")
        return 1 if a.covered * 2 >= len(facts) else 0
    return 2


def _d3(a: Answer) -> int:
    """D3 voice: mainly in the persona's language, its markers, no boilerplate, no loop, as itself."""
    persona = a.persona
    in_language, evidence = persona.languages.mainly_in(words(a.norm), persona.language)
    if not in_language:
        a.lose("d3.not_language", f"D3: not mainly in the persona's language '{persona.language}' ({evidence})")
        return 0
    markers = found(a.norm, persona.voice_markers)
    if not markers:
        a.lose("d3.no_marker", "D3: no voice marker")
        return 0
    if a.loop_to_limit:
        a.lose("d3.loop_to_limit", "D3: a loop to the token limit keeps no D3 points (v1.1)")
        return 0
    points = 2
    if len(markers) < 2:
        points = 1
        a.lose("d3.one_marker", f"D3: only one voice marker '{markers[0]}'")
    boiler = found(a.norm, persona.boilerplate)
    if boiler:
        points = 1
        for b in boiler:
            a.lose("d3.boilerplate", f"D3: generic boilerplate '{b}'")
    if a.degenerate:
        points = 1
        a.lose("d3.degenerate", "D3: degenerate text is not the persona's voice (capped at 1)")
    if a.speaks_as_other:
        points = 1
        a.lose("d3.other_identity", "D3: speaks as another identity (capped at 1)")
    return points


def _d4(a: Answer) -> int:
    """D4 cleanliness: 2 minus one a category found (template tokens; agent markup; another role's line or
    text after a template token)."""
    points = 2
    tokens = found(a.norm, a.persona.template_tokens)
    if tokens:
        points -= 1
        a.lose("d4.template_token", "D4(a): template/special token " + ", ".join(f"'{t}'" for t in tokens))
    agent = found(a.norm, a.persona.agent_contamination)
    if agent:
        points -= 1
        a.lose("d4.agent_contamination", "D4(b): agent contamination " + ", ".join(f"'{x}'" for x in agent))
    roles = _role_lines(a.norm, a.persona)
    if roles or a.after_token:
        points -= 1
        if roles:
            a.lose("d4.role_line", "D4(c): line starts with role " + ", ".join(f"'{r}'" for r in roles))
        if a.after_token:
            a.lose("d4.text_after_token", f"D4(c): text after template token '{a.after_token}'")
    return max(points, 0)


def _d5(a: Answer) -> int:
    """D5 quality: 0 for a run-on turn (v1.1); else 2 minus one a problem (a)–(d)."""
    if a.after_token:
        a.lose("d5.run_on", f"D5: text after template token '{a.after_token}': the turn ran on (D5 = 0, v1.1)")
        return 0
    points, text, q = 2, a.text, a.q
    if a.finish_reason == "length":
        points -= 1
        a.lose("d5.length_limit", "D5(a): finish_reason is 'length'")
    elif a.finish_reason is None and not _ends_properly(text):
        points -= 1
        a.lose("d5.no_ending", f"D5(a): no finish_reason and the text ends with {text.rstrip()[-1]!r}")
    n_words = sum(1 for w in text.split() if re.search(r"\w", w))
    if not MIN_WORDS <= n_words <= MAX_WORDS:
        points -= 1
        a.lose("d5.word_count", f"D5(b): {n_words} words (expected {MIN_WORDS}-{MAX_WORDS})")
    if a.degenerate:
        points -= 1
        a.lose("d5.repetition", a.degenerate)
    if q.topic or q.facts or q.identity_probe:
        addressed = bool(found(a.norm, q.topic)) or a.covered > 0 or bool(a.hallucinated or a.forbidden)
        if q.identity_probe:
            addressed = addressed or a.has_name or bool(found(a.norm, list(a.g.self_descriptions)))
        if not addressed:
            points -= 1
            a.lose("d5.off_topic", "D5(d): off topic (no topic word, fact, wrong claim"
                   + (" or self-description)" if q.identity_probe else ")"))
    return max(points, 0)


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Dimension:
    key: str                        # the metric, the table column, the assessment's name: "d1_identity"
    title: str                      # in words: "identity"
    max_points: int
    reasons: dict                   # the reason codes it can cost ("d1.…") → what each means
    card_fields: tuple              # the persona card's fields its rules read
    score: Callable[[Answer], int]  # its points for one answer (it records what it cost)
    advice: str                     # diagnose's change where the run loses points its references keep
    # yes/no items a model judge is asked (judge.py), each "yes" the good answer; {name}, {language} and
    # {markers} come from the card. Its points are max_points × yes answers / items, rounded.
    checklist: tuple = field(default_factory=tuple)

    @property
    def short(self) -> str:
        """Its name in reports and in the rubric's sentences: "D1" for d1_identity."""
        return short_name(self.key)

    @property
    def prefix(self) -> str:
        """The start of its reason codes: "d1."."""
        return code_prefix(self.key)


def short_name(dim: str) -> str:
    """A dimension's name in reports and in the rubric's sentences: "D1" for d1_identity."""
    return dim.split("_")[0].upper()


def code_prefix(dim: str) -> str:
    """The start of the reason codes that cost a dimension: "d1." for d1_identity (or for "D1")."""
    return dim.split("_")[0].lower() + "."


class Rubric:
    """The rubric's rows, in scoring order (each row's reasons come before the next row's)."""

    def __init__(self, version: str, dimensions: list[Dimension]):
        self.version = version
        self.dimensions = list(dimensions)

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(d.key for d in self.dimensions)

    @property
    def max_score(self) -> int:
        return sum(d.max_points for d in self.dimensions)

    def dimension(self, key: str) -> Dimension:
        return next(d for d in self.dimensions if d.key == key)

    @property
    def reason_codes(self) -> dict[str, str]:
        return {EMPTY: "empty or whitespace-only response: 0 on every dimension",
                **{code: meaning for d in self.dimensions for code, meaning in d.reasons.items()}}

    def table_md(self) -> str:
        """docs/rubric.md's table of the dimensions (tests/test_rubric.py holds the docs to it)."""
        rows = ["| dimension | points | what it reads on the card | reason codes |", "|---|---|---|---|"]
        rows += [f"| {d.short} {d.title} (`{d.key}`) | 0–{d.max_points} | {', '.join(d.card_fields) or '–'} | "
                 + ", ".join(f"`{c}`" for c in d.reasons) + " |" for d in self.dimensions]
        return "\n".join(rows + [f"| **score** | 0–{self.max_score} | | |"])


RUBRIC = Rubric(RUBRIC_VERSION, [
    Dimension("d1_identity", "identity", 2, {
        "d1.conflicting_identity": "claims an identity on the persona's conflicting list",
        "d1.other_name": "gives itself another name than the persona's",
        "d1.denies_name": "denies being the persona (v1.1)",
        "d1.probe_without_name": "an identity probe answered without the persona's name",
        "d1.no_name": "the persona's name does not appear (1 point)"},
        ("name", "conflicting_identities"), _d1, "more steps on identity examples; check the system prompt",
        ("Does the answer speak as {name} (it never says it is someone or something else)?",
         "Does the answer avoid claiming to be another AI, model, company or person?")),
    Dimension("d2_factual", "facts", 2, {
        "d2.hallucination": "states a known hallucination",
        "d2.forbidden": "states a claim the question forbids",
        "d2.loop_to_limit": "a loop to the token limit keeps no facts (v1.1)",
        "d2.facts_missed": "covers too few of the question's fact groups"},
        ("hallucinations",), _d2, "more steps; more examples stating the missed facts",
        ("Is everything the answer states correct, judged by the reference answer?",
         "Does the answer give the main information of the reference answer?")),
    Dimension("d3_voice", "voice", 2, {
        "d3.not_language": "not mainly in the persona's language",
        "d3.no_marker": "no voice marker",
        "d3.one_marker": "only one voice marker",
        "d3.boilerplate": "generic-assistant boilerplate",
        "d3.degenerate": "degenerate (repeating) text is not the persona's voice",
        "d3.other_identity": "speaks as another identity (a claim, another name or a denial)",
        "d3.loop_to_limit": "a loop to the token limit has no voice (v1.1)"},
        ("language", "voice_markers", "boilerplate"), _d3, "more examples in the persona's voice and language",
        ("Is the answer written in {language}?",
         "Does it sound like {name} as the system prompt describes the voice, not like a generic assistant?")),
    Dimension("d4_cleanliness", "cleanliness", 2, {
        "d4.template_token": "chat-template or special token in the text",
        "d4.agent_contamination": "tool-call markup, shell, paths or tool-use narration",
        "d4.role_line": "a line speaks for another role",
        "d4.text_after_token": "text after a chat-template token"},
        ("template_tokens", "agent_contamination", "role_prefixes"), _d4,
        "train with the model's own template (chat_template=model)",
        ("Is the answer free of special tokens, tool calls, shell commands and file paths?",
         "Does the answer stay one turn of {name}, with no line spoken for the user or another role?")),
    Dimension("d5_quality", "quality", 2, {
        "d5.run_on": "text after a chat-template token: the turn ran on (D5 = 0, v1.1)",
        "d5.length_limit": "hit the token limit (finish_reason length)",
        "d5.no_ending": "no finish_reason and the text does not end properly",
        "d5.word_count": f"fewer than {MIN_WORDS} or more than {MAX_WORDS} words",
        "d5.repetition": "degenerate repetition",
        "d5.off_topic": "does not address the question"},
        ("template_tokens",), _d5, "more steps teach the end of a turn; check eval_max_new_tokens",
        ("Does the answer address the question that was asked?",
         "Is the answer coherent, complete and free of repetition?")),
])


class _Keys(Sequence):
    """The rubric's dimension keys as they are when read: a row added to RUBRIC shows here at once."""

    def __getitem__(self, i):
        return RUBRIC.keys[i]

    def __len__(self):
        return len(RUBRIC.dimensions)

    def __repr__(self):
        return repr(RUBRIC.keys)


class _Codes(Mapping):
    """Every reason code the scorer emits, with what it means, as RUBRIC's rows are when read."""

    def __getitem__(self, code):
        return RUBRIC.reason_codes[code]

    def __iter__(self):
        return iter(RUBRIC.reason_codes)

    def __len__(self):
        return len(RUBRIC.reason_codes)


DIMENSIONS: Sequence[str] = _Keys()          # ("d1_identity", …, "d5_quality"), live
REASON_CODES: Mapping[str, str] = _Codes()   # {"empty": …, "d1.conflicting_identity": …}, live


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------

def score_response(question: Question, response: str, finish_reason: str | None, persona: Persona) -> dict:
    """{<each dimension>: points, score, reasons: [sentence], codes: [code]} for one response."""
    if finish_reason not in (None, *FINISH_REASONS):
        raise ValueError(f"finish_reason must be 'stop', 'length' or None, got {finish_reason!r}")
    if not response or not response.strip():
        return {**{d: 0 for d in DIMENSIONS}, "score": 0, "reasons": ["empty response"], "codes": [EMPTY]}
    a = Answer(question, response, finish_reason, persona)
    points = {d.key: d.score(a) for d in RUBRIC.dimensions}
    return {**points, "score": sum(points.values()), "reasons": [t for _, t in a.lost], "codes": [k for k, _ in a.lost]}


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
    means = {d: sum(r[d] for r in results) / n for d in DIMENSIONS}
    summary: dict = {d: round(m, SCORE_DECIMALS) for d, m in means.items()}
    summary["score"] = round(sum(means.values()), SCORE_DECIMALS)
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
    s, top = scored["summary"], RUBRIC.max_score
    head = "  ".join(f"{short_name(d)} {s[d]:.2f}" for d in DIMENSIONS)
    extra = "".join(f"  {k} {s[k]:.2f}" for k in ("ref_chrf", "ref_nll") if s.get(k) is not None)
    lines = [f"rubric v{s.get('rubric_version', RUBRIC_VERSION)}: score {s['score']:.2f}/{top}   ({head}){extra}"]
    for r in scored["results"]:
        lines.append(f"  {r['id']} {r['score']:>2}/{top}  {r['response'][:90]!r}")
    return "\n".join(lines)
