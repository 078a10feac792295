"""Chat templates: what a template renders and what it must be before anything renders with it.

What it renders: the model's end-of-turn token, the system text a template injects when there is
none, whether it drops a system turn, and so whether the system prompt is folded into the first
user turn. Pre-flight, training, generation, evaluation and the registry all ask here.

What it must be: a chat template is code that a model folder, an adapter or a file brings. It must
parse, read no other file, stay inside Jinja's sandbox and render a plain user and assistant
exchange; each way it fails is one line naming the template and the fix. transformers renders chat
templates in Jinja's ImmutableSandboxedEnvironment without a loader: an attribute walk such as
''.__class__.__mro__ raises SecurityError and {% include '/etc/passwd' %} reads nothing;
check_chat_template turns those, and a template's own raise_exception(...), into user errors.
The sandbox bounds one range() (100,000 items) but not loops nested in each other or a string
multiplied up, so the check's render is bounded too: RENDER_S seconds and RENDER_CHARS characters.
"""
from __future__ import annotations

import re
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from jinja2 import nodes
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from molting_mlflow.ground.config import ConfigError
from molting_mlflow.ground.errors import MoltingError, unreadable

SENTINEL = "MOLTINGSENTINEL"
SYSTEM_SENTINEL = "MOLTINGSYSTEMPROMPT"


def special_tokens(tok) -> list[str]:
    """Every added/special token string of the vocabulary (e.g. <|im_end|>, <|endoftext|>, </s>)."""
    toks = {t.content for t in getattr(tok, "added_tokens_decoder", {}).values() if len(t.content) > 1}
    toks.update(t for t in tok.all_special_tokens if len(t) > 1)
    return sorted(toks, key=len, reverse=True)


def end_of_turn_token(tok, template: str) -> str | None:
    """The token the model's own template puts right after an assistant answer (<|im_end|>, </s>, <|end|>)."""
    text = tok.apply_chat_template([{"role": "user", "content": "u"}, {"role": "assistant", "content": SENTINEL}],
                                   chat_template=template, tokenize=False)
    rest = text.split(SENTINEL, 1)[1].lstrip(" ")
    for s in special_tokens(tok):
        if rest.startswith(s):
            return s
    return None


def default_system_prompt(tok, template: str) -> str | None:
    """The system text a template injects when the conversation has none (SmolLM2: 'You are … SmolLM …');
    role markers, special or plain text (TinyLlama's <|user|>), are not text."""
    text = tok.apply_chat_template([{"role": "user", "content": SENTINEL}], chat_template=template, tokenize=False)
    head = text.split(SENTINEL, 1)[0]
    for s in special_tokens(tok):
        head = head.replace(s, "\n")
    head = re.sub(r"<\|?/?[A-Za-z_]+\|?>", "\n", head)
    head = "\n".join(line for line in head.splitlines() if line.strip() not in ("", "system", "user"))
    return head.strip() or None


def template_drops_system(tok, template: str) -> bool:
    """Whether a system message renders to nothing through `template` (Phi-3-mini's first template renders
    only user and assistant turns; a template that refuses the role drops it too)."""
    try:
        text = tok.apply_chat_template([{"role": "system", "content": SYSTEM_SENTINEL},
                                        {"role": "user", "content": "u"}], chat_template=template,
                                       add_generation_prompt=True, tokenize=False)
    except TemplateError:
        return True
    return SYSTEM_SENTINEL not in text


@dataclass(frozen=True)
class TemplateFacts:
    """What a model's own template and the training template do, found once (prepare) and read by the
    checks (preflight): the checks render nothing of their own to learn it."""
    end_of_turn: str | None          # the token the model's own template closes a turn with
    specials: tuple                  # the tokenizer's special tokens
    injected_system_prompt: str | None   # what the model's own template says with no system turn given
    drops_system: bool               # the training template renders a system turn to nothing
    own_drops_system: bool           # the model's own template does


def facts(tok, own_template: str, template: str) -> TemplateFacts:
    return TemplateFacts(end_of_turn_token(tok, own_template), tuple(special_tokens(tok)),
                         default_system_prompt(tok, own_template), template_drops_system(tok, template),
                         template_drops_system(tok, own_template))


def folds(system_prompt: str | None, mode: str, tok, own_template: str) -> bool:
    """Whether the system prompt goes into the first user turn (data.fold_system), in training and at
    inference alike: asked for (system_prompt=fold), or the model's own template drops the system turn,
    where folding is the only way the prompt reaches the model."""
    return bool(system_prompt) and (mode == "fold" or template_drops_system(tok, own_template))


def training_template(setting: str, tok) -> tuple[str, str]:
    """(text, source) of the template that trains: the model's own ('model'), or a file's text, checked
    (check_chat_template) before anything renders with it."""
    if setting == "model":
        return tok.chat_template, "model"
    try:
        text = Path(setting).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"chat_template={setting}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"chat_template={unreadable(setting, e)}") from None
    check_chat_template(text, tok, f"chat_template={setting}")
    return text, f"file:{setting}"


# ---------------------------------------------------------------------------------------------
# A template before it renders anything
# ---------------------------------------------------------------------------------------------

SAMPLE = [{"role": "user", "content": "Olá"}, {"role": "assistant", "content": "Olá! Como posso ajudar?"}]
# A chat template renders SAMPLE (two turns, 30 characters) in well under a millisecond into a few hundred
# characters; 10 s or 1,000,000 characters is a loop without bound (range(100000) in range(100000) is 10^10
# iterations), never a template doing its job.
RENDER_S = 10.0
RENDER_CHARS = 1_000_000
_TEMPLATE_CODE = "<template>"   # the filename Jinja compiles a template from a string under (from_string)


class ChatTemplateError(MoltingError, ValueError):
    """A chat template that cannot render a conversation; the message names it and the fix."""


def check_chat_template(template: str, tok, where: str) -> None:
    """Raise ChatTemplateError unless `template` parses, includes no file and renders SAMPLE through
    `tok` (with and without the generation prompt). `where`: the template's origin, for the message."""
    try:
        tree = ImmutableSandboxedEnvironment().parse(template)
    except TemplateSyntaxError as e:
        raise ChatTemplateError(f"{where}: Jinja syntax error on line {e.lineno} ({e.message}); fix the template "
                                "(or chat_template=model)") from None
    if next(tree.find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)), None) is not None:
        raise ChatTemplateError(f"{where}: the template reads another file ({{% include %}}, {{% import %}} or "
                                "{% extends %}), which a chat template may not; write its text inline") from None
    for generation_prompt in (False, True):
        try:
            with _time_bound(RENDER_S):
                text = tok.apply_chat_template(SAMPLE, chat_template=template, tokenize=False,
                                               add_generation_prompt=generation_prompt)
        except SecurityError as e:
            raise ChatTemplateError(f"{where}: the template tries to leave Jinja's sandbox ({e}); nothing was read "
                                    "or run: use a template that only renders the messages") from None
        except TemplateError as e:   # raise_exception(...) in the template, or an error Jinja found rendering
            raise ChatTemplateError(f"{where}: the template refuses a user/assistant conversation ({e}); fix the "
                                    "template (or chat_template=model)") from None
        except _TooSlow:
            raise ChatTemplateError(f"{where}: the template renders a two-turn conversation for more than "
                                    f"{RENDER_S:.0f} s (loops without bound); fix the template (or "
                                    "chat_template=model)") from None
        except MemoryError:         # 'x' * 10**12
            raise ChatTemplateError(f"{where}: the template builds a text larger than memory; fix the template (or "
                                    "chat_template=model)") from None
        except RecursionError:      # a macro that calls itself
            raise ChatTemplateError(f"{where}: the template recurses without end (a macro calling itself); fix the "
                                    "template (or chat_template=model)") from None
        except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as e:  # Python's, mid-render
            raise ChatTemplateError(f"{where}: the template fails to render ({type(e).__name__}: {e}); fix the "
                                    "template (or chat_template=model)") from None
        if len(text) > RENDER_CHARS:
            raise ChatTemplateError(f"{where}: the template renders a two-turn conversation into {len(text):,} "
                                    f"characters (more than {RENDER_CHARS:,}); fix the template (or "
                                    "chat_template=model)")
        missing = [m["role"] for m in SAMPLE if m["content"] not in text]
        if not generation_prompt and missing:
            raise ChatTemplateError(f"{where}: the template renders a user/assistant conversation without the "
                                    f"{' and '.join(missing)} turn's text; fix the template (or chat_template=model)")


class _TooSlow(Exception):
    """Raised inside a template's own code when its render passes the time bound."""


@contextmanager
def _time_bound(seconds: float):
    """Lines of template code (Jinja compiles a template into Python) raise _TooSlow once `seconds` have
    passed. Only frames of template code are traced, and only for this render; a tracer already set (a
    debugger, coverage) is put back after."""
    deadline = time.monotonic() + seconds

    def in_template(frame, event, arg):
        if time.monotonic() > deadline:
            raise _TooSlow
        return in_template

    def on_call(frame, event, arg):
        return in_template if frame.f_code.co_filename == _TEMPLATE_CODE else None

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        yield
    finally:
        sys.settrace(previous)
