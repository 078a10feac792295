"""`molting diagnose RUN [--vs OTHER]`: a run explains its own score from what it logged.

Every finding cites the metric, param, tag, artifact or answer it comes from; with no evidence
there is no finding. The thresholds live in THRESHOLDS, each with its reason. Answers are read by
the rubric's reason codes (`d5.repetition`, …), never by the wording of its sentences; a run
scored before codes existed is rescored first (`molting rescore`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from molting_mlflow.ground.config import (DEFAULT_MIN_STEPS, DEFAULT_MODEL, DEFAULT_TARGET, ConfigError, TrainConfig,
                                          describe_fixes)
from molting_mlflow.ground.errors import MoltingError, missing_in_store, unwritable
from molting_mlflow.ground.rubric import DIMENSIONS, REASON_CODES, UNTAGGED_RUBRIC_VERSION, code_prefix, short_name
from molting_mlflow.ground.tags import (ERROR_TAG, MODEL_TAG, PREFLIGHT_ARTIFACT, PRUNE_REASON_TAG, RUBRIC_VERSION_TAG,
                                        STAGE_TAG, TRIAL_STATE_TAG)
from molting_mlflow.store.experiments import lookup_order
from molting_mlflow.store.scoring import REASONS_BY_CODE, RESULTS_TABLE
from molting_mlflow.store.tracking import resolve_run_id

THRESHOLDS = {
    # Impact by the rubric points (of 10) a cause plausibly cost: a point is a tenth of the scale,
    # and the user's target (config.DEFAULT_TARGET) sits 2.1 points above their 2.9.
    "impact_high_points": 1.0,
    "impact_medium_points": 0.3,
    # "Still falling": the loss dropped by more than this share over the last quarter of the
    # steps (the user's 50-step curve was still falling steeply when it stopped).
    "still_falling_drop": 0.10,
    "tail_share": 0.25,
    # A final loss above this on answer tokens left smol's answers degenerate in the probe
    # (2.16 at 50 steps); runs that answered in persona ended near 1.0 or below.
    "high_final_loss": 1.5,
}
SHORT = {d: short_name(d) for d in DIMENSIONS}


class DiagnoseError(MoltingError, ValueError):
    pass


@dataclass
class RunData:
    run_id: str
    params: dict
    metrics: dict
    tags: dict
    losses: list            # [(step, loss)]
    preflight: dict
    answers: list           # rows of eval_results.json as dicts

    @property
    def name(self) -> str:
        return self.tags.get("mlflow.runName", self.run_id[:8])


@dataclass
class Finding:
    cause: str
    impact: str             # high / medium / low
    points: float           # rubric points it plausibly cost
    fixable: str
    change: str
    evidence: list = field(default_factory=list)


def load_run(run_id: str) -> RunData:
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException as e:   # only "no such run" is not found; a 403 or an outage goes on up as itself
        if not missing_in_store(e):
            raise
        raise DiagnoseError(f"run {run_id!r} not found in {mlflow.get_tracking_uri()}; pass a run id "
                            "from `molting compare` or the MLflow UI") from None
    losses = [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")]

    def artifact(path):
        try:
            return mlflow.artifacts.load_text(f"runs:/{run_id}/{path}")
        except MlflowException as e:
            if not missing_in_store(e):
                raise
            return None
        except FileNotFoundError:
            return None

    pre = json.loads(artifact(PREFLIGHT_ARTIFACT) or "{}")
    table = json.loads(artifact(RESULTS_TABLE) or "{}")
    answers = [dict(zip(table["columns"], row)) for row in table.get("data", [])]
    if answers and "codes" not in answers[0]:
        raise DiagnoseError(f"run {run_id} was scored under rubric "
                            f"v{run.data.tags.get('molting.rubric_version', UNTAGGED_RUBRIC_VERSION)}"
                            f", without reason codes; rescore it first: molting rescore {run_id}")
    for a in answers:
        a["codes"] = (a.get("codes") or "").split()
    return RunData(run_id, run.data.params, run.data.metrics, run.data.tags, losses, pre, answers)


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
        found = mlflow.search_runs([exp], filter_string=f"tags.`molting.baseline` = 'true' and "
                                   f"tags.`{MODEL_TAG}` = '{model}' and attributes.status = 'FINISHED'" + same_card,
                                   order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
        if found:
            return load_run(found[0].info.run_id)
    return None


def _has(a: dict, *codes: str) -> bool:
    return any(c in a["codes"] for c in codes)


def _points_lost(run: RunData, dims: tuple, *codes: str) -> float:
    """Mean points lost in `dims` on the answers that carry one of the reason `codes`."""
    if not run.answers:
        return 0.0
    lost = sum(2 - a[d] for a in run.answers for d in dims if _has(a, *codes))
    return lost / len(run.answers)


def _impact(points: float) -> str:
    return ("high" if points >= THRESHOLDS["impact_high_points"] else
            "medium" if points >= THRESHOLDS["impact_medium_points"] else "low")


def _slope_drop(losses) -> float | None:
    """Relative drop of a least-squares line over the last quarter of the steps."""
    tail = losses[-max(4, int(len(losses) * THRESHOLDS["tail_share"])):]
    if len(tail) < 4:
        return None
    xs, ys = [s for s, _ in tail], [v for _, v in tail]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0 or my <= 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var
    return -slope * (xs[-1] - xs[0]) / my


def findings(run: RunData) -> list[Finding]:
    """The causes the run's own logs give evidence for, the costliest first: convergence, format, identity,
    facts, truncation. Each helper returns its findings or none; the order here breaks ties in the sort."""
    nums = run.preflight.get("numbers", {})
    score = run.metrics.get("score")
    below = score is not None and score <= DEFAULT_TARGET
    out = [*_step_findings(run, nums, score, below), *_loss_findings(run, below), *_template_findings(run),
           *_length_limit_findings(run), *_identity_findings(run), *_fact_findings(run), *_truncation_findings(nums)]
    order = {"high": 0, "medium": 1, "low": 2}
    return sorted(out, key=lambda f: (order[f.impact], -f.points))


def _step_findings(run: RunData, nums: dict, score: float | None, below: bool) -> list[Finding]:
    """Too few optimizer steps (metric optimizer_steps < pre-flight's minimum), with its fixes (config.step_fixes)."""
    p, m = run.params, run.metrics
    steps = int(m.get("optimizer_steps", nums.get("optimizer_steps", 0)) or 0)
    min_steps = int(nums.get("min_steps", p.get("train.min_steps", DEFAULT_MIN_STEPS)))
    if not (steps and steps < min_steps):
        return []
    ex = int(nums.get("examples", p.get("data.examples", 0)))
    cfg = _config_of(run, nums, min_steps) if ex else None   # no example count logged: no arithmetic to redo
    pts = (10 - score) if below else 0.0
    return [Finding("too few optimizer steps", _impact(pts) if below else "low", round(pts, 2),
                    "yes (config)", describe_fixes(cfg, ex) if cfg else f"min_steps {min_steps}",
                    [f"{cfg.arithmetic(ex) if cfg else steps} < minimum {min_steps} "
                     "(metric optimizer_steps, preflight.json)"])]


def _loss_findings(run: RunData, below: bool) -> list[Finding]:
    """The loss still falling at the end (over the last quarter of the steps), and a high final loss."""
    out: list[Finding] = []
    drop = _slope_drop(run.losses)
    final = run.metrics.get("final_loss")
    if drop is not None and drop > THRESHOLDS["still_falling_drop"]:
        out.append(Finding("loss still falling at the end", "medium", 0.0, "yes (config)",
                           "train longer: more epochs, or a smaller grad_accum",
                           [f"loss fell {drop:.0%} over the last {THRESHOLDS['tail_share']:.0%} of steps "
                            f"(metric loss, steps {run.losses[-1][0] - len(run.losses) // 4}–{run.losses[-1][0]})"]))
    if final is not None and final > THRESHOLDS["high_final_loss"]:
        # With too few steps the high loss is that cause's symptom (its points are counted there).
        out.append(Finding("high final loss", "low" if below else "medium", 0.0, "yes (config)",
                           "more optimizer steps (see above)" if below else "more optimizer steps or a higher learning rate",
                           [f"final_loss {final:.3f} > {THRESHOLDS['high_final_loss']} (metric final_loss)"]))
    return out


def _template_findings(run: RunData) -> list[Finding]:
    """The template the run trained with: pre-flight's first template error, and special tokens in the answers."""
    out: list[Finding] = []
    for f in run.preflight.get("findings", []):
        if f["check"] in ("chat_template", "end_of_turn") and f["level"] == "error":
            data = f.get("data", {})      # a preflight.json from before findings carried data names none
            tokens = [*data.get("tokens", []), *filter(None, [data.get("end_of_turn")])]
            pts = _points_lost(run, ("d4_cleanliness", "d5_quality"), "d4.template_token", "d4.text_after_token",
                               "d4.role_line", "d5.run_on")
            out.append(Finding("foreign chat-template separators" if f["check"] == "chat_template"
                               else "assistant turns not closed by the end-of-turn token", _impact(pts) if pts else "high",
                               round(pts, 2), "yes (config)", "chat_template=model",
                               [f"preflight.json {f['check']}: {f['message'][:160]}"]
                               + ([f"tokens named: {', '.join(dict.fromkeys(tokens))}"] if tokens else [])))
            break
    leaked = [a for a in run.answers if _has(a, "d4.template_token")]
    if leaked:
        pts = _points_lost(run, ("d4_cleanliness", "d5_quality"), "d4.template_token")
        out.append(Finding("special tokens in the answers", _impact(pts), round(pts, 2),
                           "yes (template/training)", "train with the model's own template (chat_template=model)",
                           [f"{a['id']}: {a['response'][:90]!r}" for a in leaked[:3]]))
    return out


def _length_limit_findings(run: RunData) -> list[Finding]:
    """Answers cut by the token limit: those whose finish_reason is "length" (they never stopped)."""
    cut = [a for a in run.answers if a.get("finish_reason") == "length"]
    if not cut:
        return []
    pts = _points_lost(run, ("d5_quality",), "d5.length_limit")
    return [Finding("answers cut by the token limit (never stopped)", _impact(pts), round(pts, 2),
                    "partly", "more training steps teach the end-of-turn; or raise eval_max_new_tokens",
                    [f"{len(cut)}/{len(run.answers)} answers with finish_reason=length: "
                     + ", ".join(a["id"] for a in cut)])]


def _identity_findings(run: RunData) -> list[Finding]:
    """Identity: no system prompt (and what the model called itself), or, with one, the identity not held."""
    p, pre = run.params, run.preflight
    out: list[Finding] = []
    if p.get("data.system_prompt_source") == "none":
        claims = [a for a in run.answers if _has(a, "d1.conflicting_identity", "d1.other_name", "d1.denies_name")]
        pts = _points_lost(run, ("d1_identity", "d3_voice"), "d1.conflicting_identity", "d1.other_name",
                           "d1.denies_name", "d1.probe_without_name", "d1.no_name")
        ev = ["param data.system_prompt_source = none"]
        injected = next((f["evidence"] for f in pre.get("findings", []) if f["check"] == "system_prompt"), "")
        if injected:
            ev.append(f"preflight.json system_prompt: {injected[:160]}")
        ev += [f"{a['id']}: {a['response'][:90]!r} ({_reason(a, 'D1')})" for a in claims[:3]]
        if not claims:  # no other name claimed: show what it said when asked who it is
            probes = [a for a in run.answers if _has(a, "d1.probe_without_name")]
            ev += [f"asked {a.get('question', a['id'])!r}, it answered {a['response'][:70]!r} ({_reason(a, 'D1')})"
                   for a in probes[:2]]
        out.append(Finding("no system prompt", _impact(pts) if pts else "high", round(pts, 2), "yes (config)",
                           "system_prompt=persona", ev))
    d1_lost = [a for a in run.answers if a["d1_identity"] < 2]
    if d1_lost and p.get("data.system_prompt_source") != "none":
        pts = _points_lost(run, ("d1_identity",), *[c for c in REASON_CODES if c.startswith("d1.")])
        out.append(Finding("identity not held", _impact(pts), round(pts, 2), "partly",
                           "more steps on identity examples; check the system prompt",
                           [f"{a['id']}: {_reason(a, 'D1')}" for a in d1_lost[:4]]))
    return out


def _fact_findings(run: RunData) -> list[Finding]:
    """Facts missed or wrong: the answers that lost D2 points, by their d2 reasons."""
    d2_lost = [a for a in run.answers if a["d2_factual"] < 2]
    if not d2_lost:
        return []
    pts = _points_lost(run, ("d2_factual",), *[c for c in REASON_CODES if c.startswith("d2.")])
    return [Finding("facts missed or wrong", _impact(pts), round(pts, 2), "partly",
                    "more steps; more examples stating the missed facts",
                    [f"{a['id']}: {_reason(a, 'D2')}" for a in d2_lost[:4]])]


def _truncation_findings(nums: dict) -> list[Finding]:
    """Examples truncated at max_seq_len, as pre-flight counted them (preflight.json numbers.truncated)."""
    if not nums.get("truncated"):
        return []
    return [Finding("examples truncated at max_seq_len", "low", 0.0, "yes (config)",
                    f"max_seq_len > {nums.get('max_tokens')}",
                    [f"preflight.json: {nums['truncated']} examples over the limit"])]


def _config_of(run: RunData, nums: dict, min_steps: int) -> TrainConfig | None:
    """The resolved step settings a run logged, as a TrainConfig (None when they were not logged)."""
    p = run.params
    try:
        return TrainConfig(model=p.get("train.model", DEFAULT_MODEL), epochs=int(p["train.epochs"]),
                           grad_accum=int(p["train.grad_accum"]), batch_size=int(p["train.batch_size"]),
                           min_steps=min_steps)
    except (KeyError, ValueError, ConfigError):
        return None


def _reason(a: dict, dim: str) -> str:
    """The answer's reason sentences for one dimension ("D1"), picked by their codes ("d1.…") from the
    table's (code, reason) pairs. A table logged before it had them: every reason, as logged."""
    pairs = a.get(REASONS_BY_CODE)
    if pairs is None:
        return a.get("reasons", "") or "no reason logged"
    return "; ".join(t for c, t in pairs if c.startswith(code_prefix(dim))) or "no reason logged"


def _scores_table(rows: list[tuple[str, RunData | None]]) -> list[str]:
    lines = ["| run | " + " | ".join(SHORT[d] for d in DIMENSIONS) + " | score | steps | final loss |",
             "|---" * (len(DIMENSIONS) + 4) + "|"]
    for name, r in rows:
        if r is None:
            continue
        m = r.metrics
        fmt = lambda k: f"{m[k]:.2f}" if k in m else "–"  # noqa: E731
        lines.append(f"| {name} | " + " | ".join(fmt(d) for d in DIMENSIONS) + f" | {fmt('score')} | "
                     f"{int(m['optimizer_steps']) if 'optimizer_steps' in m else '–'} | {fmt('final_loss')} |")
    return lines


def _config_diff(a: RunData, b: RunData) -> list[str]:
    keys = ["train.epochs", "train.grad_accum", "train.batch_size", "train.lr", "train.optimizer_steps",
            "data.system_prompt_source", "template.source", "train.seed"]
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
    if other:
        out += ["", f"## Against {other.run_id[:8]} ({other.name})", ""] + _vs_lines(run, other)
    return "\n".join(out) + "\n"


def _header_lines(run: RunData, base: RunData | None, other: RunData | None) -> list[str]:
    """The title, the score against the bare model's, the scores table, the personas and a rubric-version warning."""
    out = [f"# Diagnosis of run {run.run_id[:8]} ({run.name})", "",
           f"Score **{run.metrics['score']:.2f}/10**" + (f" (baseline {base.metrics['score']:.2f}, "
           f"{run.metrics['score'] - base.metrics['score']:+.2f})" if base and "score" in base.metrics else
           " (no baseline run of this model in the experiment: `molting evaluate --model <model>`)"), ""]
    out += _scores_table([(f"this run {run.run_id[:8]}", run), ("baseline (bare model)", base),
                          (f"--vs {other.run_id[:8]}" if other else "", other)]) + [""]
    out += _persona_lines(run, other)
    versions = {rubric_version(r) for r in (run, base, other) if r is not None and "score" in r.metrics}
    if len(versions) > 1:
        out += [f"> These runs were scored under rubric versions {', '.join(sorted(versions))}: their scores are "
                "not comparable. Bring them to one with `molting rescore <run_id> …`.", ""]
    return out


def _convergence_lines(run: RunData, other: RunData | None) -> list[str]:
    nums = run.preflight.get("numbers", {})
    out = [f"- optimizer steps: {int(run.metrics.get('optimizer_steps', 0))} (pre-flight minimum "
           f"{nums.get('min_steps', '?')}); final loss {run.metrics.get('final_loss', float('nan')):.3f}"]
    drop = _slope_drop(run.losses)
    if drop is not None:
        out.append(f"- loss over the last {THRESHOLDS['tail_share']:.0%} of steps: "
                   + (f"still falling ({drop:.0%})" if drop > THRESHOLDS["still_falling_drop"] else f"flat ({drop:+.0%})"))
    if other and "final_loss" in other.metrics:
        out.append(f"- against {other.run_id[:8]}: {int(other.metrics.get('optimizer_steps', 0))} steps, final loss "
                   f"{other.metrics['final_loss']:.3f}")
    return out


def _format_lines(run: RunData) -> list[str]:
    pre_f = [f for f in run.preflight.get("findings", []) if f["level"] != "info"]
    out = [f"- pre-flight [{f['level']}] {f['check']}: {f['message'][:200]}" for f in pre_f] or ["- pre-flight: clean"]
    cut = [a["id"] for a in run.answers if a.get("finish_reason") == "length"]
    tok = [a["id"] for a in run.answers if _has(a, "d4.template_token")]
    out.append(f"- answers with special tokens: {', '.join(tok) or 'none'}; cut by the token limit: {', '.join(cut) or 'none'}")
    return out


def _identity_lines(run: RunData) -> list[str]:
    lost = [a for a in run.answers if a["d1_identity"] < 2 or a["d2_factual"] < 2]
    return [f"- {a['id']} {a['question']!r}: {a['response'][:100]!r} — {_reason(a, 'D1')}; {_reason(a, 'D2')}"
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
            out.append(f"- {SHORT[d]}: {other.metrics[d]:.2f} → {run.metrics[d]:.2f} ({delta:+.2f})"
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
