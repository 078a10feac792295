"""Test isolation: every test gets its own MLflow store in a tmp dir, one torch thread, no hub."""
import os

import pytest
from helpers import use_store

os.environ.setdefault("MOLTING_THREADS", "1")   # 2 threads on a shared 2-core box run ~55× slower
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"


# The longest files first (each minutes of a process; the rest seconds to a minute): the two test processes
# (pyproject's -n 2 --dist loadfile) take whole files in this order, so neither is left alone with a long
# one at the end. A file's tests keep their order.
LONGEST_FIRST = ("test_sweep.py", "test_faults.py", "test_mlproject.py", "test_judge.py", "test_ui.py",
                 "test_real_templates.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))      # stable: the rest as collected


@pytest.fixture(autouse=True)
def isolated_tracking(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    use_store(monkeypatch, f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    # mlflow.set_experiment() exports the id for child processes: one left by an earlier test in this
    # process (a module fixture's run) would reach `mlflow run --experiment-name …`, which refuses both
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    yield tmp_path
    while mlflow.active_run():
        mlflow.end_run()


# ---------------------------------------------------------------------------------------------
# The fault-injection suite (tests/test_faults.py, marker `faults`): each test records the fault it
# injected and the outcome it measured; the table is printed at the end of the session.
# ---------------------------------------------------------------------------------------------

FAULT_TABLE: list[tuple[str, str]] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def fault(request):
    """fault(name, outcome) records one row; a test that fails records its row as failed. The rows travel
    as the test's user_properties, which pytest-xdist hands from its workers to the process that prints."""
    rows = []

    def record(name: str, outcome: str):
        rows.append((name, outcome))

    yield record
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        rows = rows or [(request.node.name, "")]
        rows = [(name, f"TEST FAILED ({outcome})" if outcome else "TEST FAILED") for name, outcome in rows]
    elif rep is not None and rep.skipped:
        rows = rows or [(request.node.name, "not run: " + str(rep.longrepr[-1] if isinstance(rep.longrepr, tuple)
                                                               else rep.longrepr))]
    request.node.user_properties.extend(("fault", row) for row in rows)


def pytest_runtest_logreport(report):
    if report.when == "teardown":      # the fixture above has run: its rows are on this report
        FAULT_TABLE.extend(tuple(row) for key, row in report.user_properties if key == "fault")


def pytest_terminal_summary(terminalreporter):
    if not FAULT_TABLE:
        return
    width = max(len(name) for name, _ in FAULT_TABLE)
    terminalreporter.section("fault → outcome")
    for name, outcome in FAULT_TABLE:
        terminalreporter.write_line(f"{name:<{width}}  {outcome}")
