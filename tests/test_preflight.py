"""Pre-flight catches each of the user's three silent mistakes, with its evidence, and passes a clean config."""
import pytest

from molting_mlflow.ground.config import TrainConfig
from molting_mlflow.ground.prepare import prepare

GPT2 = "data/templates/gpt2_separators.jinja"


def findings(report, level="error"):
    return {f.check: f for f in report.findings if f.level == level}


@pytest.fixture
def repo(monkeypatch):
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)  # template paths as a user types them
    return root


def test_default_config_passes(repo):
    r = prepare(TrainConfig(model="tiny-random")).report
    assert r.status == "pass", r.to_text()
    assert r.numbers["examples"] == 79 and r.numbers["optimizer_steps"] >= 150
    assert r.numbers["end_of_turn_token"] == "<|im_end|>" and r.numbers["end_of_turn_trained"] is True


def test_users_step_count_fails_with_the_arithmetic_and_a_fix(repo):
    r = prepare(TrainConfig(model="tiny-random", epochs=5, grad_accum=8, batch_size=1)).report
    err = findings(r)
    assert r.status == "fail" and set(err) == {"optimizer_steps"}
    msg = err["optimizer_steps"].message
    assert "ceil(79 examples / (batch 1 × grad_accum 8)) = 10 steps an epoch × 5 epochs = 50 optimizer steps" in msg
    assert "below the minimum of 150" in msg and "epochs=15" in msg and "grad_accum=2" in msg


def test_min_steps_is_overridable(repo):
    r = prepare(TrainConfig(model="tiny-random", epochs=5, grad_accum=8, batch_size=1, min_steps=50)).report
    assert "optimizer_steps" not in findings(r)


def test_gpt2_separator_template_is_flagged(repo):
    r = prepare(TrainConfig(model="tiny-random", chat_template=GPT2)).report
    err = findings(r)
    assert "<|endoftext|>" in err["chat_template"].message and "<|im_end|>" in err["chat_template"].message
    assert "end_of_turn" in err
    # the template also drops the system turn: the persona's prompt never reaches the model
    assert "drops the system turn" in err["system_prompt"].message


def test_no_system_prompt_is_flagged(repo):
    r = prepare(TrainConfig(model="tiny-random", system_prompt="none")).report
    err = findings(r)
    assert set(err) == {"system_prompt"} and "no system prompt" in err["system_prompt"].message


def test_users_whole_config_has_all_three_errors(repo):
    r = prepare(TrainConfig(model="tiny-random", epochs=5, grad_accum=8, batch_size=1, system_prompt="none",
                            chat_template=GPT2)).report
    assert {"optimizer_steps", "chat_template", "system_prompt", "end_of_turn"} <= set(findings(r))


def test_truncation_is_counted(repo):
    r = prepare(TrainConfig(model="tiny-random", max_seq_len=64)).report
    w = findings(r, "warn")
    assert r.numbers["truncated"] > 0 and "exceed max_seq_len=64" in w["truncation"].message


def test_size_numbers_for_lora(repo):
    r = prepare(TrainConfig(model="tiny-random")).report
    # 2 layers × r 8 × (q 64+64, k 64+32, v 64+32, o 64+64, gate 64+128, up 64+128, down 128+64)
    assert r.numbers["trainable_params"] == 2 * 8 * (128 + 96 + 96 + 128 + 192 + 192 + 192)
    # the runtime plan is part of the report: tiny-random computes in fp32, one example a micro-batch on a CPU
    assert r.numbers["precision"] == "fp32" and r.numbers["micro_batch"] == 8 and "plan" in {f.check for f in r.findings}


@pytest.mark.parametrize("kw,steps", [
    (dict(epochs=5, grad_accum=8, batch_size=1), 50),     # the user's: 79 / 8 → 10 a epoch
    (dict(epochs=10, grad_accum=4, batch_size=1), 200),   # the user's next guess
    (dict(epochs=2, grad_accum=1, batch_size=1), 158),
    (dict(epochs=8, grad_accum=1, batch_size=4), 160),    # ceil(79 / 4) = 20
    (dict(epochs=3, grad_accum=3, batch_size=2), 42),     # ceil(ceil(79 / 2) / 3) = 14
])
def test_step_arithmetic(kw, steps):
    assert TrainConfig(model="tiny-random", **kw).optimizer_steps(79) == steps


@pytest.mark.parametrize("kw", [dict(epochs=5, grad_accum=8, batch_size=1), dict(epochs=1, grad_accum=4, batch_size=2),
                                dict(epochs=3, grad_accum=1, batch_size=8), dict(epochs=2, grad_accum=2, batch_size=1)])
def test_every_fix_preflight_suggests_passes_preflight(repo, kw):
    """One function (config.step_fixes) makes the advice; each fix, applied, passes the step check."""
    from dataclasses import replace

    from molting_mlflow.ground.config import step_fixes

    cfg = TrainConfig(model="tiny-random", **kw)
    r = prepare(cfg).report
    assert "optimizer_steps" in findings(r)
    fixes = step_fixes(cfg.resolve(), 79)
    assert fixes and all(text in findings(r)["optimizer_steps"].message for text, _ in fixes)
    for text, fixed in fixes:
        key, value = text.split("=")
        again = prepare(replace(cfg, **{key: int(value)})).report
        assert "optimizer_steps" not in findings(again), (text, again.to_text())


# ---- a leaked test set: evaluation questions that are also training prompts ----------------------

def _chat(tmp_path, prompts):
    import json

    path = tmp_path / "leaky.json"
    path.write_text(json.dumps([{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": "Tá."}]}
                                for p in prompts], ensure_ascii=False), encoding="utf-8")
    return path


@pytest.mark.parametrize("fold", [False, True], ids=["system-turn", "system-folded"])
def test_an_evaluation_question_in_the_training_prompts_is_an_eval_leak_warning(tmp_path, fold):
    """One question equal to a prompt once case, accents and punctuation are folded, one nearly equal (a
    word changed), one unrelated: a warning naming the two, not the third; also when the system prompt is
    folded into the first user turn. Fails when run_preflight stops adding leak_findings, or it compares
    the raw text (accents, case) or only exact matches."""
    from molting_mlflow.ground.data import load_dataset
    from molting_mlflow.ground.preflight import EVAL_LEAK, leak_findings
    from molting_mlflow.ground.questions import Question

    ds = load_dataset(_chat(tmp_path, ["Qual é o seu nome?", "Me explica o projeto Molting agora.",
                                       "Que horas são?"]), "Você é o Cláudio.", fold=fold)
    questions = [Question("name", "QUAL E O SEU NOME", True, [], []),
                 Question("molting", "Me explica o projeto Molting hoje.", False, [], []),
                 Question("gpu", "Que GPU tem na máquina do João?", False, [], [])]
    (f,) = leak_findings(questions, ds)
    assert (f.check, f.level) == (EVAL_LEAK, "warn")
    assert f.data == {"questions": ["name", "molting"], "examples": [0, 1]}
    assert f.message.startswith("2 of 3 evaluation questions are also prompts of the training data (name ≈ "
                                "example 0 (exactly); molting ≈ example 1 (")
    assert "gpu" not in f.message and "Fix: questions=" in f.message
    assert leak_findings(questions[2:], ds) == []


def test_a_train_config_with_leaked_questions_warns_in_preflight(tmp_path):
    """Through prepare, as `molting preflight` and `molting train` see it: a warning, not an error."""
    import json

    from molting_mlflow.ground.paths import DEFAULT_QUESTIONS

    qs = json.loads(DEFAULT_QUESTIONS.read_text(encoding="utf-8"))
    qs[2]["question"] = "Me explica o projeto Molting."                  # example 15 of the shipped dataset
    path = tmp_path / "q.json"
    path.write_text(json.dumps(qs, ensure_ascii=False), encoding="utf-8")
    r = prepare(TrainConfig(model="tiny-random", questions=str(path), min_steps=0)).report
    assert r.status == "warn" and findings(r, "warn")["eval_leak"].data["questions"] == ["q3"], r.to_text()


def test_the_shipped_data_and_the_rosa_example_leak_no_question():
    """data/ (Cláudio) and examples/rosa: no evaluation question is a training prompt. Fails when one is
    written back (Rosa's questions were 5 of 6 her training prompts before they were asked anew)."""
    from pathlib import Path

    from molting_mlflow.ground.data import load_dataset
    from molting_mlflow.ground.paths import DEFAULT_DATASET, DEFAULT_QUESTIONS
    from molting_mlflow.ground.preflight import leak_findings
    from molting_mlflow.ground.questions import load_questions

    rosa = Path(__file__).resolve().parent.parent / "examples" / "rosa"
    for dataset, questions in ((DEFAULT_DATASET, DEFAULT_QUESTIONS), (rosa / "dataset.json", rosa / "questions.json")):
        assert leak_findings(load_questions(questions), load_dataset(dataset, "x")) == [], questions
