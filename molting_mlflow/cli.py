"""`molting`: the command line. Each subcommand parses options and calls the library.

User mistakes (bad data, unknown model, nonsense numbers) become one line on stderr and exit
code 2, with no traceback, and the MLflow run `mlflow run` may have opened ends FAILED.
"""
from __future__ import annotations

import functools
import os
import sys
from dataclasses import fields

import click

from molting_mlflow.ground.offline import stay_offline
from molting_mlflow.ground.quiet import quiet_known_warnings

stay_offline()   # before anything imports mlflow: its telemetry starts at import
quiet_known_warnings()   # before peft imports bitsandbytes, which logs its line at import

# The ground modules a command's options and checks need; none imports MLflow, so `molting --help`,
# `molting preflight` and `molting score` start at once. The stage modules and the MLflow plumbing
# (tracking) import MLflow (~2 s, and much more through it): each command imports the one it runs,
# inside its function. Those are the only imports of the package's own modules below the top.
from molting_mlflow.ground.bundle import adapter_persona  # noqa: E402
from molting_mlflow.ground.config import DEFAULT_EXPERIMENT, MAX_NEW_TOKENS, EvalConfig, JudgeSettings, TrainConfig  # noqa: E402
from molting_mlflow.ground.errors import MoltingError, debugging, first_line, missing_in_store, unwritable  # noqa: E402
from molting_mlflow.ground.generation import adapter_prompt, generate  # noqa: E402
from molting_mlflow.ground.models import WeightsNotFound, load_adapter_model, resolve_adapter  # noqa: E402
from molting_mlflow.ground.paths import DEFAULT_PERSONA  # noqa: E402
from molting_mlflow.ground.persona import load_persona  # noqa: E402
from molting_mlflow.ground.prepare import prepare  # noqa: E402
from molting_mlflow.ground.presets import PRESETS  # noqa: E402
from molting_mlflow.ground.rehearsal import has_templates  # noqa: E402
from molting_mlflow.ground.reuse import DIST_NAME  # noqa: E402
from molting_mlflow.ground.rubric import score_responses  # noqa: E402
from molting_mlflow.ground.questions import Question, load_questions, load_responses
from molting_mlflow.ground.runtime import set_threads  # noqa: E402
from molting_mlflow.ground.sweep_config import SEARCH_SPACE, SweepConfig, parse_search  # noqa: E402
from molting_mlflow.ground.tags import CHAMPION  # noqa: E402
from molting_mlflow.store.interrupt import EXIT_CODE as INTERRUPTED, Interrupted, interrupt_on_signals  # noqa: E402
from molting_mlflow.store.reaper import redact, sqlite_fault, touch_store  # noqa: E402

class UserError(click.ClickException):
    """A mistake in the input: one line, exit code 2."""

    exit_code = 2

    def show(self, file=None):
        click.echo(f"Error: {self.format_message()}", err=True)


class PresetOr(click.ParamType):
    """A number, or the word 'preset' (None): the preset's default."""

    def __init__(self, kind):
        self.kind = kind
        self.name = f"{kind.__name__}|preset"

    def convert(self, value, param, ctx):
        if value is None or value == "preset":
            return None
        if isinstance(value, self.kind) and not isinstance(value, bool):
            return value
        try:
            return self.kind(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a {self.kind.__name__} nor 'preset'", param, ctx)


def user_errors(fn):
    """Turn the library's errors a user fixes (errors.MoltingError, and the world's faults of _world_error)
    into UserError, ending an attached run FAILED. Ctrl-C or SIGTERM ends it KILLED and the command with
    one line (an interrupt.Interrupted's: what was kept, the command that finishes the job) and exit code
    130, not click's "Aborted!" and 1. MOLTING_DEBUG=1 re-raises them with their traceback."""

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except KeyboardInterrupt as e:
            from molting_mlflow.store.tracking import kill_attached_run

            kill_attached_run()
            if debugging():
                raise
            click.echo(e.line if isinstance(e, Interrupted) else "molting: interrupted", err=True)
            sys.exit(INTERRUPTED)
        except Exception as e:
            msg = e.one_line() if isinstance(e, MoltingError) else _world_error(e)
            if msg is None:
                raise
            from molting_mlflow.store.tracking import fail_attached_run

            fail_attached_run(msg)
            if debugging():
                raise
            raise UserError(msg) from None

    return wrapper


def _world_error(e: Exception) -> str | None:
    """The world's faults a user fixes, not bugs: a full disk, a tracking server that refuses these
    credentials. One line too (a run they hit has ended FAILED with the error); None for anything else."""
    import errno

    from mlflow.exceptions import MlflowException

    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        where = getattr(e, "filename2", None) or e.filename or "the artifact store"  # shutil.copy: (src, dst)
        return (f"no space left on the device holding {where}: free space there "
                "(or give the experiment an artifact location elsewhere) and run again")

    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        where = getattr(e, "filename2", None) or e.filename or "a file"   # the user's own files say so earlier
        return (f"{where}: {e.strerror}; run from a folder you can write (MLflow's default artifact folder is "
                "./mlruns where you run) or give the experiment an artifact location you can write")
    if (store := sqlite_fault(e)) is not None:    # a SQLite store gone read-only or locked mid-command
        return store
    status = e.get_http_status_code() if isinstance(e, MlflowException) else None
    if status in (401, 403):
        import mlflow

        who = os.environ.get("MLFLOW_TRACKING_USERNAME")
        server = f"tracking server {redact(mlflow.get_tracking_uri())}"
        if not who:
            return (f"{server} refused a request without credentials: set MLFLOW_TRACKING_USERNAME and "
                    "MLFLOW_TRACKING_PASSWORD")
        if status == 401:
            return f"{server} refused the credentials of user '{who}' (HTTP 401): check MLFLOW_TRACKING_PASSWORD"
        return (f"{server}: user '{who}' may not do this (HTTP 403); ask its admin for EDIT on the experiment "
                "(or the registered model)")
    return None


class MoltingGroup(click.Group):
    """Option errors ('--lr fast') as one line too, and an attached run ends FAILED."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            from molting_mlflow.store.tracking import fail_attached_run

            where = f" (see: molting {ctx.invoked_subcommand} --help)" if ctx.invoked_subcommand else ""
            fail_attached_run(e.format_message())
            raise UserError(e.format_message() + where) from None


def config_options(config, skip: tuple[str, ...] = ()):
    """One click option per field of a config dataclass (TrainConfig, EvalConfig, SweepConfig), with the
    field's default and help (config.opt): adding a field adds its option. A preset field takes 'preset'
    or a number of its annotated type (`lr: float | None` → float)."""
    def decorate(fn):
        for f in reversed(fields(config)):
            if f.name in skip:
                continue
            if f.metadata.get("preset"):
                kind, default = PresetOr(float if str(f.type).startswith("float") else int), "preset"
            else:
                kind, default = {bool: click.BOOL, int: int, float: float}.get(type(f.default), str), f.default
            fn = click.option("--" + f.name.replace("_", "-"), f.name, type=kind, default=default,
                              show_default=default != "", help=f.metadata["help"])(fn)
        return fn
    return decorate


train_options = config_options(TrainConfig)


def _config(kw) -> TrainConfig:
    return TrainConfig.from_dict(kw)


# The commands that read or write the tracking store: before they run, a server must answer and runs
# this host's dead processes left RUNNING are ended FAILED (reaper.py); all but READ_COMMANDS write, so
# a SQLite store they cannot write (read-only, locked) stops them first.
STORE_COMMANDS = ("train", "evaluate", "sweep", "compare", "registry", "promote", "rescore", "diagnose", "label",
                  "agreement")
READ_COMMANDS = ("compare", "registry")


@click.group(cls=MoltingGroup)
@click.version_option(package_name=DIST_NAME)
@click.pass_context
def cli(ctx):
    """Fine-tune a small chat model into a persona, every run tracked in MLflow.

    Start with: molting train   (SmolLM2-135M on the shipped Cláudio dataset, CPU is fine)
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # the artifacts read here are kilobytes: MLflow's per-download progress bar is only noise
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    interrupt_on_signals()       # a run killed with SIGTERM ends KILLED, not RUNNING; mlflow run's echo is dropped
    if ctx.invoked_subcommand in STORE_COMMANDS:
        user_errors(touch_store)(create=False, write=ctx.invoked_subcommand not in READ_COMMANDS)


@cli.command()
@train_options
@user_errors
def train(**kw):
    """Fine-tune a LoRA adapter and log config, loss curve, steps and adapter to MLflow.

    Pre-flight runs first; with --preflight strict its errors stop the run.

    Example: molting train --model smol --epochs 8

    The user's failed run, reproduced on purpose:
    molting train --epochs 5 --grad-accum 8 --batch-size 1 --system-prompt none
    --chat-template data/templates/gpt2_separators.jinja --preflight warn
    """
    from molting_mlflow.stages.train import train as run_train

    run_train(_config(kw))


@cli.command()
@train_options
@click.option("--template-revision", default=None,
              help="Rehearse without the weights with this revision of the model's chat template "
              "(phi3: original, later; tinyllama: v1.0; data/templates/real_templates.json). "
              "Without weights, phi3 and tinyllama rehearse with today's revision anyway.")
@user_errors
def preflight(template_revision, **kw):
    """Check a training configuration without training: steps, template, system prompt, sizes.

    Exit code 1 when it finds errors. Example: molting preflight --epochs 5 --grad-accum 8 --batch-size 1

    Works without the weights for phi3 and tinyllama (a rehearsal from the template and config,
    planned for a 4 GB card unless --gpu-memory-gib says otherwise): molting preflight --model phi3
    """
    cfg = _config(kw)
    try:
        p = prepare(cfg, rehearse=template_revision is not None, template_revision=template_revision)
    except WeightsNotFound:
        if not has_templates(cfg.model):
            raise
        p = prepare(cfg, rehearse=True)
    click.echo(p.report.to_text())
    if cfg.judge:
        from molting_mlflow.ground.judge import check, judge_of

        click.echo(f"  [info] judge: {cfg.judge}: {check(judge_of(cfg))}")
    if p.report.status == "fail":
        sys.exit(1)


@cli.command()
@config_options(EvalConfig)
@user_errors
def evaluate(**kw):
    """Answer the evaluation questions and score them with the rubric (D1–D5, ref_nll, ref_chrf) in a new MLflow run.

    \b
    Examples:
      molting evaluate --run-id 3f2c…            # a train run's adapter
      molting evaluate --adapter models:/molting-smol@champion
      molting evaluate                           # the bare smol model: the baseline
    """
    from molting_mlflow.stages.evaluate import evaluate as run_eval

    run_eval(EvalConfig(**kw))


@cli.command()
@click.option("--questions", required=True, help="Questions file (JSON list, rubric format).")
@click.option("--responses", required=True, help="Responses (JSONL: id, response, finish_reason?).")
@click.option("--persona", default=None, help="Persona card (YAML). Default: data/persona.yaml.")
@click.option("--log", "log_run", is_flag=True, help="Log the answers as an evaluation run (traces, scores, "
              "eval_results.json), to label, compare and read in the UI like an evaluate run.")
@click.option("--experiment", default=DEFAULT_EXPERIMENT, show_default=True, help="With --log: the MLflow experiment.")
@click.option("--run-name", default="", help="With --log: the run's name (default score-<responses file>).")
@config_options(JudgeSettings)
@user_errors
def score(questions, responses, persona, log_run, experiment, run_name, **judge):
    """Score responses from anywhere (another model, a person) with the rubric; JSON to stdout, or with --log
    an evaluation run.

    \b
    Examples:
      molting score --questions data/eval_questions.json --responses answers.jsonl
      molting score --questions data/eval_questions.json --responses answers.jsonl --log --run-name gpt-4o
    """
    import json

    if log_run:
        from molting_mlflow.ground.judge import judge_of
        from molting_mlflow.stages.evaluate import score_and_log
        from molting_mlflow.store.reaper import touch_store

        touch_store()
        score_and_log(questions, responses, persona or str(DEFAULT_PERSONA), experiment, run_name,
                      judge_of(JudgeSettings(**judge)), log=click.echo)
        return
    if judge["judge"]:
        raise UserError("--judge goes with --log (a judge's reading is logged on the run's answers)")
    qs = load_questions(questions)
    scored = score_responses(qs, load_responses(responses, qs), load_persona(persona or DEFAULT_PERSONA))
    click.echo(json.dumps(scored, ensure_ascii=False, indent=1))


@cli.command()
@click.option("--run-id", required=True, help="The run whose answers were read (a unique prefix will do).")
@click.argument("labels")
@user_errors
def label(run_id, labels):
    """Log a person's reading of a run's answers as human assessments on their traces.

    LABELS is JSON Lines, one answer a line: {"id": "q1", "d1_identity": 2, …, "overall": 6.5, "note": "…"}.

    Example: molting label --run-id 3f2c9a81 my_labels.jsonl; then: molting agreement 3f2c9a81
    """
    from molting_mlflow.stages.label import label as do_label

    do_label(run_id, labels, log=click.echo)


@cli.command()
@click.argument("run_ids", nargs=-1)
@click.option("--experiment", default=None, help="Every scored run of this experiment (default: the project's).")
@user_errors
def agreement(run_ids, experiment):
    """How far the rubric (and a judge) agree with a person's labels: n, Spearman, mean |Δ| and bias per
    dimension and overall, and the largest disagreements; logged on each run as agreement.* metrics.

    Example: molting agreement 3f2c9a81 7b1d0e44
    """
    from molting_mlflow.stages.agreement import agreement as measure

    measure(run_ids, experiment, log=click.echo)


@cli.command()
@click.argument("run_ids", nargs=-1)
@click.option("--experiment", default=None, help="MLflow experiment name. Default: every experiment holding the "
              "project's runs (`Default` too, where `mlflow run` puts them without --experiment-name).")
@click.option("--csv", "csv_path", default=None, help="Also write the table to this CSV file.")
@click.option("--full", is_flag=True, help="Every column: status, stage, model, pre-flight, ref_nll, ref_chrf and "
              "the resolved train.* params that differ.")
@click.option("--all-columns", is_flag=True, help="The full table with every config column, not only those that differ.")
@user_errors
def compare(run_ids, experiment, csv_path, full, all_columns):
    """The runs side by side, best score first: id, name, score, D1–D5, steps, final loss and the
    settings that differ between them. RUN_IDS (unique prefixes, e.g. the 8 characters shown) lists those only.

    Example: molting compare 3f2c9a81 7b1d0e44 --full
    """
    from molting_mlflow.stages.compare import compare_runs, rubric_versions

    table = compare_runs(experiment, all_columns, run_ids, full)
    versions = rubric_versions(table)
    where = sorted(table["experiment"].unique()) if len(table) else []
    if len(versions) > 1:
        click.echo(f"note: these runs were scored under rubric versions {', '.join(versions)}, whose scores are not "
                   f"comparable; each version is ranked on its own. Bring them to one: "
                   + "; ".join(f"molting rescore --experiment {e}" for e in where), err=True)
    if csv_path:
        try:
            table.to_csv(csv_path, index=False)
        except OSError as e:     # no such folder, a directory, permission denied
            raise UserError(f"--csv {unwritable(csv_path, e)}") from None
    import mlflow
    import pandas as pd

    if not len(table):
        click.echo(f"no runs in experiment '{experiment}'" if experiment else f"no molting runs in {mlflow.get_tracking_uri()}")
        return
    hidden = [c for c, hide in (("experiment", len(where) == 1), ("rubric", len(versions) < 2)) if hide]
    shown = table if full or all_columns else table.drop(columns=hidden)
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.max_colwidth", 40):
        steps = {c: (lambda v: "–" if pd.isna(v) else str(int(v))) for c in ("steps", "optimizer_steps")}
        click.echo(shown.to_string(index=False, na_rep="–", formatters={k: f for k, f in steps.items() if k in shown}))
    click.echo(f"{len(table)} run(s) in experiment(s) {', '.join(repr(e) for e in where)}"
               + ("" if full or all_columns else "; molting compare --full for every column"))


def search_options(fn):
    """One option per row of sweep_config.SEARCH_SPACE (its help and default): adding a row adds the option.
    Left out, a row takes the preset's range where it has one (Preset.sweep_search), else the table's."""
    for row in reversed(SEARCH_SPACE):
        own = "; ".join(f"{p.name}: {p.sweep_search[row.name]}" for p in PRESETS.values() if row.name in p.sweep_search)
        default = (row.default or "not searched") + (f" ({own})" if own else "")
        fn = click.option("--" + row.name.replace("_", "-"), row.name, default="",
                          help=f"{row.help} [default: {default}]")(fn)
    return fn


@cli.command()
@config_options(SweepConfig, skip=("search",))
@search_options
@click.option("--search", "search_text", default="", help="The searched ranges as one string, name=values;… "
              "(the MLproject's form), e.g. 'lr=1e-4,1e-3;lora_r=8,16'; it overrides the options above.")
@user_errors
def sweep(search_text, **kw):
    """Search the sweep's table (grad_accum, epochs, lr; lora_r and models on request) with Optuna;
    every trial a nested MLflow run.

    Example: molting sweep --n-trials 12 --stop-at-target true --lora-r 8,16,32
    """
    from molting_mlflow.stages.sweep import sweep as run_sweep

    search = {row.name: kw.pop(row.name) for row in SEARCH_SPACE}
    search.update(parse_search(search_text))
    run_sweep(SweepConfig(search={k: v for k, v in search.items() if v}, **kw))


@cli.command(name="sweep-worker", hidden=True)
@click.option("--config", required=True)
@click.option("--parent-run-id", required=True)
@click.option("--name", default="w0")
@click.option("--gpu", default="")
@click.option("--slot", default=0, type=int)
@click.option("--alone", is_flag=True, help="No other trial shares this worker's GPU.")
@user_errors
def sweep_worker(config, parent_run_id, name, gpu, slot, alone):
    """One worker of a sweep (started by `molting sweep --workers N`)."""
    import json

    from molting_mlflow.stages.sweep import work

    work(SweepConfig(**json.loads(config)), parent_run_id, name, gpu,
         float(os.environ.get("MOLTING_SWEEP_T0", "0")) or None, slot, alone)


@cli.command()
@click.option("--name", default="", help="Registered model name. Default: every molting-<preset> registered "
              "(a sweep of tiny-random registers molting-tiny-random).")
@user_errors
def registry(name):
    """List a registered model's versions with their aliases and scores.

    Example: molting registry --name molting-smol
    """
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from molting_mlflow.stages.registry import list_versions, registered_models

    if not name:
        names = registered_models()
        if not names:
            raise UserError("no molting-<preset> model is registered yet; a sweep registers its best trial "
                            "(molting sweep --model <preset>)")
        for n in names:
            click.echo(f"{n}:\n" + pd.DataFrame(list_versions(n)).to_string(index=False))
        return
    try:
        rows = list_versions(name)
    except MlflowException as e:   # only MLflow's "no such model" means a sweep has not registered it; the rest go on up
        if not missing_in_store(e):
            raise
        raise UserError(f"no registered model '{name}' ({first_line(e, 120)}); run a sweep first") from None
    click.echo(pd.DataFrame(rows).to_string(index=False) if rows else f"{name}: no versions")


@cli.command()
@click.argument("name")
@click.argument("version")
@click.option("--alias", default=CHAMPION, show_default=True)
@user_errors
def promote(name, version, alias):
    """Point an alias (default champion) at a version by hand.

    Example: molting promote molting-smol 3 --alias champion
    """
    from mlflow.exceptions import MlflowException

    from molting_mlflow.stages.registry import promote as do_promote

    try:
        do_promote(name, version, alias)
    except MlflowException as e:   # a model or version that is not there; a 403 or an outage goes on up (_world_error)
        if not missing_in_store(e):
            raise
        raise UserError(f"cannot set {name}@{alias} -> v{version}: {first_line(e, 200)}; see the versions: "
                        f"molting registry --name {name}") from None
    click.echo(f"{name}@{alias} -> version {version}")


@cli.command()
@click.option("--model", "ref", default="models:/molting-smol@champion", show_default=True,
              help="models:/<name>@<alias>, runs:/<run>/adapter or an adapter folder.")
@click.option("--max-new-tokens", default=128, show_default=True,
              type=click.IntRange(1, MAX_NEW_TOKENS))
@click.argument("question", required=False)
@user_errors
def chat(ref, max_new_tokens, question):
    """Ask the persona a question (or chat in a loop with no QUESTION; empty line ends).

    Example: molting chat --model models:/molting-smol@champion "Quem é você?"
    """
    set_threads()
    if ref.startswith("models:/"):
        import mlflow.pyfunc
        from mlflow.exceptions import MlflowException

        try:
            model = mlflow.pyfunc.load_model(ref)
        except MlflowException as e:   # no such model, version or alias; a 403, an outage or a damaged adapter go on up
            if not missing_in_store(e):
                raise
            raise UserError(f"cannot load {ref}: {first_line(e, 200)}; see the versions: molting registry") \
                from None

        persona = model.unwrap_python_model().persona

        def answer(q):
            return model.predict([q], params={"max_new_tokens": max_new_tokens})[0]
    else:
        from molting_mlflow.store.tracking import resolve_run_uri

        adapter = resolve_adapter(resolve_run_uri(ref))
        persona = adapter_persona(adapter)
        m, tok, meta, _ = load_adapter_model(adapter)
        system_prompt, fold = adapter_prompt(meta, tok)

        def answer(q):
            recs, _ = generate(m, tok, [Question("0", q, False, [], [], [])], system_prompt, max_new_tokens, fold=fold)
            return recs[0]["response"]
    if question:
        click.echo(answer(question))
        return

    # the labels: the persona card's name, the word for "you" in its language
    while True:
        try:
            q = click.prompt(persona.languages.get(persona.language).you, default="", show_default=False)
        except click.Abort:      # Ctrl-D or the end of piped input: the end of the conversation, like an empty line
            click.echo()
            break
        if not q.strip():
            break
        click.echo(f"{persona.name.lower()}: {answer(q)}")


@cli.command()
@click.argument("run_ids", nargs=-1)
@click.option("--experiment", default=None, help="Rescore every scored run of this experiment (with no RUN_IDS).")
@click.option("--persona", default=None, help="Persona card to score with (default: the one each run logged).")
@click.option("--questions", default=None, help="Questions file (default: the one each run logged).")
@config_options(JudgeSettings)
@user_errors
def rescore(run_ids, experiment, persona, questions, **judge):
    """Score runs again from their logged answers under the current rubric; no model is loaded.

    Updates each run's D1–D5 and score metrics, its eval_results.json table and its rubric version.

    \b
    Examples:
      molting rescore 3f2c9a81 7b1d0e44          # these runs
      molting rescore --experiment molting       # every scored run of the experiment
      molting rescore 3f2c9a81 --persona data/persona.yaml   # a run whose own card is gone or older
    """
    from molting_mlflow.stages.rescore import rescore as run_rescore

    if persona:      # the files the user names are checked once, not reported as a skip of every run
        load_persona(persona)
    if questions:
        load_questions(questions)
    from molting_mlflow.ground.judge import judge_of

    out = run_rescore(list(run_ids), experiment, log=click.echo, persona=persona, questions=questions,
                      judge=judge_of(JudgeSettings(**judge)))
    if out and all(r.skipped for r in out):
        sys.exit(1)


@cli.command()
@click.argument("run_id")
@click.option("--vs", default="", help="Another run to explain the difference against (e.g. the user's original).")
@click.option("--out", default="", help="Also write the report to this file.")
@user_errors
def diagnose(run_id, vs, out):
    """Explain a run's score from what it logged: convergence, format, identity, root causes.

    The report is printed and logged on the run as diagnosis.md.

    Example: molting diagnose 3f2c9a… --vs 81be04…
    """
    from molting_mlflow.stages.diagnose import diagnose as run_diagnose

    run_diagnose(run_id, vs or None, out or None, log=click.echo)


def main(argv=None, prog_name: str = "molting"):
    """Run a command and end the process as soon as its exit handlers have run (MLflow's flush of queued
    metrics and traces among them): the interpreter's teardown of torch, transformers and mlflow after that
    did nothing but cost 1–2 s a process (docs/performance.md)."""
    try:
        cli.main(args=argv, prog_name=prog_name)
        code = 0
    except SystemExit as e:       # click ends every command so: its code, or its message and 1
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    _exit(code)


def _exit(code: int) -> None:
    import atexit

    atexit._run_exitfuncs()          # what a normal exit runs first; os._exit then skips the teardown
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
