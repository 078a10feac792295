"""`molting diagnose RUN [--vs OTHER]`: a run explains its own score from what it logged: the scores
against the bare model's and the references', convergence, format, identity and the causes (causes.py),
and the difference against another run.

A run scored before reason codes existed is rescored first (`molting rescore`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from molting_mlflow.ground import bundle
from molting_mlflow.ground.errors import MoltingError, missing_in_store, unwritable
from molting_mlflow.ground.persona import load_persona
from molting_mlflow.ground.preflight import EVAL_LEAK
from molting_mlflow.ground.presets import PRESETS
from molting_mlflow.ground.questions import load_questions
from molting_mlflow.ground.rubric import DIMENSIONS, RUBRIC, UNTAGGED_RUBRIC_VERSION, score_response, short_name
from molting_mlflow.ground.sweep_config import SEARCH_SPACE
from molting_mlflow.ground.tags import (BASELINE_TAG, ERROR_TAG, EVAL_LEAK_ARTIFACT, MODEL_TAG, PREFLIGHT_ARTIFACT,
                                        PRUNE_REASON_TAG, RESPONSES_MODEL, RESPONSES_TAG, RUBRIC_VERSION_TAG, STAGE_TAG,
                                        TRIAL_STATE_TAG)
from molting_mlflow.store.experiments import lookup_order
from molting_mlflow.store.labelled import HOW_TO_LABEL, SCORERS, agreement_report, measure, rows_of
from molting_mlflow.store.lineage import train_run_of
from molting_mlflow.stages.causes import THRESHOLDS, RunData, findings, has_code, reasons_for, tail_drop
from molting_mlflow.store.scoring import logged_results
from molting_mlflow.store.tracking import resolve_run_id, text_artifact

class DiagnoseError(MoltingError, ValueError):
    pass


# What diagnose reads of a training where a run evaluated another run's adapter
TRAINING_METRICS = ("optimizer_steps", "final_loss")


def load_run(run_id: str) -> RunData:
    """A run as diagnose reads it; an evaluation of a trained adapter with its training (losses, steps,
    pre-flight, train.* params) read from the train run, and its own leak finding in place of the training's."""
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException as e:   # only "no such run" is not found; a 403 or an outage goes on up as itself
        if not missing_in_store(e):
            raise
        raise DiagnoseError(f"run {run_id!r} not found in {mlflow.get_tracking_uri()}; pass a run id "
                            "from `molting compare` or the MLflow UI") from None
    trained = train_run_of(run)
    trains = run.data.tags.get(STAGE_TAG) == "train" or "optimizer_steps" in run.data.metrics
    training = trained.info.run_id if trained else run_id if trains else ""
    params, metrics = run.data.params, run.data.metrics
    pre = json.loads(text_artifact(training, PREFLIGHT_ARTIFACT) or "{}") if training else {}
    if trained is not None:
        params = {**trained.data.params, **params}
        metrics = {**{k: trained.data.metrics[k] for k in TRAINING_METRICS if k in trained.data.metrics}, **metrics}
        own = json.loads(text_artifact(run_id, EVAL_LEAK_ARTIFACT) or "null")    # its questions, not the training's
        pre["findings"] = [f for f in pre.get("findings", []) if f["check"] != EVAL_LEAK] + ([own] if own else [])
    losses = [(m.step, m.value) for m in client.get_metric_history(training, "loss")] if training else []
    answers = logged_results(run_id) or []
    if answers and "codes" not in answers[0]:
        raise DiagnoseError(f"run {run_id} was scored under rubric "
                            f"v{run.data.tags.get('molting.rubric_version', UNTAGGED_RUBRIC_VERSION)}"
                            f", without reason codes; rescore it first: molting rescore {run_id}")
    for a in answers:
        a["codes"] = (a.get("codes") or "").split()
    return RunData(run_id, params, metrics, run.data.tags, losses, pre, answers,
                   reference_ceiling(run_id) if answers else {}, training)


def reference_ceiling(run_id: str) -> dict:
    """{question id: {dimension: points}} of the persona's own reference answers, scored as the run's card
    (the bundle it logged under persona/); {} where it logged none or its questions have no references."""
    logged = bundle.of_run(run_id)
    if not logged or not logged[1]:
        return {}
    persona = load_persona(logged[0])
    return {q.id: {d: s[d] for d in DIMENSIONS} for q in load_questions(logged[1]) if q.reference
            for s in [score_response(q, q.reference, "stop", persona)]}


def rubric_version(run: RunData) -> str:
    return run.tags.get(RUBRIC_VERSION_TAG, UNTAGGED_RUBRIC_VERSION)


def find_baseline(run: RunData) -> RunData | None:
    """The newest finished bare-model evaluation of the run's model, scored against the same persona card
    (param persona.sha256, where the run logged one): in the run's experiment, else in the project's
    other experiments (`mlflow run . -e evaluate` may have put it in `Default`)."""

    model = run.tags.get(MODEL_TAG, "")
    card = run.params.get("persona.sha256")
    same_card = f" and params.`persona.sha256` = '{card}'" if card else ""
    for exp in lookup_order(MlflowClient().get_run(run.run_id).info.experiment_id):
        found = mlflow.search_runs([exp], filter_string=f"tags.`{BASELINE_TAG}` = 'true' and "
                                   f"tags.`{MODEL_TAG}` = '{model}' and attributes.status = 'FINISHED'" + same_card,
                                   order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
        if found:
            return load_run(found[0].info.run_id)
    return None


def _scores_table(rows: list[tuple[str, dict | None]]) -> list[str]:
    """One row a run (its metrics; None: left out), and the references' row where the run has them."""
    lines = ["| run | " + " | ".join(short_name(d) for d in DIMENSIONS) + " | score | steps | final loss |",
             "|---" * (len(DIMENSIONS) + 4) + "|"]
    for name, m in rows:
        if m is None:
            continue
        fmt = lambda k: f"{m[k]:.2f}" if k in m else "–"  # noqa: E731
        lines.append(f"| {name} | " + " | ".join(fmt(d) for d in DIMENSIONS) + f" | {fmt('score')} | "
                     f"{int(m['optimizer_steps']) if 'optimizer_steps' in m else '–'} | {fmt('final_loss')} |")
    return lines


def _config_diff(a: RunData, b: RunData) -> list[str]:
    """The settings that differ: what a sweep searches (sweep_config.SEARCH_SPACE), then what else decides a run."""
    searched = [f"train.{f}" for row in SEARCH_SPACE for f in row.config_fields]
    keys = dict.fromkeys([*searched, "train.batch_size", "train.optimizer_steps", "data.system_prompt_source",
                          "template.source", "train.seed"])
    return [f"{k}: {b.params.get(k)} → {a.params.get(k)}" for k in keys if a.params.get(k) != b.params.get(k)]


def report(run_id: str, vs: str | None = None) -> str:
    """The diagnosis of `run_id` (a unique prefix will do), against `vs` where given: a markdown report of
    scores, convergence, format, identity, root causes and hypotheses, and the difference against `vs`."""
    run = load_run(resolve_run_id(run_id))
    if "score" not in run.metrics:
        raise DiagnoseError(no_score(run))
    base = find_baseline(run)
    other = load_run(resolve_run_id(vs)) if vs else None
    out = _header_lines(run, base, other)
    out += ["## Convergence", ""] + _convergence_lines(run, other)
    out += ["", "## Format", ""] + _format_lines(run)
    out += ["", "## Identity and facts", ""] + _identity_lines(run)
    out += _cause_lines(findings(run))
    out += ["", "## Against a person's reading", ""] + _agreement_lines(run)
    if other:
        out += ["", f"## Against {other.run_id[:8]} ({other.name})", ""] + _vs_lines(run, other)
    return "\n".join(out) + "\n"


def _header_lines(run: RunData, base: RunData | None, other: RunData | None) -> list[str]:
    """The title, the score against the bare model's, the scores table, the personas and a rubric-version warning."""
    out = [f"# Diagnosis of run {run.run_id[:8]} ({run.name})", "",
           f"Score **{run.metrics['score']:.2f}/{RUBRIC.max_score}**" + (f" (baseline {base.metrics['score']:.2f}, "
           f"{run.metrics['score'] - base.metrics['score']:+.2f})" if base and "score" in base.metrics else
           " (no baseline run of this model in the experiment: `molting evaluate --model <model>`)"), ""]
    out += _scores_table([(f"this run {run.run_id[:8]}", run.metrics), ("baseline (bare model)", base and base.metrics),
                          (f"--vs {other.run_id[:8]}" if other else "", other and other.metrics),
                          (f"the persona's reference answers ({len(run.ceiling)} questions)", _reference_row(run))])
    out += [""] + _plumbing_lines(run) + _persona_lines(run, other)
    versions = {rubric_version(r) for r in (run, base, other) if r is not None and "score" in r.metrics}
    if len(versions) > 1:
        out += [f"> These runs were scored under rubric versions {', '.join(sorted(versions))}: their scores are "
                "not comparable. Bring them to one with `molting rescore <run_id> …`.", ""]
    return out


def _reference_row(run: RunData) -> dict | None:
    """The mean points of the persona's reference answers on the questions that have one: the ceiling
    of each dimension there (None where the run logged no references)."""
    if not run.ceiling:
        return None
    rows = list(run.ceiling.values())
    means = {d: sum(r[d] for r in rows) / len(rows) for d in DIMENSIONS}
    return {**means, "score": sum(means.values())}


def _agreement_lines(run: RunData) -> list[str]:
    """The rubric (and a judge) against the answers a person labelled on this run (molting label, the UI)."""
    rows = rows_of(run.run_id)
    if not rows:
        return [f"- no human labels yet: {HOW_TO_LABEL}. The rubric reads trained adapters kinder than a person "
                "does; check it on your own labels before trusting a score past the target."]
    return agreement_report(rows, {s: measure(rows, s) for s in SCORERS}).splitlines()


def _plumbing_lines(run: RunData) -> list[str]:
    """A model of random weights says so: its answers and scores say nothing about a persona."""
    model = run.tags.get(MODEL_TAG, "")
    if not (model in PRESETS and PRESETS[model].only_for_plumbing):
        return []
    return [f"> **{model} has random weights**: a model for testing the plumbing. Its answers and this score say "
            "nothing about the persona or the configuration; diagnose a run of a real model (smol, tinyllama, phi3).",
            ""]


def _convergence_lines(run: RunData, other: RunData | None) -> list[str]:
    if not run.training:
        return [f"- no training in this run: {_untrained(run)}"]
    nums = run.preflight.get("numbers", {})
    out = [] if run.training == run.run_id else [f"- trained in run {run.training[:8]}, whose adapter this run "
                                                 "evaluated: the steps, loss and pre-flight below are that run's"]
    out += [f"- optimizer steps: {int(run.metrics.get('optimizer_steps', 0))} (pre-flight minimum "
            f"{nums.get('min_steps', '?')}); final loss {run.metrics.get('final_loss', float('nan')):.3f}"]
    fell = tail_drop(run.losses)
    if fell is not None:
        first, last, drop = fell
        how = "still falling" if drop > THRESHOLDS["still_falling_drop"] else "flat"
        out.append(f"- loss over the last {THRESHOLDS['tail_share']:.0%} of steps: {how}, from {first:.3f} to "
                   f"{last:.3f} ({-drop:+.1%}; means of its first and last {THRESHOLDS['tail_part']:.0%})")
    if other and "final_loss" in other.metrics:
        out.append(f"- against {other.run_id[:8]}: {int(other.metrics.get('optimizer_steps', 0))} steps, final loss "
                   f"{other.metrics['final_loss']:.3f}")
    return out


def _untrained(run: RunData) -> str:
    """What a run without a training scored."""
    if run.tags.get(MODEL_TAG) == RESPONSES_MODEL:
        return f"answers scored as given (molting score --log of {run.tags.get(RESPONSES_TAG, 'a file')})"
    if run.tags.get(BASELINE_TAG) == "true":
        return f"the bare model {run.tags.get(MODEL_TAG, '')}'s answers"
    return "an adapter whose train run is not in this store"


def _format_lines(run: RunData) -> list[str]:
    pre_f = [f for f in run.preflight.get("findings", []) if f["level"] != "info"]
    clean = "- pre-flight: clean" if run.training else "- pre-flight: none (nothing was trained)"
    out = [f"- pre-flight [{f['level']}] {f['check']}: {f['message'][:200]}" for f in pre_f] or [clean]
    cut = [a["id"] for a in run.answers if a.get("finish_reason") == "length"]
    tok = [a["id"] for a in run.answers if has_code(a, "d4.template_token")]
    out.append(f"- answers with special tokens: {', '.join(tok) or 'none'}; cut by the token limit: {', '.join(cut) or 'none'}")
    return out


def _identity_lines(run: RunData) -> list[str]:
    lost = [a for a in run.answers if a["d1_identity"] < 2 or a["d2_factual"] < 2]
    return [f"- {a['id']} {a['question']!r}: {a['response'][:100]!r} — {reasons_for(a, 'D1')}; {reasons_for(a, 'D2')}"
            for a in lost] or ["- every answer kept the identity and covered its facts"]


def _cause_lines(fs: list) -> list[str]:
    out = ["", "## Root causes", "", "| cause | impact | points | fixable | change |", "|---|---|---|---|---|"]
    out += [f"| {f.cause} | {f.impact} | {f.points:.2f} | {f.fixable} | {f.change} |" for f in fs] or ["| none found | | | | |"]
    out += ["", "## Hypotheses, ranked", ""]
    return out + [f"{i}. **{f.cause}** ({f.impact} impact, ~{f.points:.2f} points): " + "; ".join(f.evidence)
                  for i, f in enumerate(fs, 1)]


def _vs_lines(run: RunData, other: RunData) -> list[str]:
    diff = _config_diff(run, other)
    out = ["- config: " + ("; ".join(diff) if diff else "identical resolved config")]
    for d in DIMENSIONS:
        if d in run.metrics and d in other.metrics:
            delta = run.metrics[d] - other.metrics[d]
            out.append(f"- {short_name(d)}: {other.metrics[d]:.2f} → {run.metrics[d]:.2f} ({delta:+.2f})"
                       + (f" — {_why(d, run, other)}" if abs(delta) > 1e-9 else ""))
    if "score" in other.metrics:
        out.append(f"- score: {other.metrics['score']:.2f} → {run.metrics['score']:.2f} "
                   f"({run.metrics['score'] - other.metrics['score']:+.2f})")
    else:
        out.append(f"- score: {other.run_id[:8]} has none ({no_score(other)})")
    return out


def no_score(run: RunData) -> str:
    """Why a run has no rubric score, and the command that gives one where there is one."""
    t, short = run.tags, run.run_id[:8]
    if t.get(STAGE_TAG) == "sweep":
        best = _best_child(run.run_id)
        return (f"run {short} is a sweep's parent run, which scores nothing itself; "
                + (f"its best trial is {best[:8]}: molting diagnose {best[:8]}" if best else "none of its trials scored"))
    if t.get(TRIAL_STATE_TAG) == "PRUNED":
        return (f"run {short} is a pruned trial ({t.get(PRUNE_REASON_TAG, 'no reason logged')[:160]}): it "
                "stopped before it was scored and has nothing to evaluate")
    if t.get(ERROR_TAG):
        return f"run {short} ended with an error ({t[ERROR_TAG][:160]}): it was never scored"
    if t.get(STAGE_TAG) == "train" and run.params.get("train.evaluate") == "False":
        return f"run {short} trained with evaluate=false; score it: molting evaluate --run-id {short}"
    return f"run {short} has no rubric score; evaluate it first: molting evaluate --run-id {short}"


def _best_child(parent_run_id: str) -> str | None:
    """The best-scored child run of a sweep's parent run (its trials), or None."""
    found = mlflow.search_runs(search_all_experiments=True, output_format="list", max_results=1,
                               filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and metrics.score >= 0",
                               order_by=["metrics.score DESC"])
    return found[0].info.run_id if found else None


def _persona_lines(run: RunData, other: RunData | None) -> list[str]:
    """Which persona the scores are against (the card and questions the run logged, persona/), and
    whether --vs was scored against another one."""
    p = run.params
    if "persona.sha256" not in p:
        return []
    out = [f"Scored as persona **{p.get('persona.name', '?')}** ({p.get('persona.language', '?')}): card sha256 "
           f"{p['persona.sha256'][:12]}, questions sha256 {p.get('questions.sha256', '')[:12]} "
           "(artifacts persona/)", ""]
    if other is not None and other.params.get("persona.sha256", p["persona.sha256"]) != p["persona.sha256"]:
        out += [f"> --vs {other.run_id[:8]} was scored against another persona card "
                f"({other.params.get('persona.name', '?')}, sha256 {other.params['persona.sha256'][:12]}): "
                "its scores are not comparable with this run's.", ""]
    return out


def _why(dim: str, a: RunData, b: RunData) -> str:
    """Config differences that bear on a dimension, from the rubric's own rules."""
    reasons = []
    pa, pb = a.params, b.params
    if pa.get("train.optimizer_steps") != pb.get("train.optimizer_steps"):
        reasons.append(f"optimizer steps {pb.get('train.optimizer_steps')} → {pa.get('train.optimizer_steps')}")
    if dim in ("d1_identity", "d3_voice") and pa.get("data.system_prompt_source") != pb.get("data.system_prompt_source"):
        reasons.append(f"system prompt {pb.get('data.system_prompt_source')} → {pa.get('data.system_prompt_source')}")
    if dim in ("d4_cleanliness", "d5_quality") and pa.get("template.source") != pb.get("template.source"):
        reasons.append(f"chat template {pb.get('template.source')} → {pa.get('template.source')}")
    return "; ".join(reasons) or "no config difference bears on it (seed or sampling noise)"


def diagnose(run_id: str, vs: str | None = None, out: str | None = None, log=print) -> str:
    """Build the report, log it on the run as diagnosis.md, print it, and write it to `out` if given."""
    run_id = resolve_run_id(run_id)
    text = report(run_id, vs)
    client = MlflowClient()
    client.log_text(run_id, text, "diagnosis.md")
    own = os.environ.get("MLFLOW_RUN_ID")  # `mlflow run . -e diagnose` made a run of its own: keep a copy there
    if own and own != run_id:
        client.log_text(own, text, "diagnosis.md")
        client.set_tag(own, "molting.diagnosed_run", run_id)
    if out:
        try:
            Path(out).write_text(text, encoding="utf-8")
        except OSError as e:     # no such folder, a directory, permission denied
            raise DiagnoseError(f"--out {unwritable(out, e)}") from None
    log(text)
    return text
