"""The persona bundle: a persona card, its evaluation questions (with reference answers) and its
dataset, which travel together through train, evaluate, sweep, rescore, diagnose, chat and the
registry, so that a run is scored against its own persona and never silently against Cláudio's.

- A card may name its questions and dataset (`questions: questions.json`, relative to the card):
  `persona=card.yaml` alone is then a whole bundle (dataset=persona, questions=persona: the card's).
- Pre-flight checks that they belong together (`findings`): questions in the card's language, no
  question that names another persona, and a card that has questions at all.
- A scored run logs the card and the questions under `persona/` with their sha256 as params
  (persona.sha256, questions.sha256); a train run's adapter carries a copy in `adapter/persona/`,
  so whatever holds the adapter (a registered model, a downloaded folder) holds its persona too.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from molting_mlflow.ground.language import LANGUAGE_DIR, OWN_LANGUAGE_DIR, words
from molting_mlflow.ground.matching import found, normalise
from molting_mlflow.ground.models import sha256_file
from molting_mlflow.ground.paths import DEFAULT_PERSONA
from molting_mlflow.ground.persona import Persona, PersonaError, load_persona
from molting_mlflow.ground.findings import Finding
from molting_mlflow.ground.rubric import score_response

BUNDLE_DIR = "persona"         # the artifact folder, in a run and in its adapter
CARD_FILE = "persona.yaml"
QUESTIONS_FILE = "questions.json"
# D1 codes a reference answer loses when it speaks as someone else than the card's persona
_OTHER_IDENTITY = ("d1.other_name", "d1.conflicting_identity", "d1.denies_name", "d1.probe_without_name")


# ---------------------------------------------------------------------------------------------
# Pre-flight: do the card and the questions belong together?
# ---------------------------------------------------------------------------------------------

def findings(persona: Persona, questions_path: str, questions: list | None) -> list[Finding]:
    """Error findings for a card without questions, questions in another language than the card's,
    and questions that name another persona; one info finding when they agree."""
    card = persona.path
    if not questions_path:
        return [Finding("persona.no_questions", "error",
                        f"the persona card {card} names no evaluation questions, so the run cannot be scored against "
                        "this persona. Fix: add `questions: <file>` to the card (relative to it) or pass "
                        "questions=<file> (format: docs/own-persona.md)", f"card: {card}",
                        [{"questions": "<file>"}])]
    out = []

    tokens = [t for q in questions for t in words(normalise(f"{q.question} {q.reference}"))]
    ok, evidence = persona.languages.mainly_in(tokens, persona.language)
    if not ok:
        lang = persona.languages.likeliest(tokens)
        out.append(Finding("persona.questions_language", "error",
                           f"the questions ({questions_path}) are in '{lang}', the persona card {card} speaks "
                           f"'{persona.language}': references and facts in another language score answers in the "
                           f"persona's own wrong. Fix: questions=<a questions file in '{persona.language}'>, or "
                           f"persona=<the card of the persona these questions are for>", evidence,
                           [{"questions": "<file>"}, {"persona": "<card>"}]))
    other = [(q.id, why) for q in questions if (why := _names_another(persona, q))]
    if other:
        out.append(Finding("persona.questions_other_persona", "error",
                           f"{len(other)} of {len(questions)} questions ({questions_path}) are about another persona "
                           f"than {persona.name} ({card}), e.g. {other[0][0]}: {other[0][1]}. Fix: questions=<the "
                           f"questions for {persona.name}>, or persona=<the card these questions are for>",
                           "; ".join(f"{i}: {w}" for i, w in other[:4]),
                           [{"questions": "<file>"}, {"persona": "<card>"}]))
    if not out:
        out.append(Finding("persona", "info", f"persona {persona.name} ({persona.language}, {card}) with "
                           f"{len(questions)} questions ({questions_path}) in its language, none about another "
                           "persona"))
    return out


def check(persona: Persona, questions_path: str, questions: list | None) -> None:
    """The same checks as one-line errors, where there is no pre-flight (evaluate)."""
    errors = [f for f in findings(persona, questions_path, questions) if f.level == "error"]
    if errors:
        raise PersonaError(f"{errors[0].check}: {errors[0].message}")


def _names_another(persona: Persona, q) -> str:
    """Why question q is another persona's ("" when it is not): its reference answer, scored as this
    persona, speaks as someone else; or it asks who the assistant is and no fact names this persona."""

    if q.reference:
        got = score_response(q, q.reference, "stop", persona)
        lost = [r for c, r in zip(got["codes"], got["reasons"]) if c in _OTHER_IDENTITY]
        if lost:
            return f"its reference {q.reference[:60]!r}: {lost[0]}"
    if q.identity_probe and not found(normalise(json.dumps(q.facts, ensure_ascii=False)), [persona.name]):
        return f"an identity question whose facts {q.facts} never name {persona.name}"
    return ""


# ---------------------------------------------------------------------------------------------
# The bundle in a run: logged, copied into the adapter, read back
# ---------------------------------------------------------------------------------------------

def params(persona: Persona, questions_path: str) -> dict:
    """The bundle as MLflow params: what the run was scored against (its language's files too: their words
    decide D1 and D3, so another es.yaml is another score)."""
    lang = persona.languages.get(persona.language)
    digest = hashlib.sha256(b"".join(Path(f).read_bytes() for f in lang.files)).hexdigest() if lang else ""
    return {"persona.name": persona.name, "persona.language": persona.language,
            "persona.sha256": sha256_file(persona.path), "persona.language_sha256": digest,
            "questions.sha256": sha256_file(questions_path) if questions_path else ""}


def own_language_files(persona: Persona) -> list[Path]:
    """The language files of the persona's own (beside its card, not the package's): they travel with it."""
    return [Path(f) for lang in persona.languages.langs for f in lang.files
            if Path(f).resolve().parent != LANGUAGE_DIR.resolve()]


def write(folder: Path, persona: Persona, questions_path: str) -> Path:
    """Copy the card, the questions and the card's own language files into folder/persona/ (fixed names and
    languages/: a reader needs no paths, and the copied card finds its languages beside it)."""
    out = Path(folder) / BUNDLE_DIR
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(persona.path, out / CARD_FILE)
    if questions_path:
        shutil.copyfile(questions_path, out / QUESTIONS_FILE)
    for f in own_language_files(persona):
        (out / OWN_LANGUAGE_DIR).mkdir(exist_ok=True)
        shutil.copyfile(f, out / OWN_LANGUAGE_DIR / f.name)
    return out


def log(persona: Persona, questions_path: str) -> None:
    """Log the bundle's files on the active run: persona/persona.yaml and persona/questions.json (their
    sha256 are params(), which a train run logs with its other params)."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.log_artifacts(str(write(Path(tmp), persona, questions_path)), BUNDLE_DIR)


def found_in(folder: Path) -> tuple[str, str] | None:
    """(card, questions) of a bundle folder/persona/, or None where there is none (runs and adapters
    logged before bundles were)."""
    d = Path(folder) / BUNDLE_DIR
    card, questions = d / CARD_FILE, d / QUESTIONS_FILE
    if not card.is_file():
        return None
    return str(card), str(questions) if questions.is_file() else ""


def of_run(run_id: str) -> tuple[str, str] | None:
    """The bundle a run logged (downloaded), or None when it logged none."""
    import mlflow
    from mlflow.tracking import MlflowClient

    if BUNDLE_DIR not in {a.path for a in MlflowClient().list_artifacts(run_id)}:
        return None
    return found_in(Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/{BUNDLE_DIR}")).parent)


def adapter_persona(adapter_dir: Path) -> Persona:
    """The persona an adapter trained as: the card it carries, else (an adapter from before adapters
    carried one) the shipped card."""
    logged = found_in(adapter_dir)
    return load_persona(logged[0] if logged else DEFAULT_PERSONA)
