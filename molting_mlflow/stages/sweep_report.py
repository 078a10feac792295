"""The sweep's report on its parent run: the study's numbers and time accounting as metrics, the
trials table, Optuna's plots, a summary, the diagnosis of the best trial against the user's
original configuration, and the best adapter registered."""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import mlflow
import optuna.visualization as vis
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from molting_mlflow.ground.judge import judge_of
from molting_mlflow.ground.rubric import DIMENSIONS
from molting_mlflow.ground.sweep_config import SPACE
from molting_mlflow.ground.tags import REFERENCE
from molting_mlflow.stages.diagnose import report
from molting_mlflow.stages.registry import model_name, register_adapter, version_of_run
from molting_mlflow.store.judging import judge_logged

# Why sweep.py pruned a trial (trial attribute prune_cause, run tag molting.prune_cause): readers count by these.
PRUNED_FOR_STEPS = "min_steps"           # under the step minimum: no weight loaded
PRUNED_AT_EPOCH = "median_ref_nll"       # stopped at an epoch's end by the MedianPruner


def time_accounting(trials, wall_s: float, target: float) -> dict:
    """sweep_wall_s, trials an hour, time to target, and the share of each trained trial's wall
    spent outside training and evaluation (loading, opening runs, reuse look-ups, logging)."""
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    m = {"sweep_wall_s": wall_s, "trials_per_hour": 3600 * len(done) / wall_s if wall_s else 0.0}
    shares = [t.user_attrs["overhead_share"] for t in done if "overhead_share" in t.user_attrs]
    if shares:
        m.update(overhead_share_mean=statistics.fmean(shares), overhead_share_max=max(shares))
    hit = sorted((t for t in done if t.value is not None and t.value > target
                  and not t.user_attrs.get(REFERENCE)), key=lambda t: t.user_attrs.get("elapsed_s", 0))
    if hit:
        m["time_to_target_s"] = hit[0].user_attrs.get("elapsed_s", float("nan"))
        m["trials_to_target"] = hit[0].number
    return m


def log_study(study, sc, wall_s: float, parent_run_id: str, log, first: int = 0) -> dict:
    """The parent run's metrics and artifacts, the summary (printed), the diagnosis of the best
    trial and its registration, or the reason there is none. Trials of the same study run from
    another experiment are left out: the report is this experiment's."""
    exp_id = mlflow.MlflowClient().get_run(parent_run_id).info.experiment_id
    trials = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("experiment_id", exp_id) == exp_id]
    searched = [t for t in trials if t.state == TrialState.COMPLETE and not t.user_attrs.get(REFERENCE)]
    refs = [t for t in trials if t.user_attrs.get(REFERENCE) and t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    best = max(searched, key=lambda t: t.value, default=None)
    hit = [t for t in sorted(searched, key=lambda t: t.number) if t.value > sc.target]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    mine = [t for t in trials if t.number >= first]
    metrics = {"n_trials": len(trials), "n_new_trials": len(mine), "n_complete": len(searched) + len(refs),
               "n_pruned": len(pruned), "n_failed": len(failed), **time_accounting(mine, wall_s, sc.target)}
    if best is not None:
        metrics["best_score"] = best.value
        metrics.update({f"best_{d}": best.user_attrs[d] for d in DIMENSIONS})
    mlflow.log_metrics(metrics, run_id=parent_run_id)
    mlflow.MlflowClient().set_tag(parent_run_id, "molting.trials_to_target", str(hit[0].number) if hit else "none")
    summary = _summary_md(sc, best, refs, pruned, hit, wall_s, mine)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        df = study.trials_dataframe()
        df.to_csv(t / "trials.csv", index=False)
        _write_plots(study, t)
        (t / "sweep_summary.md").write_text(summary, encoding="utf-8")
        mlflow.MlflowClient().log_artifacts(parent_run_id, tmp, "study")
    out = {"best": best, "refs": refs, "metrics": metrics, "parent_run_id": parent_run_id,
           "study_name": study.study_name, "new_trials": mine}
    log(summary)
    user = next((t for t in refs if t.user_attrs[REFERENCE] == "user-original"), None)
    if best is not None and not _in_this_store(best.user_attrs["run_id"]):
        # Workers sharing a study but not a tracking server: the best run lives in another store.
        log(f"best trial #{best.number} ran on another worker (run {best.user_attrs['run_id'][:8]} is not in "
            f"{mlflow.get_tracking_uri()}): no diagnosis or registration here; share one tracking server "
            "(MLFLOW_TRACKING_URI) across workers to get them")
        return out
    if best is not None:
        user_id = user.user_attrs["run_id"] if user and _in_this_store(user.user_attrs["run_id"]) else None
        mlflow.MlflowClient().log_text(parent_run_id, report(best.user_attrs["run_id"], user_id),
                                       "diagnosis_best_vs_user.md")
    finalists = judge_finalists(sc, searched, parent_run_id, log)
    out["judged"] = finalists
    if sc.champion_by == "judge" and finalists:
        best = finalists[0][0]           # the gate reads the judge: its best finalist is the one registered
    out["version"] = _register(sc, best, mine, log, gate="judge.score" if sc.champion_by == "judge" else "score")
    return out


def judge_finalists(sc, searched: list, parent_run_id: str, log) -> list[tuple]:
    """The judge_finalists best searched trials by rubric, read by the judge (their runs get its assessments and
    judge.* metrics), ranked by judge.score; both rankings on the parent run (metrics best_judge_score and
    judge_finalists, study/judge_ranking.md). [(trial, judge metrics)], best by the judge first."""
    if not sc.judge_finalists:
        return []
    judge = judge_of(sc)
    top = sorted(searched, key=lambda t: -t.value)[:sc.judge_finalists]
    judged = [(t, judge_logged(judge, t.user_attrs["run_id"], log)) for t in top]
    ranked = sorted(judged, key=lambda tj: -tj[1].get("judge.score", float("-inf")))
    lines = [f"# The {len(top)} best trials by rubric, read by the judge {judge.model}", "",
             "| by rubric | by judge | trial | run | score | judge.score |", "|---|---|---|---|---|---|"]
    for i, (t, m) in enumerate(judged, 1):
        lines.append(f"| {i} | {[r[0] for r in ranked].index(t) + 1} | #{t.number} | {t.user_attrs['run_id'][:8]} | "
                     f"{t.value:.2f} | {m.get('judge.score', float('nan')):.2f} |")
    text = "\n".join(lines) + "\n"
    client = mlflow.MlflowClient()
    client.log_text(parent_run_id, text, "study/judge_ranking.md")
    client.log_metric(parent_run_id, "judge_finalists", len(judged))
    if ranked and "judge.score" in ranked[0][1]:
        client.log_metric(parent_run_id, "best_judge_score", ranked[0][1]["judge.score"])
    for k, v in judge.params().items():
        client.log_param(parent_run_id, k, v)
    log(text)
    return ranked


def _register(sc, best, mine: list, log, gate: str = "score") -> str | None:
    """Register the best searched trial; where nothing is registered, say why and what to change."""
    if not sc.register:
        log("registered nothing: register=false")
        return None
    if best is None:
        log(f"registered nothing: {why_no_best(mine, sc)}")
        return None
    name = model_name(best.user_attrs.get("model", sc.model))
    known = version_of_run(name, best.user_attrs["run_id"])
    if known is not None:
        log(f"registered nothing new: the best trial #{best.number} (run {best.user_attrs['run_id'][:8]}, score "
            f"{best.value:.2f}) is {name} v{known} already; this sweep's trials did not beat it")
        return known
    version = register_adapter(best.user_attrs["run_id"], best.user_attrs.get("model", sc.model), sc.target, log, gate)
    log(f"see it:  molting registry --name {name}   (ask it: molting chat --model models:/{name}/{version})")
    return version


def why_no_best(mine: list, sc) -> str:
    """Why no searched trial of this sweep completed, from the trials' states and prune causes, with
    the change that would give one."""
    searched = [t for t in mine if not t.user_attrs.get(REFERENCE)]
    cause = lambda c: sum(t.user_attrs.get("prune_cause") == c for t in searched)  # noqa: E731
    failed = sum(t.state == TrialState.FAIL for t in searched)
    if not searched:
        return (f"no searched trial completed: n_trials={sc.n_trials} covered only the reference trial(s), which "
                "are never registered; raise n_trials")
    parts = [f"{n} {what}" for n, what in ((cause(PRUNED_FOR_STEPS), f"pruned under min_steps={sc.min_steps}"),
                                           (cause(PRUNED_AT_EPOCH), "pruned at an epoch (median ref_nll)"),
                                           (failed, "failed")) if n]
    fix = ("search more epochs or a smaller grad_accum, or lower min_steps" if cause(PRUNED_FOR_STEPS) else
           "prune=false keeps every trial to its end" if cause(PRUNED_AT_EPOCH) else
           "see the tag molting.error on the failed trials' runs" if failed else "raise n_trials")
    return f"no searched trial completed ({', '.join(parts) or 'none finished'} of {len(searched)}); {fix}"


def _in_this_store(run_id: str) -> bool:
    try:
        MlflowClient().get_run(run_id)
        return True
    except MlflowException:
        return False


def _write_plots(study, folder: Path) -> None:
    """Optuna's plots as self-contained HTML (plotly.js inlined: they open offline)."""
    for name, fn in (("optimization_history", vis.plot_optimization_history),
                     ("param_importances", vis.plot_param_importances),
                     ("parallel_coordinate", vis.plot_parallel_coordinate)):
        try:
            fn(study).write_html(folder / f"{name}.html", include_plotlyjs=True)
        except Exception as e:  # importances need ≥ 2 completed trials with varied params
            (folder / f"{name}.txt").write_text(f"not drawn: {e}\n", encoding="utf-8")


def _summary_md(sc, best, refs, pruned, hit, wall_s, mine=()) -> str:
    span = f"#{mine[0].number}–#{mine[-1].number}" if mine else "none"
    lines = [f"# Sweep {sc.resolved_study()} ({sc.model})", "",
             f"- this sweep: {len(mine)} new trial(s) ({span}); "
             + (f"best of the study: trial #{best.number}, score **{best.value:.2f}**" if best
                else "no searched trial completed"),
             f"- target {sc.target}: " + (f"first beaten by trial {hit[0].number} after "
                                          f"{hit[0].user_attrs.get('elapsed_s', 0):.0f} s" if hit else "not reached"),
             f"- pruned: {len(pruned)} "
             f"({sum(t.user_attrs.get('prune_cause') == PRUNED_FOR_STEPS for t in pruned)} "
             "for too few optimizer steps, before training)",
             f"- wall time: {wall_s:.0f} s", *_reference_lines(best, refs), ""]
    rows = [("best", best)] + [(f"reference: {t.user_attrs[REFERENCE]}", t) for t in refs]
    rows = [(n, t) for n, t in rows if t is not None]
    searched = [SPACE[name] for name in sc.space]          # the search table's rows this sweep searched
    if rows:
        lines += ["| trial | " + " | ".join(row.name for row in searched) + " | steps | " + " | ".join(DIMENSIONS)
                  + " | score |", "|---" * (3 + len(searched) + len(DIMENSIONS)) + "|"]
        for name, t in rows:
            values = [_shown(t.params.get(row.name, t.user_attrs.get(row.config_fields[0], "preset"))) for row in searched]
            lines.append(f"| {name} (#{t.number}) | " + " | ".join(map(str, values))
                         + f" | {t.user_attrs.get('optimizer_steps')} | "
                         + " | ".join(f"{t.user_attrs[d]:.2f}" for d in DIMENSIONS) + f" | {t.value:.2f} |")
    return "\n".join(lines) + "\n"


def _shown(value):
    """A searched value as the table shows it: a learning rate as 2.00e-04, the rest as it is."""
    return f"{value:.2e}" if isinstance(value, float) else value


def _reference_lines(best, refs) -> list[str]:
    """What the reference trials are, beside the best: baselines to beat, never candidates for the registry;
    said plainly where a reference scored higher than every searched trial."""
    if not refs:
        return []
    above = [t for t in refs if best is None or t.value > best.value]
    out = ["- reference trials (" + ", ".join(f"{t.user_attrs[REFERENCE]} #{t.number}: {t.value:.2f}" for t in refs)
           + ") are configurations to beat, never candidates for the best or the registry"]
    if above and best is not None:
        out.append(f"- no searched trial beat {', '.join(t.user_attrs[REFERENCE] for t in above)}: the best searched "
                   f"trial #{best.number} scored {best.value:.2f}, below {max(t.value for t in above):.2f}")
    return out
