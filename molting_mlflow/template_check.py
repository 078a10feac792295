"""A chat template is code that a model folder, an adapter or a file brings: before anything renders
with it, it must parse, read no other file, stay inside Jinja's sandbox and render a plain user and
assistant exchange. Each way it fails is one line naming the template and the fix.

transformers renders chat templates in Jinja's ImmutableSandboxedEnvironment without a loader: an
attribute walk such as ''.__class__.__mro__ raises SecurityError and {% include '/etc/passwd' %}
reads nothing. This module turns those, and a template's own raise_exception(...), into user errors.
"""
from __future__ import annotations

from .errors import MoltingError

SAMPLE = [{"role": "user", "content": "Olá"}, {"role": "assistant", "content": "Olá! Como posso ajudar?"}]


class ChatTemplateError(MoltingError, ValueError):
    """A chat template that cannot render a conversation; the message names it and the fix."""


def check_chat_template(template: str, tok, where: str) -> None:
    """Raise ChatTemplateError unless `template` parses, includes no file and renders SAMPLE through
    `tok` (with and without the generation prompt). `where`: the template's origin, for the message."""
    from jinja2 import nodes
    from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

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
            text = tok.apply_chat_template(SAMPLE, chat_template=template, tokenize=False,
                                           add_generation_prompt=generation_prompt)
        except SecurityError as e:
            raise ChatTemplateError(f"{where}: the template tries to leave Jinja's sandbox ({e}); nothing was read "
                                    "or run: use a template that only renders the messages") from None
        except TemplateError as e:   # raise_exception(...) in the template, or an error Jinja found rendering
            raise ChatTemplateError(f"{where}: the template refuses a user/assistant conversation ({e}); fix the "
                                    "template (or chat_template=model)") from None
        except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as e:  # Python's, mid-render
            raise ChatTemplateError(f"{where}: the template fails to render ({type(e).__name__}: {e}); fix the "
                                    "template (or chat_template=model)") from None
        missing = [m["role"] for m in SAMPLE if m["content"] not in text]
        if not generation_prompt and missing:
            raise ChatTemplateError(f"{where}: the template renders a user/assistant conversation without the "
                                    f"{' and '.join(missing)} turn's text; fix the template (or chat_template=model)")
