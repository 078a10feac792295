"""A model judge beside the rubric, when the user names one: each answer is asked each dimension's yes/no
checklist (rubric.Dimension.checklist, filled from the persona card), one item a request, and a
dimension's points are its share of "yes" answers (0 to its maximum, rounded). Small judges answer yes/no
items far better than 1–10 scales; every reply is kept as the rationale.

The model is any `provider:/model` MLflow's GenAI model calls accept (`openai:/gpt-4.1-mini`,
`anthropic:/claude-…`, …), called through MLflow's own model-calling path for LLM-judged metrics
(mlflow.metrics.genai.model_utils.score_model_on_payload: plain text back, no retries, one time bound a
call). A local server is an OpenAI-compatible one named by its base URL (`transformers serve`, Ollama,
vLLM, llama.cpp: `judge=openai:/<served model> judge_base_url=http://127.0.0.1:8000/v1`). MLflow's
`make_judge` is not used: its judges parse JSON out of the model's reply, which a small local model rarely
writes, and `transformers serve` ignores the response format that would force it.

`check()` runs before any answer is generated: the judge must answer (one line, exit 2, where it does
not), and two calibration items with known answers must come back as a yes or a no ("answers nonsense"
otherwise). Nothing calls a judge unless asked.
"""
from __future__ import annotations

import os
import re
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlparse

from molting_mlflow.ground.errors import MoltingError, first_line
from molting_mlflow.ground.persona import Persona
from molting_mlflow.ground.questions import Question
from molting_mlflow.ground.rubric import RUBRIC, Dimension

PROMPT_VERSION = "1"          # the prompt's wording below; another wording is another version (a param)
MAX_REPLY_TOKENS = 8          # "Yes." or "No, it says it is…": the first words decide, the rest is its rationale
_YES = {"yes", "y", "sim", "si", "sí", "oui", "ja", "true"}
_NO = {"no", "n", "nao", "não", "non", "nein", "false"}
# Calibration: items whose answers nobody disputes. A judge that returns no yes/no to these answers nonsense.
CALIBRATION = (("Is the sentence 'The cat sat on the mat.' written in English?", True),
               ("Is the number 3 larger than the number 12?", False))


class JudgeError(MoltingError, RuntimeError):
    """The judge cannot be reached, or answers nonsense; the message names it and the fix."""


@dataclass(frozen=True)
class Judge:
    model: str                 # provider:/model
    base_url: str = ""         # an OpenAI-compatible server's /v1 root ("": the provider's own)
    timeout_s: int = 60        # one call at most

    @property
    def endpoint(self) -> str | None:
        """The chat endpoint MLflow posts to where a base URL is given (it takes the whole endpoint)."""
        return f"{self.base_url.rstrip('/')}/chat/completions" if self.base_url else None

    def params(self) -> dict:
        return {"judge.model": self.model, "judge.base_url": self.base_url or "(provider default)",
                "judge.prompt_version": PROMPT_VERSION, "judge.timeout_s": self.timeout_s}


def judge_of(cfg) -> Judge | None:
    """The judge a config (TrainConfig, EvalConfig, SweepConfig, rescore's options) names, or None."""
    return Judge(cfg.judge, cfg.judge_base_url, cfg.judge_timeout_s) if cfg.judge else None


def parse_model(uri: str) -> tuple[str, str]:
    """(provider, model) of `provider:/model`, or a JudgeError saying the form."""
    provider, sep, model = uri.partition(":/")
    if not sep or not provider or not model.strip("/"):
        raise JudgeError(f"judge={uri!r} is not a model URI; write provider:/model, e.g. openai:/gpt-4.1-mini, or "
                         "openai:/<served model> with judge_base_url=http://127.0.0.1:8000/v1 for a local server")
    return provider, model.strip("/")


@contextmanager
def _call_settings(judge: Judge):
    """MLflow reads the time bound and OpenAI's key from the environment at each call: set them for ours. A
    server the user names by URL takes no key, but MLflow's openai provider refuses to run without one."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_GENAI_EVAL_LLM_TIMEOUT", "OPENAI_API_KEY")}
    os.environ["MLFLOW_GENAI_EVAL_LLM_TIMEOUT"] = str(judge.timeout_s)
    if judge.base_url and not saved["OPENAI_API_KEY"]:
        os.environ["OPENAI_API_KEY"] = "unused-by-a-local-server"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def ask(judge: Judge, prompt: str) -> str:
    """The judge's reply to one prompt (greedy, short); a JudgeError naming the judge where the call fails."""
    from mlflow.exceptions import MlflowException
    from mlflow.metrics.genai.model_utils import score_model_on_payload

    with _call_settings(judge):
        try:
            reply = score_model_on_payload(judge.model, prompt, {"temperature": 0.0, "max_tokens": MAX_REPLY_TOKENS},
                                           proxy_url=judge.endpoint)
        except (MlflowException, OSError) as e:
            raise JudgeError(f"the judge {judge.model}{' at ' + judge.base_url if judge.base_url else ''} failed "
                             f"({type(e).__name__}: {first_line(e, 200)}); check that it runs, or judge=<another>") from None
    return reply if isinstance(reply, str) else str(reply)


def yes_no(reply: str) -> bool | None:
    """A reply's yes (True) or no (False): its first word, else the first yes/no word of its first line;
    None where it has neither (the judge did not answer the item)."""
    for w in re.findall(r"[^\W\d_]+", (reply.strip().splitlines() or [""])[0].lower()):
        if w in _YES:
            return True
        if w in _NO:
            return False
    return None


def check(judge: Judge) -> str:
    """Before any generation: the server answers (a TCP connection, then the calibration items), and its
    replies are yes or no. Returns "k/2 calibration items right" for the record; JudgeError otherwise."""
    parse_model(judge.model)
    if judge.base_url:
        url = urlparse(judge.base_url)
        try:
            socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                     timeout=min(5, judge.timeout_s)).close()
        except OSError as e:
            raise JudgeError(f"the judge's server {judge.base_url} is not reachable ({e.strerror or type(e).__name__}); "
                             "start it (e.g. transformers serve <model folder>), or point judge_base_url at one that "
                             "runs") from None
    t0, right, replies = time.time(), 0, []
    for item, truth in CALIBRATION:
        reply = ask(judge, yes_no_prompt("", item))
        replies.append(reply)
        got = yes_no(reply)
        if got is None:
            raise JudgeError(f"the judge {judge.model} answers nonsense: asked {item!r} for a yes or a no, it replied "
                             f"{reply.strip()[:80]!r}; point judge at a model that follows instructions "
                             "(docs/judge.md)")
        right += got == truth
    said = f"{right}/{len(CALIBRATION)} calibration items right in {time.time() - t0:.1f} s"
    if right < len(CALIBRATION):   # it answers, but wrongly: a reading to measure before trusting (an always-yes judge)
        said += ("; a judge that misses a plain item reads answers little better than chance: measure it against "
                 "your labels (molting agreement) before trusting judge.score")
    return said


def yes_no_prompt(context: str, item: str) -> str:
    """One yes/no item, the instruction first and last: SmolLM2-135M-Instruct restated the question ("The
    sentence … is written in English.") when asked for a yes or a no only after it, and answered with a
    yes or a no when asked both before and after it."""
    return f"Answer with exactly one word: yes or no.\n{context}Question: {item}\nAnswer (yes or no):"


def item_prompt(persona: Persona, q: Question, answer: str, item: str) -> str:
    """One checklist item about one answer, with what the judge needs to decide it."""
    ref = f"A good answer, for comparison: {q.reference}\n" if q.reference else ""
    return yes_no_prompt(f"You check one answer of a chat assistant called {persona.name}.\n"
                         f"How {persona.name} is meant to be: {persona.system_prompt}\n"
                         f"The question it was asked: {q.question}\n{ref}"
                         f"The answer to check:\n<<<\n{answer}\n>>>\n", item)


def items(dim: Dimension, persona: Persona) -> list[str]:
    """A dimension's checklist, filled from the card."""
    lang = persona.languages.get(persona.language)
    fields = {"name": persona.name, "language": lang.name if lang else persona.language,
              "markers": ", ".join(persona.voice_markers[:6])}
    return [text.format(**fields) for text in dim.checklist]


@dataclass(frozen=True)
class Verdict:
    """A judge's reading of one answer on one dimension."""
    dimension: str
    points: float | None       # None: no item was answered yes or no
    rationale: str             # each item, its answer and the judge's words
    answered: int              # items that came back yes or no
    asked: int


def judge_answer(judge: Judge, persona: Persona, q: Question, answer: str) -> list[Verdict]:
    """Every dimension's checklist for one answer (a dimension without items is left out)."""
    out = []
    for dim in RUBRIC.dimensions:
        asked = items(dim, persona)
        if not asked:
            continue
        got = [(item, ask(judge, item_prompt(persona, q, answer, item))) for item in asked]
        votes = [yes_no(reply) for _, reply in got]
        answered = [v for v in votes if v is not None]
        points = round(dim.max_points * sum(answered) / len(answered)) if answered else None
        rationale = " | ".join(f"{item} → {'yes' if v else 'no' if v is False else 'no answer'} "
                               f"({reply.strip()[:120]!r})" for (item, reply), v in zip(got, votes))
        out.append(Verdict(dim.key, points, rationale, len(answered), len(asked)))
    return out


def judge_answers(judge: Judge, persona: Persona, questions: list[Question], records: list[dict]) -> dict:
    """{question id: [Verdict, …]} for generated records ({"id", "response"}), in order; and the time it took
    as the key "_seconds"."""
    by_id = {q.id: q for q in questions}
    t0 = time.time()
    out: dict = {r["id"]: judge_answer(judge, persona, by_id[r["id"]], r["response"]) for r in records}
    out["_seconds"] = time.time() - t0
    return out


def judge_summary(verdicts: dict) -> dict:
    """judge.<dimension> (mean points over the answers the judge answered), judge.score (their sum),
    judge.unanswered (dimension readings with no yes or no) and judge.seconds."""
    per_dim: dict[str, list[float]] = {}
    unanswered = 0
    for qid, vs in verdicts.items():
        if qid == "_seconds":
            continue
        for v in vs:
            if v.points is None:
                unanswered += 1
            else:
                per_dim.setdefault(v.dimension, []).append(v.points)
    means = {d: sum(p) / len(p) for d, p in per_dim.items() if p}
    out = {f"judge.{d}": round(m, 3) for d, m in means.items()}
    if means:
        out["judge.score"] = round(sum(means.values()), 3)
    return out | {"judge.unanswered": unanswered, "judge.seconds": verdicts.get("_seconds", 0.0)}
