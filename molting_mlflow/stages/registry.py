"""The adapter registry: registered model `molting-<preset>`, one version per registered adapter.

A version is a pyfunc model that holds the adapter folder as an artifact; its `load_context`
rebuilds the base model in the precision the adapter trained in where the machine can
(runtime.eval_plan) and applies the adapter.
MLflow's transformers flavour is not used: with a local base it stored a state dict that
reloaded with random base weights and no error, and bitsandbytes settings are not restored.

Aliases: `candidate` moves to every new version; `champion` moves only to a version whose score
beats the target and the current champion's score (or by hand: `molting promote`).
"""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import mlflow.pyfunc
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from molting_mlflow.ground import runtime
from molting_mlflow.ground.bundle import adapter_persona
from molting_mlflow.ground.config import DEFAULT_TARGET
from molting_mlflow.ground.generation import adapter_prompt, generate
from molting_mlflow.ground.models import load_adapter_model
from molting_mlflow.ground.paths import DATA_DIR, PACKAGE_DIR
from molting_mlflow.ground.rubric import DIMENSIONS
from molting_mlflow.ground.questions import Question
from molting_mlflow.ground.tags import ADAPTER_META, CHAMPION, adapter_uri
from molting_mlflow.store.reaper import process_tags


class PersonaAdapterModel(mlflow.pyfunc.PythonModel):
    """predict(["Quem é você?", ...]) → the persona's answers, one a question."""

    # MLflow's own switch (see PythonModel.__init_subclass__): the logged signature, params included,
    # governs; without it MLflow wraps predict and warns about missing type hints on every load.
    _skip_type_hint_validation = True

    def load_context(self, context):
        runtime.set_threads()
        adapter = Path(context.artifacts["adapter"])
        self.model, self.tok, self.meta, _ = load_adapter_model(adapter)
        self.persona = adapter_persona(adapter)    # the card its train run logged (adapter/persona/)

    # No type hints on purpose: MLflow 3 derives a signature from them and then drops the logged
    # signature's params schema, so `params={"max_new_tokens": …}` would be ignored with a warning.
    def predict(self, context, model_input, params=None):
        if hasattr(model_input, "columns"):      # MLflow hands a string-column signature a DataFrame
            model_input = model_input.iloc[:, 0].tolist()
        elif hasattr(model_input, "tolist"):     # a Series or an array
            model_input = model_input.tolist()
        questions = [model_input] if isinstance(model_input, str) else [str(q) for q in model_input]

        qs = [Question(id=str(i), question=q, identity_probe=False, facts=[], forbidden=[], topic=[])
              for i, q in enumerate(questions)]
        max_new = int((params or {}).get("max_new_tokens", 128))
        system_prompt, fold = adapter_prompt(self.meta, self.tok)   # folded as it trained (molting.json)
        records, _ = generate(self.model, self.tok, qs, system_prompt, max_new, fold=fold)
        return [r["response"] for r in records]


def model_name(preset: str) -> str:
    return f"molting-{preset}"


# The metric a champion gate may read (sweep_config.CHAMPION_BY) → the version tag that keeps it
GATE_TAGS = {"score": "score", "judge.score": "judge_score"}


def register_adapter(run_id: str, preset: str, target: float = DEFAULT_TARGET, log=print, gate: str = "score") -> str:
    """Register a train run's adapter as a new version; tag it; move the aliases: `champion` only to a version
    whose `gate` metric (the rubric's score, or the judge's) beats the target and the current champion's.
    Returns the version."""
    client = MlflowClient()
    run = client.get_run(run_id)
    local = Path(mlflow.artifacts.download_artifacts(adapter_uri(run_id)))
    meta = json.loads((local / ADAPTER_META).read_text(encoding="utf-8"))
    name = model_name(preset)
    m = run.data.metrics

    # the values only give the types (a string in, a string out); the persona's words live in its card
    signature = infer_signature(["a question"], ["its answer"], params={"max_new_tokens": 128})
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        mlflow.set_tags(process_tags())  # RUNNING again, held by this process: not a zombie to the reaper
        info = mlflow.pyfunc.log_model(
            name="persona_model", python_model=PersonaAdapterModel(), artifacts={"adapter": str(local)},
            signature=signature,
            # the package with its data (persona, questions, the tiny-random tokenizer's corpus): the
            # model loads where no checkout nor install of molting is (paths.py finds either layout)
            code_paths=_code_paths(), registered_model_name=name,
            pip_requirements=["torch", "transformers", "peft", "bitsandbytes", "mlflow", "gguf", "pyyaml"])
    version = str(info.registered_model_version)
    quant = runtime.quantization_tag(runtime.trained_precision(str(meta.get("precision", "fp32"))))
    tags = {"base_model": meta.get("model.id", ""), "base_revision": meta.get("model.revision", ""),
            "preset": preset, "quantization": quant, "source_run": run_id,
            "persona": run.data.params.get("persona.name", ""),
            "persona_sha256": run.data.params.get("persona.sha256", ""),
            "score": f"{m.get('score', float('nan')):.4f}", "champion_gate": gate,
            **({"judge_score": f"{m['judge.score']:.4f}"} if "judge.score" in m else {}),
            **{d: f"{m.get(d, float('nan')):.4f}" for d in DIMENSIONS}}
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    client.set_registered_model_alias(name, "candidate", version)
    score = m.get(gate, float("-inf"))
    champ = current_champion(name)
    champ_score = float(champ.tags.get(GATE_TAGS[gate], "-inf")) if champ else float("-inf")
    if score > target and score > champ_score:
        client.set_registered_model_alias(name, CHAMPION, version)
        log(f"registered {name} v{version} ({gate} {score:.2f}): aliases candidate, champion")
    else:
        why = f"not above target {target}" if score <= target else f"not above champion v{champ.version} ({champ_score:.2f})"
        log(f"registered {name} v{version} ({gate} {score:.2f}): alias candidate; champion unchanged ({why})")
    return version


def _code_paths() -> list[str]:
    """The package folder, and data/ beside it where it is not inside (a checkout; a wheel has it inside)."""
    package = PACKAGE_DIR
    return [str(package)] + ([] if DATA_DIR.resolve().is_relative_to(package) else [str(DATA_DIR)])


def version_of_run(name: str, run_id: str) -> str | None:
    """The version of `name` already registered from this train run (the model is logged on it), or None."""
    found = MlflowClient().search_model_versions(f"name='{name}' and run_id='{run_id}'")
    return str(found[0].version) if found else None


def current_champion(name: str):
    try:
        return MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None


def registered_models() -> list[str]:
    """The registered models named molting-<preset>, by name."""
    return sorted(m.name for m in MlflowClient().search_registered_models(filter_string="name LIKE 'molting-%'"))


def list_versions(name: str) -> list[dict]:
    client = MlflowClient()
    aliases: dict[str, list[str]] = {}
    rm = client.get_registered_model(name)
    for alias, v in (rm.aliases or {}).items():
        aliases.setdefault(str(v), []).append(alias)
    rows = []
    for v in sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version)):
        rows.append({"version": v.version, "aliases": ",".join(sorted(aliases.get(str(v.version), []))),
                     "score": v.tags.get("score", ""), "base_model": v.tags.get("base_model", ""),
                     "quantization": v.tags.get("quantization", ""), "source_run": v.tags.get("source_run", "")[:8]})
    return rows


def promote(name: str, version: str, alias: str = CHAMPION) -> None:
    MlflowClient().set_registered_model_alias(name, alias, str(version))
