"""The persona card as data (data/persona.yaml): the system prompt and every list the rubric reads.

A user with another persona edits the YAML, never the code.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from molting_mlflow.ground.errors import MoltingError, first_line, too_deep, unreadable
from molting_mlflow.ground.language import Languages, folders_for, languages_in, package_languages, unknown_language
from molting_mlflow.ground.paths import DEFAULT_DATASET, DEFAULT_PERSONA, DEFAULT_QUESTIONS
from molting_mlflow.ground.yamlwords import node_problem, top_level


class PersonaError(MoltingError, ValueError):
    """The persona file is missing or malformed (message names the file and the field)."""


@dataclass(frozen=True)
class Persona:
    name: str                       # the assistant's own name ("Cláudio"): D1 looks for it
    system_prompt: str              # canonical system prompt, prepended to examples that lack one
    voice_markers: list[str]        # D3: whole-word, case/accent-insensitive
    boilerplate: list[str]          # D3: generic-assistant phrases that break the voice
    conflicting_identities: list[str]  # D1: names the assistant must never claim
    hallucinations: list[str]       # D2: known wrong claims, phrases
    template_tokens: list[str]      # D4 (a): chat-template / special tokens
    agent_contamination: list[str]  # D4 (b): tool markup, shell, paths, tool-use narration
    role_prefixes: list[str] = field(default_factory=list)  # D4 (c): "Usuário:", "User:", ...
    language: str = "pt"            # ISO 639-1: D3's "mainly in the persona's language" (language.py)
    questions: str = ""             # its evaluation questions (the card names them relative to itself); "" none
    dataset: str = ""               # its training examples, likewise; "" none
    path: str = ""
    # the languages in play: the package's and the card's own beside it (language.folders_for)
    languages: Languages = field(default_factory=package_languages, compare=False, repr=False)


# Fields a card may leave out; `questions` and `dataset` are file paths, relative to the card.
OPTIONAL = ("role_prefixes", "questions", "dataset")
CARD_FILES = ("questions", "dataset")
NOT_CARD_FIELDS = ("path", "languages")      # what loading adds, never written in a card
# A persona's name is a name: it is matched in every answer and printed in every report line that names it
MAX_NAME = 100


def load_persona(path: str | Path = DEFAULT_PERSONA) -> Persona:
    p = Path(path)
    if not p.is_file():
        raise PersonaError(f"{p}: persona file not found; pass an existing YAML file (see data/persona.yaml)")
    try:
        text = p.read_text(encoding="utf-8")
        raw = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as e:   # a tag safe_load refuses to build: !!python/object, ...
        raise PersonaError(f"{p}: {_refused_tag(text, e.problem_mark)}; a persona card is plain data (strings and "
                           "lists): remove the tag") from None
    except yaml.YAMLError as e:
        raise PersonaError(f"{p}: not valid YAML{_where(e)} ({getattr(e, 'problem', None) or first_line(e, 200)}); "
                           "fix the card's syntax (data/persona.yaml shows every field)") from None
    except UnicodeDecodeError as e:
        raise PersonaError(f"{p}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); save the "
                           "card as UTF-8") from None
    except OSError as e:
        raise PersonaError(unreadable(p, e)) from None
    except RecursionError:     # PyYAML composes a node a level, recursively
        raise PersonaError(too_deep(p, "a persona card is fields of strings and lists, 2 levels deep")) from None
    if not isinstance(raw, dict):
        raise PersonaError(f"{p}: expected a mapping of persona fields at top level, got "
                           f"{type(raw).__name__}; write the card as `field: value` lines (data/persona.yaml shows "
                           "every field)")
    names = {f.name for f in fields(Persona)} - set(NOT_CARD_FIELDS)
    unknown = sorted(set(raw) - names)
    if unknown:
        raise PersonaError(f"{p}: unknown field(s) {unknown}; expected only {sorted(names)}")
    kwargs, nodes = {}, top_level(text)
    for f in fields(Persona):
        if f.name in NOT_CARD_FIELDS or (f.name not in raw and f.name in OPTIONAL):
            continue
        if f.name not in raw:
            hint = " (its ISO 639-1 code, e.g. pt or en)" if f.name == "language" else ""
            raise PersonaError(f"{p}: missing field '{f.name}'{hint}; add it to the card (data/persona.yaml shows "
                               "every field)")
        if (line := node_problem(p, f.name, nodes.get(f.name))) is not None:    # `name: no`, `voice_markers: [yes, tá]`
            raise PersonaError(line)
        kwargs[f.name] = _field(p, f.name, raw[f.name])
    langs = languages_in(folders_for(p))
    if kwargs["language"] not in langs.codes:
        raise PersonaError(unknown_language(p, kwargs["language"], langs))
    return Persona(path=str(p), languages=langs, **kwargs)


def _where(e: yaml.YAMLError) -> str:
    """' at line 3, column 7' where the parser marked the problem (its marks count from 0), else ''."""
    mark = getattr(e, "problem_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _refused_tag(text: str, mark) -> str:
    """'line 3: the YAML tag !!python/object:os.system is refused', read at the mark safe_load stopped at."""
    if mark is None:
        return "a YAML tag is refused"
    line = text.splitlines()[mark.line] if mark.line < len(text.splitlines()) else ""
    word = line[mark.column:].split()[0] if line[mark.column:].split() else "?"
    return f"line {mark.line + 1}: the YAML tag {word} is refused"


def _field(p: Path, name: str, v):
    """One field's value, checked; a file the card names is taken relative to the card's folder."""
    if name == "language":
        if not isinstance(v, str) or not v.strip():
            raise PersonaError(f"{p}: field 'language' must be an ISO 639-1 code; write it as `language: pt`")
        return v.strip()
    if name == "name" and isinstance(v, str) and len(v.strip()) > MAX_NAME:
        raise PersonaError(f"{p}: field 'name' is {len(v.strip()):,} characters; a persona's name has at most "
                           f"{MAX_NAME}: write the name alone (the system prompt describes the persona)")
    if name in ("name", "system_prompt", *CARD_FILES):
        if not isinstance(v, str) or not v.strip():
            raise PersonaError(f"{p}: field '{name}' must be a non-empty string"
                               + (" (a file path, relative to the card)" if name in CARD_FILES else "")
                               + f"; write it as `{name}: <text>`")
        return str(p.parent / v.strip()) if name in CARD_FILES else v.strip()
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise PersonaError(f"{p}: field '{name}' must be a list of non-empty strings; write it as `{name}: [a, b]` "
                           "or one `- item` a line")
    return list(v)


# ---------------------------------------------------------------------------------------------
# The files a card names (its bundle: bundle.py)
# ---------------------------------------------------------------------------------------------

FROM_CARD = "persona"          # dataset=persona / questions=persona: the file the card names


def card_file(persona: Persona, what: str) -> str:
    """The file the card names for `what` ("questions" or "dataset"), or "". The shipped sample card
    (data/persona.yaml) names none: it stands for the shipped files (paths.py), so that its text, and
    tiny-random's tokenizer trained on that text, stay as they were."""
    named = getattr(persona, what)
    if named or Path(persona.path).resolve() != DEFAULT_PERSONA.resolve():
        return named
    return str({"questions": DEFAULT_QUESTIONS, "dataset": DEFAULT_DATASET}[what])


def resolve_paths(persona_path: str, dataset: str, questions: str) -> tuple[str, str]:
    """(dataset, questions): as given, or for FROM_CARD the files the card names. A dataset the card
    does not name is an error here; missing questions are "" (pre-flight's persona.no_questions)."""
    if FROM_CARD not in (dataset, questions):
        return dataset, questions
    persona = load_persona(persona_path)
    if dataset == FROM_CARD:
        dataset = card_file(persona, "dataset")
        if not dataset:
            raise PersonaError(f"{persona_path}: the card names no dataset; add `dataset: <file>` to it (relative "
                               "to the card) or pass dataset=<file>")
    if questions == FROM_CARD:
        questions = card_file(persona, "questions")
    return dataset, questions
