"""Words in YAML files, read as words: a language file's lists and a persona card's fields.

YAML 1.1 (PyYAML's) reads some bare words as something else: `no`, `off`, `yes`, `on` are booleans,
`1`, `1e3` numbers, `~` and `null` nothing. `negations: [no, nunca]` then holds the boolean false, and
sorting or matching it failed deep inside the rubric. Where a word is expected, such a scalar is one line
naming the file, the key, the item, its line and the fix (quote it), found on the document's node tree
(`yaml.compose`), which keeps the text as written.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from molting_mlflow.ground.errors import MoltingError, first_line, too_deep, unreadable

_STR = "tag:yaml.org,2002:str"
_READS_AS = {"tag:yaml.org,2002:bool": "a boolean", "tag:yaml.org,2002:int": "a number",
             "tag:yaml.org,2002:float": "a number", "tag:yaml.org,2002:null": "nothing (null)",
             "tag:yaml.org,2002:timestamp": "a date"}


class WordsError(MoltingError, ValueError):
    """A YAML file of words that is malformed; the message names the file, the key and the fix."""


def not_a_word(path, key: str, node, index: int | None = None) -> str | None:
    """The line for a scalar that YAML reads as no string (None where it is one): `path: key item 2 is no (line
    8), which YAML reads as a boolean, not a word; quote it: "no"`."""
    if not isinstance(node, yaml.ScalarNode) or node.tag == _STR:
        return None
    what = _READS_AS.get(node.tag, f"{node.tag.rsplit(':', 1)[-1]}")
    where = f"{key} item {index + 1}" if index is not None else key
    fix = f'"{node.value}"' if index is not None else f'{key}: "{node.value}"'
    return (f"{path}: {where} is {node.value or '(empty)'} (line {node.start_mark.line + 1}), which YAML reads as "
            f"{what}, not a word; quote it: {fix}")


def top_level(text: str) -> dict:
    """{key: node} of a YAML document's top-level mapping ({} where it is none); YAML errors go on up."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, yaml.MappingNode):
        return {}
    return {k.value: v for k, v in root.value if isinstance(k, yaml.ScalarNode)}


def word_problem(path, text: str, key: str) -> str | None:
    """The first scalar under `key` (itself, or an item of its list) that YAML reads as no string, as one line."""
    return node_problem(path, key, top_level(text).get(key))


def node_problem(path, key: str, node) -> str | None:
    if isinstance(node, yaml.SequenceNode):
        return next((line for i, item in enumerate(node.value) if (line := not_a_word(path, key, item, i))), None)
    return not_a_word(path, key, node)


def read_words(path: Path, lists: tuple[str, ...], strings: tuple[str, ...] = ()) -> dict:
    """{key: [word, …] or word} of a YAML mapping whose keys are `lists` (lists of words) and `strings`
    (one word each), any of them left out; every other key, and every value that is not words, is a WordsError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        nodes = top_level(text)
        data = yaml.safe_load(text) or {}
    except OSError as e:
        raise WordsError(unreadable(path, e)) from None
    except UnicodeDecodeError as e:
        raise WordsError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise WordsError(f"{path}: not valid YAML{at} ({getattr(e, 'problem', None) or first_line(e, 200)}); "
                         "fix its syntax") from None
    except RecursionError:
        raise WordsError(too_deep(path, "a file of words is lists of words, 2 levels deep")) from None
    if not isinstance(data, dict):
        raise WordsError(f"{path}: expected `key: value` lines at top level, got {type(data).__name__}; write it as "
                         f"the package's {Path(path).name.split('.')[-1]} files are")
    unknown = sorted(set(data) - {*lists, *strings})
    if unknown:   # a misspelt list would be read as empty: never silently
        raise WordsError(f"{path}: unknown keys {unknown}; expected {', '.join((*strings, *lists))}")
    for key in (*strings, *lists):
        if key not in data:
            continue
        if (line := node_problem(path, key, nodes.get(key))) is not None:
            raise WordsError(line)
        value = data[key]
        if key in lists and not (isinstance(value, list) and all(isinstance(w, str) and w.strip() for w in value)):
            raise WordsError(f"{path}: {key} must be a list of words; write it as `{key}: [word, other word]`")
        if key in strings and not (isinstance(value, str) and value.strip()):
            raise WordsError(f"{path}: {key} must be a word; write it as `{key}: <word>`")
    return data
