"""Dataset loading: four shapes in, one out; every bad input is one line naming file, index, problem."""
import json

import pytest

from molting_mlflow.ground.data import DatasetError, load_dataset

SYS = "Você é Cláudio."
CASES = {
    "messages": {"messages": [{"role": "user", "content": "Oi"}, {"role": "assistant", "content": "Opa!"}]},
    "sharegpt": {"conversations": [{"from": "human", "value": "Oi"}, {"from": "gpt", "value": "Opa!"}]},
    "alpaca": {"instruction": "Oi", "output": "Opa!"},
    "prompt-completion": {"prompt": "Oi", "completion": "Opa!"},
}


def write(tmp_path, items, jsonl=False, name="d.json"):
    p = tmp_path / name
    if jsonl:
        p.write_text("\n".join(json.dumps(i, ensure_ascii=False) for i in items) + "\n", encoding="utf-8")
    else:
        p.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
    return p


@pytest.mark.parametrize("fmt", list(CASES))
@pytest.mark.parametrize("jsonl", [False, True])
def test_every_format_normalises_to_prompt_completion(tmp_path, fmt, jsonl):
    ds = load_dataset(write(tmp_path, [CASES[fmt]] * 3, jsonl), SYS)
    assert len(ds) == 3 and ds.source_format == fmt
    assert ds.rows[0] == {"prompt": [{"role": "system", "content": SYS}, {"role": "user", "content": "Oi"}],
                          "completion": [{"role": "assistant", "content": "Opa!"}]}
    assert ds.system_prompts_added == 3


def test_alpaca_input_is_appended_to_instruction(tmp_path):
    ds = load_dataset(write(tmp_path, [{"instruction": "Traduz", "input": "hello", "output": "olá."}]), None)
    assert ds.rows[0]["prompt"] == [{"role": "user", "content": "Traduz\n\nhello"}]


def test_existing_system_turn_is_kept_and_none_removes_it(tmp_path):
    item = {"messages": [{"role": "system", "content": "Outro."}, {"role": "user", "content": "Oi"},
                         {"role": "assistant", "content": "Opa!"}]}
    ds = load_dataset(write(tmp_path, [item]), SYS)
    assert ds.rows[0]["prompt"][0]["content"] == "Outro." and ds.system_prompts_added == 0
    ds = load_dataset(write(tmp_path, [item]), None)
    assert ds.rows[0]["prompt"] == [{"role": "user", "content": "Oi"}] and ds.system_prompts_removed == 1


def test_shipped_dataset_has_79_examples():
    from molting_mlflow.ground.config import DEFAULT_DATASET

    ds = load_dataset(DEFAULT_DATASET, SYS)
    assert len(ds) == 79 and ds.system_prompts_added == 79


BAD = [
    ("not json", b"[{oops", "not valid JSON"),
    ("bad jsonl line", b'{"prompt": "a", "completion": "b"}\n{oops\n', "line 2 is not valid JSON"),
    ("latin-1", '[{"prompt": "ação", "completion": "b"}]'.encode("latin-1"), "not UTF-8"),
    ("empty list", b"[]", "no examples"),
    ("not an object", b"[1]", "example 0: expected an object"),
    ("unknown shape", b'[{"question": "a"}]', "example 0: unrecognised shape"),
    ("unknown role", json.dumps([{"messages": [{"role": "bot", "content": "a"}]}]).encode(), "example 0: turn 0 has unknown role 'bot'"),
    ("unknown sharegpt role", json.dumps([{"conversations": [{"from": "robot", "value": "a"}]}]).encode(), "unknown role 'robot'"),
    # a list is no role: `in SHAREGPT_ROLES` raised TypeError (unhashable) before it was checked to be a string
    ("list as sharegpt role", json.dumps([{"conversations": [{"from": ["human"], "value": "a"}]}]).encode(), "unknown role ['human']"),
    ("empty content", json.dumps([CASES["messages"], {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": " "}]}]).encode(), "example 1: turn 1 (assistant) has empty content"),
    ("non-string content", json.dumps([{"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]}]).encode(), "content must be a string"),
    ("no assistant", json.dumps([{"messages": [{"role": "user", "content": "a"}]}]).encode(), "no assistant turn"),
    ("ends with user", json.dumps([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]}]).encode(), "must end with the assistant"),
    ("messages not list", json.dumps([{"messages": "hi"}]).encode(), "'messages' must be a list"),
    ("alpaca non-string", json.dumps([{"instruction": 1, "output": "b"}]).encode(), "'instruction' must be a string"),
]


@pytest.mark.parametrize("name,content,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_data_is_one_line_naming_file_and_problem(tmp_path, name, content, expected):
    p = tmp_path / "bad.json"
    p.write_bytes(content)
    with pytest.raises(DatasetError) as e:
        load_dataset(p, SYS)
    msg = str(e.value)
    assert expected in msg and str(p) in msg and "\n" not in msg


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="dataset file not found"):
        load_dataset(tmp_path / "nope.json", SYS)
