"""Chat datasets: four common shapes in, one shape out (conversational prompt/completion rows).

Accepted, as a JSON list or as JSONL (one object a line):
  {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
  {"conversations": [{"from": "system"|"human"|"user"|"gpt"|"assistant", "value": str}, ...]}  (ShareGPT)
  {"instruction": str, "input": str (optional), "output": str}                                   (Alpaca)
  {"prompt": str | messages, "completion": str | messages}
Every example becomes {"prompt": [system?, user, ...], "completion": [assistant]}: TRL then
tokenizes it through the chat template and puts the loss on the completion (the last assistant
turn, its end-of-turn token included) and nowhere else.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from molting_mlflow.ground.config import ConfigError
from molting_mlflow.ground.errors import MoltingError, too_deep, unpaired_surrogate, unreadable

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


EXAMPLE_FORM = ('an example reads {"messages": [{"role": "user", "content": "…"}, '
                '{"role": "assistant", "content": "…"}]}')


class DatasetError(MoltingError, ValueError):
    """Bad training data; the message names the file, the example index and the problem."""


@dataclass
class ChatDataset:
    path: str
    sha256: str
    rows: list[dict]                    # {"prompt": [...], "completion": [...]}
    source_format: str                  # messages / sharegpt / alpaca / prompt-completion (or "mixed")
    system_prompt_source: str           # dataset / persona / custom / none
    system_prompts_added: int = 0       # examples that had no system turn and got one
    system_prompts_removed: int = 0     # system turns dropped because system_prompt=none
    formats: dict = field(default_factory=dict)
    folded: bool = False                # system turns merged into the first user turn (fold_system)
    system_prompts: list = field(default_factory=list)  # each example's system text (None: none), before folding
    turn_order: list = field(default_factory=list)  # (example index, what breaks the turn order): turn_order_problem

    def __len__(self) -> int:
        return len(self.rows)

    def messages(self, i: int) -> list[dict]:
        return self.rows[i]["prompt"] + self.rows[i]["completion"]

    def token_lengths(self, tok, template: str) -> tuple[list[int], list[int]]:
        """Each example's tokens through `template`: the whole conversation, and its prompt up to where the
        answer starts (what max_seq_len must hold, and what pre-flight checks against it)."""
        whole = [len(tok.apply_chat_template(self.messages(i), chat_template=template, tokenize=True)["input_ids"])
                 for i in range(len(self))]
        prompts = [len(tok.apply_chat_template(row["prompt"], chat_template=template, tokenize=True,
                                               add_generation_prompt=True)["input_ids"]) for row in self.rows]
        return whole, prompts


def check_system_prompt_fits(sp: str | None, tok, max_seq_len: int) -> None:
    """A system prompt of max_seq_len tokens or more leaves no room for any turn after it: said once, before
    every example is rendered and tokenized with it (two renders an example; a 1 MB prompt took minutes)."""
    if not sp:
        return
    n = len(tok.encode(sp, add_special_tokens=False))
    if n >= max_seq_len:
        raise ConfigError(f"the system prompt is {n:,} tokens, and max_seq_len={max_seq_len}: no turn of the "
                          "dataset fits after it; shorten the card's system_prompt (a few sentences) or raise "
                          "max_seq_len")


def common_prefix(a, b) -> int:
    """How many leading tokens two token lists share: where a rendered prompt ends inside the rendered
    conversation, so the rest is the completion (pre-flight's trained span, generation's ref_nll)."""
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    return i


def fold_system(msgs: list[dict]) -> list[dict]:
    """The system turn merged into the first user turn, "<system>\n\n<user>": how a system prompt reaches
    a model whose template drops the system turn (Phi-3-mini's first template). Unchanged without one."""
    if not msgs or msgs[0]["role"] != "system":
        return msgs
    rest = [dict(m) for m in msgs[1:]]
    first = next(i for i, m in enumerate(rest) if m["role"] == "user")
    rest[first]["content"] = f"{msgs[0]['content']}\n\n{rest[first]['content']}"
    return rest


def load_dataset(path: str | Path, system_prompt: str | None, fold: bool = False) -> ChatDataset:
    """Read, validate and normalise a dataset. `system_prompt`: text to add where none is, or None for
    none; `fold`: merge each example's system turn into its first user turn (fold_system)."""
    p = Path(path)
    if p.is_dir():
        raise DatasetError(f"{p}: is a directory, not a dataset file; pass dataset=<path to a JSON or JSONL file> "
                           "inside it")
    if not p.is_file():
        raise DatasetError(f"{p}: dataset file not found; pass dataset=<path to a JSON or JSONL file>")
    try:
        raw = p.read_bytes()
    except OSError as e:     # permission denied, an I/O error
        raise DatasetError(unreadable(p, e)) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{p}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from None
    items = _parse(p, text)
    if not items:
        raise DatasetError(f"{p}: no examples; expected a JSON list or JSONL of chat examples")
    rows, formats, systems, disorder = [], {}, [], []
    added = removed = 0
    for i, item in enumerate(items):
        fmt, msgs = _to_messages(p, i, item)
        if (problem := turn_order_problem(msgs)) is not None:
            disorder.append((i, problem))
        formats[fmt] = formats.get(fmt, 0) + 1
        has_system = msgs[0]["role"] == "system"
        if system_prompt is None:
            if has_system:
                removed += 1
            msgs = [m for m in msgs if m["role"] != "system"]
        elif not has_system:
            msgs = [{"role": "system", "content": system_prompt}] + msgs
            added += 1
        systems.append(msgs[0]["content"] if msgs[0]["role"] == "system" else None)
        if fold:
            msgs = fold_system(msgs)
        rows.append({"prompt": msgs[:-1], "completion": msgs[-1:]})
    source = "none" if system_prompt is None else ("dataset" if added == 0 else "persona-or-custom")
    return ChatDataset(str(p), hashlib.sha256(raw).hexdigest(), rows,
                       next(iter(formats)) if len(formats) == 1 else "mixed", source, added, removed, formats,
                       fold and any(systems), systems, disorder)


def turn_order_problem(msgs: list[dict]) -> str | None:
    """What breaks the order a chat model learns (an optional system turn, then user and assistant
    alternating from the user's, the assistant's answer last), or None. The last turn is checked on load."""
    turns = msgs[1:] if msgs and msgs[0]["role"] == "system" else msgs
    if turns and turns[0]["role"] != "user":
        return f"the first turn after the system prompt is '{turns[0]['role']}', not 'user'"
    offset = len(msgs) - len(turns)
    for j in range(1, len(turns)):
        if turns[j]["role"] == turns[j - 1]["role"]:
            return f"turns {j - 1 + offset} and {j + offset} are both '{turns[j]['role']}'"
    return None


def _parse(p: Path, text: str) -> list:
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{p}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
        except RecursionError:
            raise _too_deep(p) from None
        return data
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DatasetError(f"{p}: line {n} is not valid JSON ({e.msg}); expected a JSON list, "
                               "or JSONL with one example object a line") from None
        except RecursionError:
            raise _too_deep(p, f" (line {n})") from None
    return items


def _too_deep(p: Path, where: str = "") -> DatasetError:
    # a chat example is 3 levels deep (list, example, turns)
    return DatasetError(too_deep(p, "a dataset is a list of examples a few levels deep", where))


def _to_messages(p: Path, i: int, item) -> tuple[str, list[dict]]:
    """Example `i` of file `p` as (its shape's name, its turns as {role, content}), read by its shape's keys
    and checked as a trainable conversation; a DatasetError naming the file, the example and the problem."""
    def bad(problem: str):
        return DatasetError(f"{p}: example {i}: {problem}")

    if not isinstance(item, dict):
        raise bad(f"expected an object, got {type(item).__name__}")
    if "messages" in item:
        fmt, msgs = "messages", _messages_turns(item["messages"], bad)
    elif "conversations" in item:
        fmt, msgs = "sharegpt", _sharegpt_turns(item["conversations"], bad)
    elif "instruction" in item and "output" in item:
        fmt, msgs = "alpaca", _alpaca_turns(item, bad)
    elif "prompt" in item and "completion" in item:
        fmt, msgs = "prompt-completion", _prompt_completion_turns(item, bad)
    else:
        raise bad(f"unrecognised shape (keys {sorted(item)}); expected 'messages', 'conversations', "
                  "'instruction'+'output' or 'prompt'+'completion'")
    if (problem := _turns_problem(msgs)) is not None:
        raise bad(problem)
    return fmt, msgs


def _messages_turns(turns, bad) -> list[dict]:
    """A "messages" list as {role, content} turns, roles as written; `bad(problem)` is the error to raise."""
    return _listed_turns(turns, bad, "messages", "role", "content")


def _sharegpt_turns(turns, bad) -> list[dict]:
    """A ShareGPT "conversations" list as {role, content} turns, its "from" names mapped by SHAREGPT_ROLES."""
    return _listed_turns(turns, bad, "conversations", "from", "value", SHAREGPT_ROLES)


def _listed_turns(turns, bad, name: str, role_key: str, content_key: str, roles: dict | None = None) -> list[dict]:
    """A list of turn objects under `name` as {role, content}: each an object with `role_key` and `content_key`;
    `roles` maps a format's role names to ours (None: taken as written, checked later by _turns_problem)."""
    if not isinstance(turns, list):
        raise bad(f"'{name}' must be a list of {{{role_key}, {content_key}}} objects; {EXAMPLE_FORM}")
    msgs = []
    for j, t in enumerate(turns):
        if not isinstance(t, dict) or role_key not in t or content_key not in t:
            raise bad(f"turn {j} must be an object with '{role_key}' and '{content_key}'; {EXAMPLE_FORM}")
        role = t[role_key]
        if roles is not None:
            if not isinstance(role, str) or role not in roles:   # a list or an object is no role (nor hashable)
                raise bad(f"turn {j} has unknown role {role!r}; expected one of {sorted(roles)}")
            role = roles[role]
        msgs.append({"role": role, "content": t[content_key]})
    return msgs


def _alpaca_turns(item: dict, bad) -> list[dict]:
    """An Alpaca example as a user turn (instruction, blank line, input where it has text) and the output's answer."""
    for k in ("instruction", "output") + (("input",) if "input" in item else ()):
        if not isinstance(item[k], str):
            raise bad(f"'{k}' must be a string")
    user = item["instruction"] + ("\n\n" + item["input"] if item.get("input", "").strip() else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": item["output"]}]


def _prompt_completion_turns(item: dict, bad) -> list[dict]:
    """Prompt and completion as turns: each a string (one user / assistant turn) or a list of {role, content}."""
    msgs = []
    for k, role in (("prompt", "user"), ("completion", "assistant")):
        v = item[k]
        if isinstance(v, str):
            msgs.append({"role": role, "content": v})
        elif isinstance(v, list) and all(isinstance(t, dict) and "role" in t and "content" in t for t in v):
            msgs.extend({"role": t["role"], "content": t["content"]} for t in v)
        else:
            raise bad(f"'{k}' must be a string or a list of {{role, content}} objects")
    return msgs


def _turns_problem(msgs: list[dict]) -> str | None:
    """What keeps the turns from being trained on (a bad role or content, no answer last), or None."""
    if not msgs:
        return f"no turns; {EXAMPLE_FORM}"
    for j, m in enumerate(msgs):
        if m["role"] not in ROLES:
            return f"turn {j} has unknown role {m['role']!r}; expected one of {', '.join(ROLES)}"
        if not isinstance(m["content"], str):
            return (f"turn {j} ({m['role']}) content must be a string, got {type(m['content']).__name__}; write the "
                    "turn's text as one string (content parts such as [{\"type\": \"text\", …}] are not read)")
        if (bad_char := unpaired_surrogate(m["content"])) is not None:
            return (f"turn {j} ({m['role']}) content holds an unpaired UTF-16 surrogate ({bad_char}), which no "
                    "tokenizer encodes; write the character itself, or both halves of its \\u escape pair")
        if not m["content"].strip():
            return f"turn {j} ({m['role']}) has empty content"
        if m["role"] == "system" and j != 0:
            return f"turn {j}: a system turn may only come first"
    if not any(m["role"] == "assistant" for m in msgs):
        return "no assistant turn; every example needs an answer to learn from"
    if msgs[-1]["role"] != "assistant":
        return f"the last turn is '{msgs[-1]['role']}'; an example must end with the assistant's answer"
    if not any(m["role"] == "user" for m in msgs):
        return "no user turn before the assistant's answer"
    return None
