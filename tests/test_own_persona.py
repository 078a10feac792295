"""Your own persona, end to end (issue 23): the worked example of docs/own-persona.md (examples/rosa),
run as the doc writes it on tiny-random, is trained and scored against Rosa's own card and questions;
evaluate, rescore, diagnose and chat use the run's persona without being told; a bundle that does
not belong together is a pre-flight error with its fix."""
import hashlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner
from helpers import store_in, use_store
from mlflow.tracking import MlflowClient

from molting_mlflow.cli import cli

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "own-persona.md"
ROSA = ROOT / "examples" / "rosa"
DIMS = ("d1_identity", "d2_factual", "d3_voice", "d4_cleanliness", "d5_quality", "score")


def doc_command(prefix: str, exact: bool = False) -> list[str]:
    """The one command of the doc's ```bash blocks that starts with `prefix` (is it, when exact), as argv."""
    lines, inside = [], False
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            inside = line == "```bash"
            continue
        if inside and (line == prefix if exact else line.startswith(prefix)):
            lines.append(line)
    assert len(lines) == 1, (prefix, lines)
    return shlex.split(lines[0])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def rosa_run(tmp_path_factory):
    """The doc's `mlflow run … -e train` line as written, plus -P model=tiny-random."""
    d = tmp_path_factory.mktemp("rosa")
    with store_in(d) as uri:
        default = MlflowClient().get_experiment("0")      # made here: its artifacts go under d, not the repo
        assert Path(default.artifact_location.removeprefix("file://")).is_relative_to(d)
        argv = doc_command("mlflow run . -e train") + ["-P", "model=tiny-random"]
        r = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, env={**os.environ}, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        (run,) = mlflow.search_runs(experiment_ids=["0"], output_format="list")
    return run.info.run_id, uri


def _table(run_id: str) -> list[dict]:
    table = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/eval_results.json"))
    return [dict(zip(table["columns"], row)) for row in table["data"]]


def test_the_doc_example_trains_and_is_scored_against_rosa_own_card(rosa_run, monkeypatch, tmp_path):
    run_id, uri = rosa_run
    use_store(monkeypatch, uri)
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["data.examples"] == "12"
    rows = _table(run_id)
    rosa_questions = json.loads((ROSA / "questions.json").read_text(encoding="utf-8"))
    assert [(r["id"], r["question"]) for r in rows] == [(q["id"], q["question"]) for q in rosa_questions]
    # the card and the questions are logged, byte for byte, and their sha256 are params
    for artifact, source, param in (("persona.yaml", ROSA / "persona.yaml", "persona.sha256"),
                                    ("questions.json", ROSA / "questions.json", "questions.sha256")):
        local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/persona/{artifact}"))
        assert local.read_bytes() == source.read_bytes() and run.data.params[param] == sha256(source)
    assert run.data.params["persona.name"] == "Rosa" and run.data.params["persona.language"] == "en"
    # the run's metrics are what `molting score --persona` gives on the same answers
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({k: r[k] for k in ("id", "response", "finish_reason")}) + "\n"
                               for r in rows), encoding="utf-8")
    r = CliRunner().invoke(cli, ["score", "--persona", str(ROSA / "persona.yaml"), "--questions",
                                 str(ROSA / "questions.json"), "--responses", str(answers)])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)["summary"]
    for d in DIMS:
        assert run.data.metrics[d] == pytest.approx(summary[d]), d


def test_evaluate_rescore_diagnose_and_chat_use_the_run_own_persona(rosa_run, monkeypatch):
    run_id, uri = rosa_run
    use_store(monkeypatch, uri)
    client = MlflowClient()
    fresh = client.get_run(run_id).data.metrics
    args = doc_command("molting evaluate")[1:]
    r = CliRunner().invoke(cli, [run_id if a == "<run>" else a for a in args])
    assert r.exit_code == 0, r.output
    (ev,) = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`molting.stage` = 'evaluate'",
                               output_format="list")
    assert [row["id"] for row in _table(ev.info.run_id)] == [row["id"] for row in _table(run_id)]
    assert ev.data.params["persona.sha256"] == sha256(ROSA / "persona.yaml")
    assert ev.data.params["eval.persona"] == "adapter"

    for d in DIMS:                               # scores the rescore must bring back from Rosa's card
        client.log_metric(run_id, d, 9.99, step=int(fresh["optimizer_steps"]))
    r = CliRunner().invoke(cli, [run_id if a == "<run>" else a for a in doc_command("molting rescore")[1:]])
    assert r.exit_code == 0 and "skipped" not in r.output, r.output
    after = client.get_run(run_id).data.metrics
    for d in DIMS:
        assert after[d] == pytest.approx(fresh[d]), d

    r = CliRunner().invoke(cli, ["diagnose", run_id])
    assert r.exit_code == 0 and "Scored as persona **Rosa** (en)" in r.output, r.output
    r = CliRunner().invoke(cli, ["chat", "--model", f"runs:/{run_id}/adapter", "--max-new-tokens", "4"],
                           input="Who are you?\n\n")
    assert r.exit_code == 0 and "rosa: " in r.output, r.output


def test_a_mismatched_questions_file_is_a_preflight_error_with_its_fix(monkeypatch):
    """The doc's mismatch: Rosa's card (en) with Cláudio's questions (pt, about Cláudio)."""
    monkeypatch.chdir(ROOT)
    r = CliRunner().invoke(cli, doc_command("molting preflight --persona examples/rosa/persona.yaml --questions")[1:]
                           + ["--model", "tiny-random", "--batch-size", "1"])
    assert r.exit_code == 1, r.output
    assert "[error] persona.questions_language: the questions (data/eval_questions.json) are in 'pt', the " \
           "persona card examples/rosa/persona.yaml speaks 'en'" in r.output
    # the two identity questions: their references say "Sou o Cláudio"
    assert "[error] persona.questions_other_persona: 2 of 8 questions" in r.output and "e.g. q1: " in r.output
    assert "Fix: questions=" in r.output
    r = CliRunner().invoke(cli, ["preflight", "--model", "tiny-random", "--batch-size", "1", "--persona",
                                 "examples/rosa/persona.yaml", "--questions", "tests/data/ada/questions.json"])
    assert r.exit_code == 1 and "persona.questions_other_persona: 1 of 2 questions" in r.output, r.output
    assert "persona.questions_language" not in r.output          # Ada's questions are English too
    r = CliRunner().invoke(cli, doc_command("molting preflight --persona examples/rosa/persona.yaml", exact=True)[1:]
                           + ["--model", "tiny-random", "--batch-size", "1"])
    assert r.exit_code == 0 and "[info] persona: persona Rosa (en" in r.output, r.output


def test_evaluate_with_a_mismatched_questions_file_is_one_line_and_opens_no_run(rosa_run, monkeypatch):
    run_id, uri = rosa_run
    use_store(monkeypatch, uri)
    before = len(mlflow.search_runs(search_all_experiments=True, output_format="list"))
    r = CliRunner().invoke(cli, ["evaluate", "--run-id", run_id, "--questions",
                                 str(ROOT / "data" / "eval_questions.json")])
    assert r.exit_code == 2 and r.output.startswith("Error: persona.questions_language: ") and "Fix: " in r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == before


def test_a_card_without_questions_fails_its_run_in_one_line(tmp_path):
    card = tmp_path / "card.yaml"
    card.write_text((ROSA / "persona.yaml").read_text(encoding="utf-8").replace("questions: questions.json\n", "")
                    .replace("dataset: dataset.json", f"dataset: {ROSA / 'dataset.json'}"), encoding="utf-8")
    r = CliRunner().invoke(cli, ["train", "--model", "tiny-random", "--persona", str(card), "--batch-size", "1"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    (error,) = [line for line in r.stderr.splitlines() if " INFO mlflow" not in line]   # MLflow's store notes aside
    assert "Fix: add `questions: <file>` to the card" in error
    assert error.startswith(f"Error: pre-flight failed (1 error(s)): the persona card {card} names no evaluation "
                            "questions")
    (run,) = mlflow.search_runs(experiment_names=["molting"], output_format="list")
    assert run.info.status == "FAILED" and "persona.no_questions" in mlflow.artifacts.load_text(
        f"runs:/{run.info.run_id}/preflight.json")


def test_a_card_names_its_files_relative_to_itself_and_a_missing_dataset_is_one_line(tmp_path):
    from molting_mlflow.ground.config import TrainConfig
    from molting_mlflow.ground.persona import PersonaError

    cfg = TrainConfig(persona=str(ROSA / "persona.yaml")).resolve()
    assert (cfg.dataset, cfg.questions) == (str(ROSA / "dataset.json"), str(ROSA / "questions.json"))
    card = tmp_path / "card.yaml"
    card.write_text((ROSA / "persona.yaml").read_text(encoding="utf-8").replace("dataset: dataset.json\n", ""),
                    encoding="utf-8")
    with pytest.raises(PersonaError, match=r"the card names no dataset; add `dataset: <file>` to it"):
        TrainConfig(persona=str(card)).resolve()
    assert TrainConfig(persona=str(card), dataset="mine.json").resolve().questions == str(tmp_path / "questions.json")


def test_rosa_reference_answers_state_the_facts_in_her_voice():
    """Each reference, scored as Rosa: no point lost but D1's 'name not mentioned' off identity questions."""
    from molting_mlflow.ground.persona import load_persona
    from molting_mlflow.ground.rubric import score_response
    from molting_mlflow.ground.questions import load_questions

    rosa = load_persona(ROSA / "persona.yaml")
    for q in load_questions(ROSA / "questions.json"):
        got = score_response(q, q.reference, "stop", rosa)
        assert set(got["codes"]) <= ({"d1.no_name"} if not q.identity_probe else set()), (q.id, got["reasons"])


def test_a_sweep_trains_every_trial_as_its_persona_and_stops_a_mismatch_before_any_trial(monkeypatch):
    import optuna

    from molting_mlflow.ground.sweep_config import SweepConfig
    from molting_mlflow.stages.sweep import _trial_config

    sc = SweepConfig(model="tiny-random", persona=str(ROSA / "persona.yaml"), search={"epochs": "75,80"})
    trial = optuna.create_study(direction="maximize").ask()
    cfg = _trial_config(trial, sc)[0].resolve()
    assert (cfg.persona, cfg.dataset, cfg.questions) == (str(ROSA / "persona.yaml"), str(ROSA / "dataset.json"),
                                                         str(ROSA / "questions.json"))
    r = CliRunner().invoke(cli, ["sweep", "--model", "tiny-random", "--persona", str(ROSA / "persona.yaml"),
                                 "--questions", str(ROOT / "data" / "eval_questions.json"), "--register", "false"])
    assert r.exit_code == 2 and r.output.startswith("Error: persona.questions_language: "), r.output
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []


def test_the_registered_model_carries_the_run_own_persona(rosa_run, monkeypatch):
    from molting_mlflow.stages.registry import register_adapter

    run_id, uri = rosa_run
    use_store(monkeypatch, uri)
    version = register_adapter(run_id, "tiny-random", log=lambda *a: None)
    tags = MlflowClient().get_model_version("molting-tiny-random", version).tags
    assert tags["persona"] == "Rosa" and tags["persona_sha256"] == sha256(ROSA / "persona.yaml")
    r = CliRunner().invoke(cli, ["chat", "--model", "models:/molting-tiny-random@candidate", "--max-new-tokens", "4"],
                           input="Who are you?\n\n")
    assert r.exit_code == 0 and "rosa: " in r.output, r.output


# ---------------------------------------------------------------------------------------------
# A persona in a language the package does not ship: Lucía, in Spanish, her es.txt and es.yaml beside
# her card (docs/own-persona.md), and no file of the package changed
# ---------------------------------------------------------------------------------------------

LUCIA_CARD = """name: Lucía
language: es
questions: questions.json
dataset: dataset.json
system_prompt: "Eres Lucía, la asistente de Marta en la panadería Trigo de Sevilla. Hablas un español cálido y breve."
voice_markers: ["vale", "cariño", "Marta", "🥖"]
boilerplate: ["Como modelo de lenguaje", "As an AI"]
conflicting_identities: ["ChatGPT", "OpenAI", "Llama", "un modelo de lenguaje"]
hallucinations: ["Trigo está en Madrid"]
template_tokens: ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "</s>"]
agent_contamination: ["<tool_call>", "$ "]
role_prefixes: ["Usuario", "User"]
"""
# en.txt and en.yaml, translated (a few words: enough for short answers)
ES_TXT = "# Spanish (es) stop words, folded (accents stripped, lowercase), one per line\n" + "\n".join(
    "de la que el en y a los se del las un por con no una su para es al lo como mas o pero sus le me si yo soy mi "
    "tu te nos muy esta estoy hay donde quien cuando porque aqui tambien ya bien todo".split()) + "\n"
ES_YAML = """# Spanish (es): how an answer says who it is (D1, D5 (d)), beside es.txt
you: tú
name_claims: [yo soy, soy, me llamo, mi nombre es]
maker_claims: [fui creado|creada|hecho|hecha por]
denials: ["{neg} soy", "{neg} me llamo"]
negations: ["no", nunca, jamas]
articles: [el, la, los, las, un, una, tu, su]
self_descriptions: [soy, me llamo, mi nombre]
not_names: [ia, asistente, modelo, bot, programa]
"""
LUCIA_EXAMPLES = [("¿Cómo te llamas?", "Soy Lucía, cariño, la asistente de Marta en Trigo. 🥖"),
                  ("¿Qué vendéis?", "Pan de masa madre y bollos, vale, todo hecho por Marta. 🥖"),
                  ("¿A qué hora abrís?", "Abrimos a las siete, cariño, y el pan sale caliente. 🥖"),
                  ("¿Tenéis pan sin gluten?", "Sí, vale, los martes Marta hace pan sin gluten. 🥖")]
LUCIA_QUESTIONS = [
    {"id": "quien", "question": "Preséntate, por favor.", "identity_probe": True,
     "facts": [["Lucía"], ["Marta", "Trigo"]], "forbidden": [], "topic": [],
     "reference": "Soy Lucía, la asistente de Marta en la panadería Trigo. 🥖"},
    {"id": "donde", "question": "¿Dónde está la panadería?", "identity_probe": False, "facts": [["Sevilla"]],
     "forbidden": ["Trigo está en Madrid"], "topic": [],
     "reference": "La panadería está en Sevilla, cariño, junto al río. 🥖"},
]
ES_ANSWER = "La panadería está en Sevilla, cariño, y Marta hace el pan. 🥖"
EN_ANSWER = "The bakery is in Seville, and Marta bakes the bread for the whole town. 🥖"


def lucia(folder: Path, languages: bool = True) -> Path:
    """Lucía's card, dataset and questions in folder (with es.txt and es.yaml beside them); the card's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "persona.yaml").write_text(LUCIA_CARD, encoding="utf-8")
    (folder / "dataset.json").write_text(json.dumps([{"conversations": [{"from": "human", "value": q},
                                                                        {"from": "gpt", "value": a}]}
                                                     for q, a in LUCIA_EXAMPLES], ensure_ascii=False), encoding="utf-8")
    (folder / "questions.json").write_text(json.dumps(LUCIA_QUESTIONS, ensure_ascii=False), encoding="utf-8")
    if languages:
        (folder / "es.txt").write_text(ES_TXT, encoding="utf-8")
        (folder / "es.yaml").write_text(ES_YAML, encoding="utf-8")
    return folder / "persona.yaml"


def package_data() -> dict:
    """{path: sha256} of every file under the package's data/."""
    from molting_mlflow.ground.paths import DATA_DIR

    return {str(p): sha256(p) for p in sorted(DATA_DIR.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def lucia_run(tmp_path_factory):
    """`molting train --model tiny-random --persona <Lucía's card> --min-steps 0 --epochs 1`; then her folder
    is gone: what follows has only the run's bundle."""
    import shutil

    d = tmp_path_factory.mktemp("lucia")
    card, before = lucia(d / "lucia"), package_data()
    with store_in(d) as uri:
        r = CliRunner().invoke(cli, ["train", "--model", "tiny-random", "--persona", str(card), "--min-steps", "0",
                                     "--epochs", "1"])
        assert r.exit_code == 0, r.output
        (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    shutil.rmtree(card.parent)
    return run.info.run_id, uri, before


def test_a_spanish_persona_of_your_own_passes_preflight_with_its_language_beside_the_card(tmp_path):
    """Fails when the card's folder is not searched for language files (language.folders_for)."""
    before = package_data()
    card = lucia(tmp_path / "lucia")
    r = CliRunner().invoke(cli, ["preflight", "--model", "tiny-random", "--persona", str(card), "--min-steps", "0"])
    assert r.exit_code == 0 and "pre-flight: PASS" in r.output, r.output
    assert f"[info] persona: persona Lucía (es, {card}) with 2 questions" in r.output and "in its language" in r.output
    assert package_data() == before


def test_a_spanish_run_logs_its_language_files_and_their_digest(lucia_run, monkeypatch):
    """The bundle carries es.txt and es.yaml under persona/languages/, and persona.language_sha256 names
    them; the package's data/ is as it was. Fails when bundle.write leaves the card's own languages out,
    or bundle.params stops naming them."""
    import hashlib

    run_id, uri, before = lucia_run
    use_store(monkeypatch, uri)
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["persona.language"] == "es"
    assert {a.path for a in MlflowClient().list_artifacts(run_id, "persona/languages")} == \
        {"persona/languages/es.txt", "persona/languages/es.yaml"}
    logged = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/persona/languages"))
    assert (logged / "es.yaml").read_text(encoding="utf-8") == ES_YAML
    assert run.data.params["persona.language_sha256"] == hashlib.sha256((ES_TXT + ES_YAML).encode()).hexdigest()
    assert package_data() == before


def test_a_spanish_run_is_judged_in_spanish_from_its_bundle(lucia_run, monkeypatch, tmp_path):
    """Lucía's card as the run logged it (her folder is gone) speaks es: a Spanish answer is mainly in es and
    keeps D3, an English one loses D3 as not 'es'; `molting score` with the logged card says the same."""
    from molting_mlflow.ground import bundle
    from molting_mlflow.ground.language import words
    from molting_mlflow.ground.matching import normalise
    from molting_mlflow.ground.persona import load_persona

    run_id, uri, _ = lucia_run
    use_store(monkeypatch, uri)
    card, questions = bundle.of_run(run_id)
    persona = load_persona(card)
    assert persona.language == "es" and "es" in persona.languages.codes
    ok, evidence = persona.languages.mainly_in(words(normalise(ES_ANSWER)), "es")
    assert ok and evidence.startswith("5 es"), evidence
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"id": "donde", "response": a, "finish_reason": "stop"}, ensure_ascii=False)
                               + "\n" for a in (ES_ANSWER, EN_ANSWER)), encoding="utf-8")
    r = CliRunner().invoke(cli, ["score", "--persona", card, "--questions", questions, "--responses", str(answers)])
    assert r.exit_code == 0, r.output
    es, en = json.loads(r.output)["results"]
    assert es["d3_voice"] == 2 and "d3.not_language" not in es["codes"], es["reasons"]
    assert en["d3_voice"] == 0 and any("not mainly in the persona's language 'es'" in x for x in en["reasons"]), en


def test_a_spanish_run_rescores_from_its_logged_bundle(lucia_run, monkeypatch):
    """`molting rescore <run>` with Lucía's folder gone: the bundle's card finds es.txt and es.yaml beside it
    and brings the scores back. Fails when the bundle carries no language files (the card's language
    would be unknown: the run skipped)."""
    run_id, uri, _ = lucia_run
    use_store(monkeypatch, uri)
    client = MlflowClient()
    fresh = client.get_run(run_id).data.metrics
    for d in DIMS:
        client.log_metric(run_id, d, 9.99, step=int(fresh["optimizer_steps"]))
    r = CliRunner().invoke(cli, ["rescore", run_id])
    assert r.exit_code == 0 and "skipped" not in r.output, r.output
    after = client.get_run(run_id).data.metrics
    for d in DIMS:
        assert after[d] == pytest.approx(fresh[d]), d


def test_a_spanish_card_without_its_language_files_says_where_to_put_them(tmp_path):
    """One line: the language no file describes, the two files to write and the folders they go in, and
    where to start from. Fails when the card error only lists the package's codes."""
    from molting_mlflow.ground.paths import DATA_DIR

    card = lucia(tmp_path / "lucia", languages=False)
    r = CliRunner().invoke(cli, ["preflight", "--model", "tiny-random", "--persona", str(card), "--min-steps", "0"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output, r.output
    assert r.output.startswith(f"Error: {card}: field 'language' is 'es', and no language file describes it "
                               "(known: en, pt); put es.txt (its stop words) and es.yaml"), r.output
    assert f"beside the card, in {card.parent} or {card.parent / 'languages'}" in r.output
    assert f"start from a copy of {DATA_DIR / 'languages' / 'en.txt'} and en.yaml" in r.output


def test_a_persona_name_over_100_characters_is_one_card_line(tmp_path):
    """A name is matched in every answer and printed in every line that names it: 101 characters is a card
    error in one line, exit 2; 100 are a name. Fails when persona._field stops checking the length."""
    from molting_mlflow.ground.persona import load_persona

    text = (ROSA / "persona.yaml").read_text(encoding="utf-8")
    card = tmp_path / "persona.yaml"
    card.write_text(text.replace("name: Rosa", "name: " + "R" * 101), encoding="utf-8")
    r = CliRunner().invoke(cli, ["preflight", "--model", "tiny-random", "--persona", str(card),
                                 "--dataset", str(ROSA / "dataset.json"), "--questions", str(ROSA / "questions.json")])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output, r.output
    assert r.output.strip() == (f"Error: {card}: field 'name' is 101 characters; a persona's name has at most 100: "
                                "write the name alone (the system prompt describes the persona)")
    card.write_text(text.replace("name: Rosa", "name: " + "R" * 100), encoding="utf-8")
    assert load_persona(card).name == "R" * 100
