"""The rubric's input files: the questions (JSON, with facts, forbidden claims, topic words and a reference
answer) and the responses to score (JSON Lines), each checked on reading with a one-line error that names
the file, the place and the expected form (docs/rubric.md, "Question file" and "Response record").
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from molting_mlflow.ground.errors import MoltingError, json_line, too_deep, unreadable

FINISH_REASONS = ("stop", "length")


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
        rec = json_line(p, lineno, line, RubricInputError, _R_FORM, "a response is one flat object")
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
