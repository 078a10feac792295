"""What a user sees in the MLflow UI, in a real browser: Playwright drives Debian's Chromium (launched
by its path: Playwright's own browser download cannot work offline) against `mlflow server`, which
the test starts on 127.0.0.1. The store is filled through that server by the project's own stages:
two tiny-random train runs, a two-trial sweep that registers its best adapter, and `molting promote`.

Checked on the rendered pages:
- the saved view of the runs table shows score and D1–D5 for each run, best score first, and all of them
  in a 1400-px window beside the assistant panel MLflow opens on a first visit;
- comparing two runs shows their params side by side and their loss curves, one point per optimizer step;
- a run's evaluation view (its Traces tab) shows the 8 questions, the answers and each dimension's reason,
  and side by side against another run; its reasons column (the trace tag molting.reasons) shows every
  answer's reasons without opening the trace, and ui_view.traces_url opens one answer's trace;
- a person's reading added with the trace drawer's "Add feedback" form is saved as a HUMAN assessment, and
  `molting agreement` pairs exactly it with the rubric's points for that answer;
- a run's System metrics tab has MLflow's CPU and memory charts;
- the sweep's parent run lists its trials as child runs;
- the registry page shows the adapter's version with its aliases and score tags;
- no page asks for anything outside 127.0.0.1.
A run logged without scores fails the runs-table check (test_a_run_without_scores_fails_the_check).

Run as a script, the same code fills a fresh store and writes the README's screenshots:
    python tests/test_ui.py --out docs [--smol-baseline]
(--smol-baseline adds an evaluation of the bare smol model: real answers in the evaluation view.)
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import use_store

CHROMIUM = os.environ.get("MOLTING_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1600, "height": 1000}
WAIT_MS = 30_000               # a page's first render on a busy 2-core machine
ML = "workflowType=machine_learning"


# ---------------------------------------------------------------------------------------------
# The store: filled by the project's own stages, through the tracking server
# ---------------------------------------------------------------------------------------------

@dataclass
class Store:
    uri: str
    experiment_id: str = ""
    runs: list = field(default_factory=list)          # the two train runs (ids)
    parent: str = ""                                  # the sweep's parent run
    trials: list = field(default_factory=list)        # its child runs (ids)
    model: str = ""                                   # registered model name
    version: str = ""
    baseline: str = ""                                # --smol-baseline: the bare smol evaluation run


def fill_store(uri: str, smol_baseline: bool = False, log=lambda *a: None) -> Store:
    import mlflow
    from click.testing import CliRunner

    from molting_mlflow.cli import cli
    from molting_mlflow.ground.config import TrainConfig
    from molting_mlflow.ground.sweep_config import SweepConfig
    from molting_mlflow.stages.sweep import sweep
    from molting_mlflow.stages.train import train

    mlflow.set_tracking_uri(uri)
    store = Store(uri)
    # tiny-random: batch 8 → 10 optimizer steps an epoch; two learning rates, two lengths
    for epochs, lr in ((2, 2e-3), (1, 5e-4)):
        r = train(TrainConfig(model="tiny-random", epochs=epochs, lr=lr, min_steps=0, eval_max_new_tokens=16),
                  log=log)
        store.runs.append(r.run_id)
    out = sweep(SweepConfig(model="tiny-random", n_trials=2, search={"epochs": "1,2", "grad_accum": "1,2"}, min_steps=0,
                            enqueue_user=False, seed=7), log=log)
    store.parent, store.version = out["parent_run_id"], out["version"]
    store.model = "molting-tiny-random"
    res = CliRunner().invoke(cli, ["promote", store.model, store.version, "--alias", "champion"])
    assert res.exit_code == 0, res.output
    client = mlflow.MlflowClient()
    store.experiment_id = client.get_run(store.parent).info.experiment_id
    store.trials = [r.info.run_id for r in client.search_runs(
        [store.experiment_id], f"tags.`mlflow.parentRunId` = '{store.parent}'")]
    if smol_baseline:
        from molting_mlflow.ground.config import EvalConfig
        from molting_mlflow.stages.evaluate import evaluate

        evaluate(EvalConfig(model="smol"), log=log)
        store.baseline = client.search_runs([store.experiment_id], "tags.`molting.baseline` = 'true'")[0].info.run_id
    return store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server(workdir: Path):
    """`mlflow server` on 127.0.0.1 with a SQLite store and proxied artifacts in workdir; its URL."""
    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(workdir / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
                             "--artifacts-destination", str(workdir / "mlartifacts")],
                            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if urllib.request.urlopen(url + "/health", timeout=2).read() == b"OK":
                    break
            except OSError:
                time.sleep(0.5)
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(workdir / 'server.log').read_text()[-2000:]}")
        else:
            raise RuntimeError("mlflow server did not answer /health in 120 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextmanager
def chromium():
    """A browser context, and the list of every request it made outside 127.0.0.1."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"no Chromium at {CHROMIUM}: run tests/install_browser.sh (Debian: apt-get install "
                           "chromium), or set MOLTING_CHROMIUM to a Chromium binary")
    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        ctx = new_context(browser, outside, VIEWPORT)
        # the assistant side panel opens itself on a first visit; it only takes room here
        # (check_runs_table_beside_the_assistant opens the table as a new user gets it)
        ctx.add_init_script("localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
                            "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');")
        try:
            yield ctx, outside
        finally:
            browser.close()


def new_context(browser, outside: list, viewport: dict):
    """A fresh browser profile (no localStorage), each request outside 127.0.0.1 appended to `outside`."""
    ctx = browser.new_context(viewport=viewport)
    ctx.set_default_timeout(WAIT_MS)
    ctx.on("request", lambda r: outside.append(r.url)
           if not r.url.startswith(("http://127.0.0.1", "data:", "blob:")) else None)
    return ctx


# ---------------------------------------------------------------------------------------------
# Pages: each check opens a page, asserts what is rendered, and can save a screenshot
# ---------------------------------------------------------------------------------------------

def open_page(ctx, url: str, ready: str):
    """Open url and wait until the text `ready` is rendered."""
    page = ctx.new_page()
    page.goto(url)
    page.get_by_text(ready, exact=True).first.wait_for()
    return page


def metric_link(page, name: str):
    """A metric's link on the compare page. Its metrics table renders only the rows in view (37 metrics
    here, alphabetical): scroll the last rendered one into view until `name`'s row is rendered."""
    link = page.get_by_role("link", name=name, exact=True)
    for _ in range(40):
        if link.count():
            return link.first
        page.locator("a[href^='#/metric?']").last.scroll_into_view_if_needed()
        page.mouse.wheel(0, 300)
        time.sleep(0.25)
    return link.first            # not rendered: the click that follows fails with playwright's message


def shot(page, shots: Path | None, name: str) -> None:
    if shots is not None:
        time.sleep(1.0)        # let charts finish their transitions
        page.screenshot(path=str(shots / name))


def grid_rows(page) -> list[dict]:
    """The runs table as rendered: one dict per row (col-id → text), in screen order (ag-grid keeps the
    pinned name column and the others in separate containers; row-index ties them)."""
    rows = page.evaluate("""() => {
        const rows = {};
        document.querySelectorAll('.ag-row[row-index]').forEach(r => {
            const i = Number(r.getAttribute('row-index'));
            rows[i] = rows[i] || {};
            r.querySelectorAll('[col-id]').forEach(c => { rows[i][c.getAttribute('col-id')] = c.innerText.trim(); });
        });
        return Object.keys(rows).map(Number).sort((a, b) => a - b).map(i => rows[i]);
    }""")
    return rows


def number(text: str):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def check_runs_table(ctx, base: str, experiment_id: str, run_ids: list[str], shots: Path | None = None) -> None:
    """The project's saved view: a score and D1–D5 cell for each run, equal to its metrics (at most 3
    decimals), best first."""
    import mlflow

    from molting_mlflow.ground.rubric import DIMENSIONS
    from molting_mlflow.store.ui_view import runs_url

    page = open_page(ctx, runs_url(base, experiment_id), "Run Name")
    page.locator(".ag-row[row-index]").first.wait_for()
    time.sleep(1.0)            # rows and metric columns arrive with one response, drawn in two passes
    rows = grid_rows(page)
    # the name cell reads "#<colour>\n<run name>"
    by_name = {r.get("attributes.`Run Name`", "").splitlines()[-1:][0] if r.get("attributes.`Run Name`") else "": r
               for r in rows}
    client = mlflow.MlflowClient()
    for run_id in run_ids:
        run = client.get_run(run_id)
        row = by_name.get(run.info.run_name)
        assert row is not None, f"run {run.info.run_name} is not in the runs table: {sorted(by_name)}"
        for key in ("score", *DIMENSIONS):
            cell = row.get(f"metrics.`{key}`")
            shown = number(cell)
            assert shown is not None, f"run {run.info.run_name} shows no {key} (cell {cell!r})"
            # at most 3 decimals, no float noise (9.333, not 9.333333333333334): rubric.SCORE_DECIMALS rounds
            # the scores where they are logged
            assert re.fullmatch(r"-?\d+(\.\d{1,3})?", cell), f"{run.info.run_name}'s {key} shows {cell!r}"
            assert shown == pytest.approx(run.data.metrics[key], abs=0.01), (run.info.run_name, key, shown)
    scores = [number(r.get("metrics.`score`")) for r in rows]
    shown = [s for s in scores if s is not None]
    assert shown == sorted(shown, reverse=True), f"not best score first: {scores}"
    assert all(s is None for s in scores[len(shown):]), f"unscored runs must come last: {scores}"
    shot(page, shots, "ui_runs_table.png")
    page.close()


def check_runs_table_beside_the_assistant(ctx, outside: list, base: str, experiment_id: str) -> None:
    """A new user's first visit in a 1400×900 window: MLflow's assistant panel opens itself beside the
    table, and the saved view's score and D1–D5 columns (headers and cells) are all inside the table's
    visible width. ag-grid draws no column outside that width, so a column missing from the page is out of
    view too."""
    from molting_mlflow.store.ui_view import runs_url, score_columns

    fresh = new_context(ctx.browser, outside, {"width": 1400, "height": 900})
    try:
        page = open_page(fresh, runs_url(base, experiment_id), "Run Name")
        page.get_by_placeholder("Ask a question...").wait_for()          # the assistant's panel is open
        page.locator(".ag-row[row-index]").first.wait_for()
        seen = page.evaluate("""cols => {
            const v = document.querySelector('.ag-center-cols-viewport');
            const r = v.getBoundingClientRect();
            const box = e => { const b = e.getBoundingClientRect(); return [b.left, b.right]; };
            return {left: r.left, right: r.left + v.clientWidth, cols: Object.fromEntries(cols.map(c => [c, {
                header: Array.from(document.querySelectorAll(`.ag-header-cell[col-id="${c}"]`)).map(box),
                cells: Array.from(document.querySelectorAll(`.ag-row [col-id="${c}"]`)).map(box)}]))};
        }""", score_columns())
        for col, boxes in seen["cols"].items():
            assert boxes["header"] and boxes["cells"], f"{col} is not drawn: out of view at 1400 px ({seen})"
            for left, right in boxes["header"] + boxes["cells"]:
                assert seen["left"] - 1 <= left and right <= seen["right"] + 1, \
                    f"{col} at {left:.0f}–{right:.0f} px, the table shows {seen['left']:.0f}–{seen['right']:.0f}"
    finally:
        fresh.close()


def check_compare(ctx, base: str, experiment_id: str, a: str, b: str, shots: Path | None = None) -> None:
    """MLflow's compare page: the two runs' params side by side; its `loss` link: both loss curves, with
    one point per optimizer step (x = 1 … optimizer_steps)."""
    import mlflow

    client = mlflow.MlflowClient()
    ra, rb = client.get_run(a), client.get_run(b)
    page = open_page(ctx, f'{base}/#/compare-runs?runs=["{a}","{b}"]&experiments=["{experiment_id}"]&{ML}',
                     "Parameters")
    switch = page.get_by_role("switch").first             # Parameters: "Show diff only"
    switch.click()
    for key in ("train.lr", "train.epochs", "train.optimizer_steps"):
        row = page.locator("tr").filter(has=page.get_by_text(key, exact=True)).first
        cells = [c.strip() for c in row.locator("td").all_inner_texts()]
        assert ra.data.params[key] in cells and rb.data.params[key] in cells, (key, cells)
    page.get_by_text("Parameters", exact=True).first.evaluate("e => e.scrollIntoView({block: 'start'})")
    shot(page, shots, "ui_compare_params.png")
    metric_link(page, "loss").click()
    page.locator(".js-plotly-plot").first.wait_for()
    names = {ra.info.run_name, rb.info.run_name}
    curves: list = []
    for _ in range(120):       # the plot is drawn first, then filled as each run's history arrives
        curves = page.evaluate("() => { const p = document.querySelector('.js-plotly-plot');"
                               " return Array.from((p && p.data) || []).map(t => ({name: t.name, "
                               "x: Array.from(t.x || [])})) }")
        if names <= {c["name"] for c in curves if c["x"]}:
            break
        time.sleep(0.5)
    for run in (ra, rb):
        steps = int(run.data.params["train.optimizer_steps"])
        xs = [c["x"] for c in curves if c["name"] == run.info.run_name]
        assert xs, f"no loss curve for {run.info.run_name} on {page.url}: {[c['name'] for c in curves]}"
        assert xs[0] == list(range(1, steps + 1)), (run.info.run_name, xs[0])
    shot(page, shots, "ui_compare_loss.png")
    page.close()


def expected_reasons(run_id: str) -> dict[str, dict]:
    """What the run logged, per question: its answer, and each dimension's rationale, from
    eval_results.json (the table log_scores writes) split by reason code."""
    import mlflow

    from molting_mlflow.ground.rubric import DIMENSIONS
    from molting_mlflow.store.eval_view import dimension_feedback

    table = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/eval_results.json"))
    out = {}
    for row in (dict(zip(table["columns"], r)) for r in table["data"]):
        result = {**{d: row[d] for d in DIMENSIONS}, "reasons": row["reasons"].split("; ") if row["reasons"] else [],
                  "codes": row["codes"].split()}
        out[row["question"]] = {"response": row["response"],
                                **{d: dimension_feedback(result, d).rationale for d in DIMENSIONS}}
    return out


def request_text(question: str) -> str:
    """How the evaluation table prints a trace's request (its inputs, as JSON)."""
    return f'{{ "question": {json.dumps(question, ensure_ascii=False)} }}'


def _words(text: str) -> str:
    return " ".join(re.findall(r"[^\W\d_]+", text))


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def check_eval_view(ctx, base: str, experiment_id: str, run_id: str, other: str, shots: Path | None = None) -> None:
    """The run's Traces tab: one row per question with its answer; each question's trace shows the
    question, the answer and each dimension's points with the rubric's reason; then side by side
    against `other`."""
    from molting_mlflow.ground.rubric import DIMENSIONS

    want = expected_reasons(run_id)
    assert len(want) == 8
    page = open_page(ctx, f"{base}/#/experiments/{experiment_id}/runs/{run_id}/traces?{ML}", "d1_identity")
    for q in want:
        page.get_by_text(request_text(q), exact=True).first.wait_for()
    shot(page, shots, "ui_eval_table.png")
    # open the first question's trace, then walk the rest with the drawer's "Next trace", as a user would
    cells = [page.get_by_text(request_text(q), exact=True).first for q in want]
    min(cells, key=lambda c: c.bounding_box()["y"]).click()          # the table's first row
    drawer = page.get_by_role("dialog")
    seen = []
    for i in range(len(want)):
        inputs = drawer.get_by_role("tabpanel").first
        inputs.wait_for()
        q = next((q for q in want if q in inputs.inner_text() and q not in seen), None)
        assert q is not None, f"trace {i + 1}: no question of the run in {inputs.inner_text()[:200]!r}"
        seen.append(q)
        w = want[q]
        if _words(w["response"]):    # the UI renders answers as markdown: compare their words
            assert _words(w["response"]) in _words(inputs.inner_text()), (q, w["response"][:80])
        if not drawer.get_by_text("Feedback (5)").count():
            drawer.get_by_role("button", name="Assess trace").click()
        toggles = drawer.locator('[data-component-id="shared.model-trace-explorer.toggle-assessment-expanded"]')
        toggles.first.wait_for()
        for t in toggles.all():
            t.click()
        for dim in DIMENSIONS:
            card = drawer.locator("div").filter(has=page.get_by_text(dim, exact=True)).filter(
                has_text="Rationale").last
            assert _squash(w[dim]) in _squash(card.inner_text()), (q, dim, w[dim], card.inner_text()[:300])
        if i == 0:
            shot(page, shots, "ui_eval_reasons.png")
        if i + 1 < len(want):
            drawer.get_by_role("button", name="Next trace").click()
            drawer.get_by_role("tabpanel").filter(has_text=q).wait_for(state="detached")
    assert sorted(seen) == sorted(want)
    page.close()
    page = open_page(ctx, f"{base}/#/experiments/{experiment_id}/runs/{run_id}/traces?{ML}&compareToRunUuid={other}",
                     "compare to")
    page.get_by_text(request_text(next(iter(want))), exact=True).first.wait_for()
    import mlflow

    names = [mlflow.MlflowClient().get_run(r).info.run_name for r in (run_id, other)]
    for name in names:
        assert page.get_by_text(name, exact=True).count(), f"{name} is not on the side-by-side page"
    # each question once, with two traces under it (one a run)
    assert page.locator("text=/^tr-/").count() >= 2 * len(want)
    shot(page, shots, "ui_eval_side_by_side.png")
    page.close()


def check_reasons_without_assess(ctx, base: str, experiment_id: str, run_id: str) -> None:
    """The rubric's reasons, without each trace's Assess: the Traces tab's column of the trace tag
    molting.reasons (ticked once in Columns) shows every answer's reasons in its row, and traces_url with
    a trace id opens that answer's trace."""
    import mlflow

    from molting_mlflow.ground.tags import QUESTION_ID, REASONS
    from molting_mlflow.store.assessments import question_traces
    from molting_mlflow.store.ui_view import traces_url

    table = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/eval_results.json"))
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    traces = question_traces(run_id)
    page = open_page(ctx, traces_url(base, experiment_id, run_id), "d1_identity")
    page.get_by_role("button", name=re.compile(r"^Columns")).click()
    page.get_by_role("option").filter(has_text=REASONS).click()
    page.keyboard.press("Escape")
    for row in rows:
        want = row["reasons"] or "full points"
        assert traces[row["id"]].info.tags.get(REASONS) == want, (row["id"], traces[row["id"]].info.tags)
        line = page.get_by_role("row").filter(has=page.get_by_text(request_text(row["question"]), exact=True))
        assert line.get_by_text(want, exact=True).count() == 1, (row["id"], want, line.first.inner_text()[:400])
    page.close()
    row = rows[-1]
    trace_id = traces[row["id"]].info.trace_id
    page = open_page(ctx, traces_url(base, experiment_id, run_id, trace_id), "d1_identity")
    drawer = page.get_by_role("dialog")
    drawer.get_by_role("tabpanel").filter(has_text=row["question"]).wait_for()
    # the drawer's header names the trace by its id's first 8 hex digits
    assert drawer.get_by_role("button", name=trace_id.removeprefix("tr-")[:8], exact=True).count() == 1, trace_id
    assert traces[row["id"]].info.tags[QUESTION_ID] == row["id"]
    page.close()


HUMAN_NOTE = "read by a person in the MLflow UI"


def check_human_assessment(ctx, base: str, experiment_id: str, run_id: str, shots: Path | None = None) -> None:
    """A person's reading added with the trace drawer's own "Add feedback" form (d5_quality, 1 point, a
    rationale) is saved with the source HUMAN, and `molting agreement` pairs exactly it with the rubric's
    points for that answer."""
    import mlflow
    from click.testing import CliRunner

    from molting_mlflow.cli import cli
    from molting_mlflow.ground.tags import QUESTION_ID
    from molting_mlflow.store.ui_view import traces_url

    dim, value = "d5_quality", 1.0
    client = mlflow.MlflowClient()
    table = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/eval_results.json"))
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    row = rows[0]
    page = open_page(ctx, f"{base}/#/experiments/{experiment_id}/runs/{run_id}/traces?{ML}", "d1_identity")
    page.get_by_text(request_text(row["question"]), exact=True).first.click()
    page.wait_for_url(re.compile(r"selectedEvaluationId=tr-"))
    trace_id = re.search(r"selectedEvaluationId=(tr-[0-9a-f]+)", page.url).group(1)
    assert client.get_trace(trace_id).info.tags.get(QUESTION_ID) == row["id"], (trace_id, row["id"])
    drawer = page.get_by_role("dialog")
    drawer.get_by_role("tabpanel").first.wait_for()
    if not drawer.get_by_role("button", name="Add feedback").count():
        drawer.get_by_role("button", name="Assess trace").click()
    drawer.get_by_role("button", name="Add feedback").click()
    form = drawer.locator("div").filter(has=page.get_by_role("button", name="Create", exact=True)).filter(
        has_text="Data Type").last
    create = form.get_by_role("button", name="Create", exact=True)
    form.get_by_placeholder("Enter a feedback name").fill(dim)
    page.get_by_role("option", name=dim, exact=True).click()
    form.get_by_role("combobox", name="Data Type").click()
    page.get_by_role("option", name="Number", exact=True).click()
    form.get_by_text("Value", exact=True).locator("xpath=following::input[1]").fill(f"{value:g}")
    form.get_by_text("Rationale", exact=True).locator("xpath=following::textarea[1]").fill(HUMAN_NOTE)
    create.click()
    create.wait_for(state="detached")            # the form closes once the server has saved it
    assessments = client.get_trace(trace_id).info.assessments
    mine = [a for a in assessments if a.name == dim and a.source and a.source.source_type == "HUMAN"]
    assert len(mine) == 1, f"no human {dim} on {trace_id} after the form's Create: {assessments}"
    assert mine[0].value == pytest.approx(value) and mine[0].rationale == HUMAN_NOTE, mine[0]
    # the saved reading under the rubric's in the dimension's card (drawn once the pane has re-read the
    # trace), both opened
    toggle = '[data-component-id="shared.model-trace-explorer.toggle-assessment-expanded"]'
    card = drawer.locator("div").filter(has=page.get_by_text(dim, exact=True)).filter(has=page.locator(toggle)).last
    card.locator(toggle).nth(len([a for a in assessments if a.name == dim]) - 1).wait_for()
    for t in card.locator(toggle).all():
        t.click()
    card.get_by_text(HUMAN_NOTE, exact=True).wait_for()
    shot(page, shots, "ui_human_assessment.png")
    page.close()

    res = CliRunner().invoke(cli, ["agreement", run_id])
    assert res.exit_code == 0, res.output
    assert "no human labels" not in res.output, res.output
    rubric = float(row[dim])
    metrics = client.get_run(run_id).data.metrics
    assert metrics.get(f"agreement.rubric.{dim}.n") == 1, {k: v for k, v in metrics.items() if "agreement" in k}
    assert metrics[f"agreement.rubric.{dim}.bias"] == pytest.approx(rubric - value)
    assert metrics[f"agreement.rubric.{dim}.mean_abs"] == pytest.approx(abs(rubric - value))
    labelled = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/agreement.json"))["answers"]
    assert [(a["id"], a["human"], a["scores"]["rubric"][dim]) for a in labelled] == [(row["id"], {dim: value}, rubric)]
    assert re.search(rf"D5 quality\s+1\s+–\s+{abs(rubric - value):.3f}\s+{rubric - value:+.3f}", res.output), res.output
    assert traces_url(base, experiment_id, run_id, trace_id) in res.output, res.output      # the answer's trace


def check_system_metrics(ctx, base: str, experiment_id: str, run_id: str) -> None:
    page = open_page(ctx, f"{base}/#/experiments/{experiment_id}/runs/{run_id}/system-metrics?{ML}",
                     "cpu_utilization_percentage")
    assert page.get_by_text("system_memory_usage_megabytes", exact=True).count()
    page.close()


def check_sweep_parent(ctx, base: str, experiment_id: str, parent: str, trials: list[str]) -> None:
    import mlflow

    page = open_page(ctx, f"{base}/#/experiments/{experiment_id}/runs/{parent}?{ML}", "Child runs")
    section = page.get_by_text("Child runs", exact=True).first.locator("xpath=ancestor::*[.//a][1]")
    names = {mlflow.MlflowClient().get_run(t).info.run_name for t in trials}
    for _ in range(60):         # the section renders first ("Child runs loading"), then fills in
        text = section.inner_text()
        if all(n in text for n in names):
            break
        time.sleep(0.5)
    assert len(trials) == 2 and all(n in text for n in names), (names, text[:500])
    page.close()


def check_registry(ctx, base: str, model: str, version: str, shots: Path | None = None) -> None:
    import mlflow

    mv = mlflow.MlflowClient().get_model_version(model, version)
    page = open_page(ctx, f"{base}/#/models/{model}?{ML}", model)
    row = page.get_by_role("row").filter(has=page.get_by_text(f"Version {version}", exact=True)).first
    text = _squash(row.inner_text())
    for alias in ("candidate", "champion"):
        assert alias in mv.aliases and re.search(rf"@\s*{alias}\b", text), (alias, text)
    for tag in ("score", "d1_identity", "d5_quality", "base_model"):
        assert re.search(rf"\b{tag}\s*:\s*{re.escape(mv.tags[tag])}", text), (tag, mv.tags[tag], text)
    shot(page, shots, "ui_registry.png")
    page.close()


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """One server, one store filled through it, one browser, shared by the checks below."""
    import mlflow

    work = tmp_path_factory.mktemp("ui")
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL")}
    old_cwd = Path.cwd()
    os.chdir(work)
    # tiny-random runs last seconds: sample system metrics every second so each run gets some
    os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "1"
    try:
        with mlflow_server(work) as base:
            os.environ["MLFLOW_TRACKING_URI"] = base
            store = fill_store(base)
            with chromium() as (ctx, outside):
                yield base, store, ctx, outside
    finally:
        os.chdir(old_cwd)
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"] or "")


@pytest.fixture
def at(ui, monkeypatch):
    """Point the client at the module's server for this test (conftest gives every test its own store)."""
    use_store(monkeypatch, ui[0])
    return ui


def test_runs_table_shows_scores_best_first(at):
    base, store, ctx, _ = at
    check_runs_table(ctx, base, store.experiment_id, store.runs + store.trials)


def test_runs_table_fits_beside_the_assistant_at_1400_px(at):
    base, store, ctx, outside = at
    check_runs_table_beside_the_assistant(ctx, outside, base, store.experiment_id)


def test_compare_shows_params_and_loss_curves(at):
    base, store, ctx, _ = at
    check_compare(ctx, base, store.experiment_id, *store.runs)


def test_evaluation_view_shows_questions_answers_and_reasons(at):
    base, store, ctx, _ = at
    check_eval_view(ctx, base, store.experiment_id, store.runs[0], store.runs[1])


def test_reasons_in_a_column_and_a_link_to_each_trace(at):
    base, store, ctx, _ = at
    check_reasons_without_assess(ctx, base, store.experiment_id, store.runs[0])


def test_a_persons_reading_added_in_the_ui_counts_in_agreement(at):
    """On the other train run: the first one's traces stay as check_eval_view reads them (5 feedbacks)."""
    base, store, ctx, _ = at
    check_human_assessment(ctx, base, store.experiment_id, store.runs[1])


def test_the_value_types_the_ui_saves_read_as_points():
    """The trace drawer's form saves a Number as a float, a String as text ("1") and leaves a new name on
    Boolean (True): points are the number, the text's number, and nothing for a yes/no."""
    from molting_mlflow.store.assessments import points

    assert points(1.0) == 1.0 and points(2) == 2.0 and points(" 1.5 ") == 1.5
    assert points(True) is None and points(False) is None
    assert points("yes") is None and points("nan") is None and points(None) is None and points({"a": 1}) is None


def test_system_metrics_tab(at):
    base, store, ctx, _ = at
    check_system_metrics(ctx, base, store.experiment_id, store.runs[0])


def test_sweep_parent_lists_its_trials(at):
    base, store, ctx, _ = at
    check_sweep_parent(ctx, base, store.experiment_id, store.parent, store.trials)


def test_registry_shows_aliases_and_score_tags(at):
    base, store, ctx, _ = at
    check_registry(ctx, base, store.model, store.version)


def test_a_run_without_scores_fails_the_check(at):
    """The runs-table check can fail: a run logged like a train run but never scored."""
    import mlflow

    from molting_mlflow.store.scoring import mark_scores_view
    from molting_mlflow.store.tracking import stage_run

    base, store, ctx, _ = at
    with stage_run("unscored", "no-scores", {"molting.stage": "train"}) as run:
        mlflow.log_metric("loss", 1.0, step=1)
    exp = run.info.experiment_id
    mark_scores_view(exp)      # the view a scored run beside it would have given the experiment
    with pytest.raises(AssertionError, match="shows no score"):
        check_runs_table(ctx, base, exp, [run.info.run_id])


def test_a_score_logged_unrounded_fails_the_check(at):
    """MLflow's table prints a metric's every digit: 56/6 logged as it is reads 9.333333333333334."""
    import mlflow

    from molting_mlflow.ground.rubric import DIMENSIONS
    from molting_mlflow.store.scoring import mark_scores_view

    base, store, ctx, _ = at
    exp = mlflow.create_experiment("unrounded")
    with mlflow.start_run(experiment_id=exp, run_name="unrounded") as run:
        mlflow.log_metrics({"score": 56 / 6, **{d: 56 / 30 for d in DIMENSIONS}})
    mark_scores_view(exp)
    with pytest.raises(AssertionError, match=r"score shows '9\.33333"):
        check_runs_table(ctx, base, exp, [run.info.run_id])


def test_nothing_outside_127_0_0_1_was_asked_for(at):
    """Run last in this module: every page above loaded without a request leaving the machine."""
    *_, outside = at
    assert outside == []


# ---------------------------------------------------------------------------------------------
# The README's screenshots: the same store and checks, with the pictures kept
# ---------------------------------------------------------------------------------------------

def screenshots(out: Path, smol_baseline: bool) -> None:
    import tempfile

    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="molting-ui-"))
    os.chdir(work)
    with mlflow_server(work) as base:
        os.environ["MLFLOW_TRACKING_URI"] = base
        store = fill_store(base, smol_baseline, log=print)
        evaluated = store.baseline or store.runs[0]
        with chromium() as (ctx, outside):
            check_runs_table(ctx, base, store.experiment_id, store.runs + store.trials, out)
            check_compare(ctx, base, store.experiment_id, *store.runs, shots=out)
            check_eval_view(ctx, base, store.experiment_id, evaluated, store.runs[0], shots=out)
            check_human_assessment(ctx, base, store.experiment_id, evaluated, shots=out)
            check_registry(ctx, base, store.model, store.version, shots=out)
            assert outside == [], outside
    print(f"screenshots in {out}; store in {work}")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs", type=Path)
    ap.add_argument("--smol-baseline", action="store_true")
    a = ap.parse_args()
    os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    screenshots(a.out.resolve(), a.smol_baseline)
