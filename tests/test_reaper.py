"""The reaper: a RUNNING run of this host whose process is gone ends FAILED; everything else is left alone."""
import os
import subprocess
import sys

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from molting_mlflow.ground.paths import sqlite_path
from molting_mlflow.store import reaper


@pytest.fixture
def client():
    c = MlflowClient()
    c.search_experiments()  # the store exists
    return c


def running_run(client, **tags):
    exp = client.get_experiment_by_name("molting") or client.get_experiment(client.create_experiment("molting"))
    return client.create_run(exp.experiment_id, tags=tags).info.run_id


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_dead_process_run_ends_failed_with_the_reason(client):
    pid = dead_pid()
    run = running_run(client, **{reaper.HOST_TAG: reaper.host(), reaper.PID_TAG: str(pid), reaper.START_TAG: "x:1"})
    assert reaper.reap(client, log=lambda m: None) == [run]
    got = client.get_run(run)
    assert got.info.status == "FAILED" and f"process {pid} on {reaper.host()} ended" in got.data.tags["molting.error"]


def test_other_hosts_live_processes_and_untagged_runs_are_left_alone(client):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        start = reaper.process_start(sleeper.pid)
        other = running_run(client, **{reaper.HOST_TAG: "another-host", reaper.PID_TAG: str(dead_pid())})
        alive = running_run(client, **{reaper.HOST_TAG: reaper.host(), reaper.PID_TAG: str(sleeper.pid),
                                       reaper.START_TAG: start})
        untagged = running_run(client)
        # the same pid, but another process's start time: the pid was reused, the run's process is gone
        reused = running_run(client, **{reaper.HOST_TAG: reaper.host(), reaper.PID_TAG: str(sleeper.pid),
                                        reaper.START_TAG: start + "0"})
        assert reaper.reap(client, log=lambda m: None) == [reused]
        assert [client.get_run(r).info.status for r in (other, alive, untagged)] == ["RUNNING"] * 3
    finally:
        sleeper.kill()
        sleeper.wait()


def test_stage_run_records_its_process(client):
    from molting_mlflow.store.tracking import stage_run

    with stage_run("molting", "probe") as run:
        pass
    tags = client.get_run(run.info.run_id).data.tags
    assert tags[reaper.HOST_TAG] == reaper.host() and tags[reaper.PID_TAG] == str(os.getpid())
    assert tags[reaper.START_TAG] == reaper.process_start(os.getpid())


def test_the_group_check_leaves_a_missing_sqlite_store_uncreated():
    """`molting score` and bad input stay cheap: nothing to reap in a store that does not exist yet."""
    db = sqlite_path(mlflow.get_tracking_uri())
    reaper.touch_store(create=False)
    assert not db.exists()
    reaper.touch_store()
    assert db.exists()
