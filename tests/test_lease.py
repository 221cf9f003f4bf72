"""One owner per database: `recess serve` holds a flock lease on `<database>.lock`.

A second `recess serve` on the same database exits 2 and names the owner; `--standby` waits and
takes over when the owner dies (even by SIGKILL); read-only commands need no lease. The servers
here are real processes against the fake Slack; every wait is for a condition, with a generous
timeout, never a measured duration.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bot.lease import DatabaseLease, Holder, LeaseHeld
from tests.kit.serve import Serve, wait_for

REPO = Path(__file__).resolve().parent.parent
CONFIG = """
[bot]
database = "data/recess.db"
channel = "C0DEPLOYS"
state_dir = ".recess"

[access]
approvers = ["U0APPROVER1"]

[[tenants]]
id = "lincoln-high"
timezone = "America/New_York"

[environments.production]
approvals = 1
respect_windows = true
"""




def recess(*args: str) -> list[str]:
    return [sys.executable, "-m", "bot.cli", *args]


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "recess.toml"
    path.write_text(textwrap.dedent(CONFIG))
    return path


@pytest.fixture
def serve(config, slack):
    started: list[Serve] = []

    def start(*extra: str) -> Serve:
        s = Serve(config, slack.api_url, *extra, cwd=REPO)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop(15)


def lock_record(config: Path) -> dict:
    return json.loads((config.parent / "data" / "recess.db.lock").read_text())


# -- real processes ---------------------------------------------------------------------------


def test_a_second_serve_on_the_same_database_exits_2_and_names_the_owner(config, serve):
    first = serve()
    first.wait_healthy()

    second = serve()
    assert second.proc.wait(timeout=20) == 2
    message = second.log()
    db = (config.parent / "data" / "recess.db").resolve()
    assert f"recess: the database {db} is owned by pid {first.proc.pid} on host {socket.gethostname()} since " in message
    assert "stop it first, or start this one with --standby to take over when it stops" in message
    assert not second.healthy()
    assert first.healthy(), "the owner keeps serving"


def test_the_lock_file_records_the_owner_pid_host_and_since(config, serve):
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    first = serve()
    first.wait_healthy()
    record = lock_record(config)
    assert record["pid"] == first.proc.pid
    assert record["host"] == socket.gethostname()
    assert record["since"].endswith("Z")
    assert dt.datetime.fromisoformat(record["since"].replace("Z", "+00:00")) >= before


def test_a_standby_neither_serves_nor_starts_until_the_owner_dies_then_takes_over(config, serve):
    first = serve()
    first.wait_healthy()

    standby = serve("--standby")
    waiting = f"is owned by pid {first.proc.pid} on host {socket.gethostname()}"
    wait_for(lambda: waiting in standby.log(), 20, "the standby to say whom it waits for")
    assert standby.proc.poll() is None, standby.log()
    assert not standby.healthy(), "a waiting standby must not serve"
    # Nothing after the lease: no scheduler, so no recovery, no queued jobs, no outbox.
    assert "scheduler started" not in standby.log()
    assert lock_record(config)["pid"] == first.proc.pid
    assert standby.log().count("waiting to take over") == 1

    first.kill()
    standby.wait_healthy(timeout=30)
    log = standby.log()
    assert log.index("took over the database") < log.index("scheduler started"), "the lease comes before anything starts"
    assert lock_record(config)["pid"] == standby.proc.pid


def test_read_only_commands_work_while_a_server_holds_the_lease(config, serve, tmp_path):
    first = serve()
    first.wait_healthy()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(recess("--config", str(config), *args), cwd=REPO, capture_output=True, text=True, timeout=60)

    window = run("window", "check", "--at", "2027-03-20T12:00:00Z")  # a Saturday: safe
    assert window.returncode == 0, window.stderr
    assert window.stdout.startswith("safe at")
    check = run("config", "check")
    assert check.returncode == 0, check.stderr
    assert "ok" in check.stdout
    sql = tmp_path / "0001_add_column.sql"
    sql.write_text("ALTER TABLE students ADD COLUMN nickname text;\n")
    lint = run("migrations", "lint", str(sql))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert first.healthy()
    assert lock_record(config)["pid"] == first.proc.pid, "no read-only command took the lease"


# -- DatabaseLease in-process -----------------------------------------------------------------


def test_a_second_lease_on_the_same_database_is_refused_and_names_the_holder(tmp_path):
    db = tmp_path / "recess.db"
    since = dt.datetime(2026, 12, 1, 21, 50, 3, tzinfo=dt.UTC)
    with DatabaseLease(db, clock=lambda: since) as owner:
        assert owner.held
        with pytest.raises(LeaseHeld) as refused:
            DatabaseLease(db).acquire(wait=False)
        assert refused.value.holder == Holder(os.getpid(), socket.gethostname(), since)
        assert str(refused.value) == f"the database {db.resolve()} is owned by pid {os.getpid()} on host {socket.gethostname()} since 2026-12-01T21:50:03Z"
        assert DatabaseLease(db).holder() == owner.holder()


def test_a_released_lease_can_be_taken_again_and_names_nobody(tmp_path):
    db = tmp_path / "recess.db"
    with DatabaseLease(db):
        pass
    assert DatabaseLease(db).holder() is None
    again = DatabaseLease(db).acquire(wait=False)
    assert again.held
    again.release()
    assert not again.held


def test_a_standby_lease_waits_with_the_injected_sleep_and_takes_over_when_freed(tmp_path, caplog):
    db = tmp_path / "recess.db"
    owner = DatabaseLease(db).acquire(wait=False)
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 3:
            owner.release()

    with caplog.at_level(logging.INFO, logger="recess.lease"):
        standby = DatabaseLease(db, sleep=sleep, poll=0.5).acquire(wait=True)
    assert standby.held
    assert pauses == [0.5, 0.5, 0.5]
    waits = [r for r in caplog.records if "waiting to take over" in r.getMessage()]
    assert len(waits) == 1 and f"pid {os.getpid()}" in waits[0].getMessage()
    assert standby.holder().pid == os.getpid()
    standby.release()


HOLDER = """
import subprocess, sys, time
from bot.lease import DatabaseLease
lease = DatabaseLease(sys.argv[1]).acquire(wait=False)
# A child that outlives us, started the way a platform might (close_fds=False): it must not
# inherit the lease, as the app processes and HAProxy outlive recess on purpose.
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], close_fds=False, start_new_session=True)
print(child.pid, flush=True)
time.sleep(120)
"""


def test_the_kernel_frees_the_lease_when_its_holder_is_killed_even_with_a_child_alive(tmp_path):
    db = tmp_path / "recess.db"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    child_pid = int(holder.stdout.readline())
    try:
        with pytest.raises(LeaseHeld) as refused:
            DatabaseLease(db).acquire(wait=False)
        assert refused.value.holder.pid == holder.pid
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=20)

        def taken() -> DatabaseLease | None:
            try:
                return DatabaseLease(db).acquire(wait=False)
            except LeaseHeld:
                return None

        lease = wait_for(taken, 20, "the lease to be free after SIGKILL")
        assert lease.holder().pid == os.getpid()
        lease.release()
    finally:
        for pid in (holder.pid, child_pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        holder.wait(timeout=20)


def test_an_in_memory_database_needs_no_lease():
    assert not DatabaseLease.needed(":memory:")
    assert DatabaseLease.needed("recess.db")
