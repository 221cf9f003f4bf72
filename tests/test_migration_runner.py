"""The migration runner: session timeouts through PGOPTIONS, lock timeouts retried with backoff,
other failures final; which migrations are pending; and the whole thing against a real
PostgreSQL server while "blue" keeps querying it."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from commands.config import MigrationRunner
from commands.migrations import (
    LintUsageError,
    lint_paths,
    migration_env,
    pending_migrations,
    run_migrations,
)
from platforms.base import PlatformError, Result
from storage.applied_migrations import applied, mark_applied
from storage.db import Store

if TYPE_CHECKING:
    from tests.postgres import PostgresDatabase

pytest_plugins = ["tests.postgres"]  # the postgres_server and postgres_db fixtures

DEMO_MIGRATIONS = Path(__file__).parent.parent / "demo" / "migrations"
LOCK_TIMEOUT_OUTPUT = "psql:/tmp/m.sql:1: ERROR:  canceling statement due to lock timeout\n"


class FakeMigrate:
    """A migrate command that answers from a script of results and records what it was given."""

    def __init__(self, *results: Result | Exception) -> None:
        self.results = list(results)
        self.envs: list[dict[str, str]] = []

    def __call__(self, env):
        self.envs.append(dict(env))
        r = self.results.pop(0)
        if isinstance(r, Exception):
            raise r
        return r


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


# -- the session settings -------------------------------------------------------------------------


def test_default_session_settings_are_5s_lock_timeout_and_15min_statement_timeout():
    assert migration_env(MigrationRunner()) == {"PGOPTIONS": "-c lock_timeout=5000ms -c statement_timeout=900000ms"}


def test_configured_timeouts_become_milliseconds():
    runner = MigrationRunner(lock_timeout="250ms", statement_timeout="1h30m")
    assert migration_env(runner) == {"PGOPTIONS": "-c lock_timeout=250ms -c statement_timeout=5400000ms"}


def test_a_zero_timeout_never_turns_into_no_timeout():
    with pytest.raises(ValueError, match="above 0"):
        MigrationRunner(lock_timeout="0s")  # the config refuses it outright
    runner = MigrationRunner.model_construct(lock_timeout=dt.timedelta(0), statement_timeout=dt.timedelta(minutes=15))
    assert "lock_timeout=1ms" in migration_env(runner)["PGOPTIONS"]  # 0 would mean "wait forever"


# -- retries --------------------------------------------------------------------------------------


def test_success_on_the_first_try_runs_once_with_the_timeouts():
    migrate, sleeps = FakeMigrate(Result(ok=True, output="ALTER TABLE\n", exit_code=0)), Sleeps()
    run = run_migrations(migrate, MigrationRunner(), sleep=sleeps)
    assert (run.ok, run.attempts, run.lock_timeouts) == (True, 1, 0)
    assert run.summary == "migrations applied (1 attempt)"
    assert migrate.envs == [migration_env(MigrationRunner())]
    assert sleeps == []
    assert "ALTER TABLE" in run.output


def test_lock_timeout_is_retried_with_exponential_backoff_until_it_succeeds():
    migrate = FakeMigrate(
        Result(ok=False, output=LOCK_TIMEOUT_OUTPUT, exit_code=3),
        Result(ok=False, output=LOCK_TIMEOUT_OUTPUT, exit_code=3),
        Result(ok=True, output="ALTER TABLE\n", exit_code=0),
    )
    sleeps = Sleeps()
    run = run_migrations(migrate, MigrationRunner(retries=3, retry_backoff="2s"), sleep=sleeps)
    assert (run.ok, run.attempts, run.lock_timeouts) == (True, 3, 2)
    assert sleeps == [2.0, 4.0]
    assert run.summary == "migrations applied after 2 lock timeouts (3 attempts)"
    assert run.output.count("--- attempt ") == 3


def test_lock_timeouts_on_every_try_fail_cleanly_after_the_configured_tries():
    migrate = FakeMigrate(*[Result(ok=False, output=LOCK_TIMEOUT_OUTPUT, exit_code=3)] * 4)
    sleeps = Sleeps()
    run = run_migrations(migrate, MigrationRunner(retries=4, retry_backoff="1s"), sleep=sleeps)
    assert (run.ok, run.attempts, run.lock_timeouts) == (False, 4, 4)
    assert sleeps == [1.0, 2.0, 4.0]  # no sleep after the last try
    assert "gave up after 4 lock timeouts" in run.summary and "lock_timeout (5.0 s)" in run.summary
    assert run.output.count("canceling statement due to lock timeout") == 4


def test_sqlstate_55P03_counts_as_a_lock_timeout():
    migrate = FakeMigrate(
        Result(ok=False, output="ERROR: 55P03: could not obtain lock on relation \"students\"\n", exit_code=1),
        Result(ok=True, exit_code=0),
    )
    run = run_migrations(migrate, MigrationRunner(), sleep=Sleeps())
    assert (run.ok, run.lock_timeouts) == (True, 1)


def test_other_failures_are_not_retried():
    migrate = FakeMigrate(
        Result(ok=False, output='NOTICE: x\npsql:m.sql:4: ERROR:  column "grade" does not exist\n', exit_code=3)
    )
    sleeps = Sleeps()
    run = run_migrations(migrate, MigrationRunner(), sleep=sleeps)
    assert (run.ok, run.attempts, run.lock_timeouts) == (False, 1, 0)
    assert sleeps == []
    assert run.summary == 'migration failed (exit 3): psql:m.sql:4: ERROR:  column "grade" does not exist'


def test_a_statement_timeout_is_not_retried():
    migrate = FakeMigrate(Result(ok=False, output="ERROR:  canceling statement due to statement timeout\n", exit_code=1))
    run = run_migrations(migrate, MigrationRunner(), sleep=Sleeps())
    assert (run.ok, run.attempts, run.lock_timeouts) == (False, 1, 0)


def test_a_driver_that_raises_fails_the_run_without_a_retry():
    migrate = FakeMigrate(PlatformError("migrate command not found", output="sh: 1: migrate: not found"))
    run = run_migrations(migrate, MigrationRunner(), sleep=Sleeps())
    assert (run.ok, run.attempts) == (False, 1)
    assert "PlatformError: migrate command not found" in run.output
    assert "sh: 1: migrate: not found" in run.output


def test_long_output_is_trimmed_but_keeps_the_end_of_every_attempt():
    noisy = "".join(f"NOTICE: row {i}\n" for i in range(5000)) + LOCK_TIMEOUT_OUTPUT
    migrate = FakeMigrate(*[Result(ok=False, output=noisy, exit_code=3)] * 3)
    run = run_migrations(migrate, MigrationRunner(), sleep=Sleeps())
    assert len(run.output) < 13_000
    assert run.output.count("characters left out") == 3
    assert run.output.count("canceling statement due to lock timeout") == 3
    assert "NOTICE: row 0\n" in run.output  # the start of each attempt is kept too


# -- what is pending ------------------------------------------------------------------------------


def test_pending_migrations_are_the_unapplied_sql_files_in_name_order(tmp_path):
    for name in ("0010_c.sql", "0002_b.sql", "0001_a.sql", "README.md", ".0003_hidden.sql"):
        (tmp_path / name).write_text("SELECT 1;\n")
    assert [p.name for p in pending_migrations(tmp_path, set())] == ["0001_a.sql", "0002_b.sql", "0010_c.sql"]
    assert [p.name for p in pending_migrations(tmp_path, {"0001_a.sql", "0010_c.sql"})] == ["0002_b.sql"]
    assert pending_migrations(tmp_path, {"0001_a.sql", "0002_b.sql", "0010_c.sql"}) == []


def test_a_missing_migrations_folder_is_a_clear_error(tmp_path):
    with pytest.raises(LintUsageError, match=r"migrations folder .*missing does not exist"):
        pending_migrations(tmp_path / "missing", set())
    (tmp_path / "file.sql").write_text("SELECT 1;\n")
    with pytest.raises(LintUsageError, match="is not a directory"):
        pending_migrations(tmp_path / "file.sql", set())


def test_applied_migrations_are_kept_per_service_and_environment(tmp_path):
    store = Store(tmp_path / "recess.db")
    mark_applied(store, "web", "production", ["0001_a.sql", Path("migrations/0002_b.sql")], deploy_id=7)
    mark_applied(store, "web", "production", ["0001_a.sql"], deploy_id=9)  # a re-deploy
    mark_applied(store, "web", "staging", ["0001_a.sql"], deploy_id=8)
    assert applied(store, "web", "production") == {"0001_a.sql", "0002_b.sql"}
    assert applied(store, "web", "staging") == {"0001_a.sql"}
    assert applied(store, "api", "production") == set()
    first = store.row("SELECT deploy_id FROM applied_migrations WHERE env = 'production' AND name = '0001_a.sql'")
    assert first == {"deploy_id": 7}


# -- against a real PostgreSQL server -------------------------------------------------------------


def psql_migrate(db: PostgresDatabase, files: list[Path]):
    """A migrate command as a team would configure it: psql over each file, stopping at the first
    error. psql is a libpq client, so it applies PGOPTIONS to its session."""

    def migrate(extra_env) -> Result:
        env = {**os.environ, **db.env, **extra_env}
        outputs = []
        for f in files:
            proc = subprocess.run(
                [str(db.server.psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(f)],
                env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            outputs.append(proc.stdout + proc.stderr)
            if proc.returncode != 0:
                return Result(ok=False, output="".join(outputs), exit_code=proc.returncode)
        return Result(ok=True, output="".join(outputs), exit_code=0)

    return migrate


class Blue:
    """The version that serves while green migrates: a SELECT every 20 ms on its own connection,
    each one timed."""

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.conn = psycopg.connect(dsn, autocommit=True)
        self.durations: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                self.conn.execute("SELECT count(*) FROM students WHERE grade = '5'").fetchone()
            except Exception as exc:  # noqa: BLE001 - every failure of blue is what the test looks for
                self.errors.append(repr(exc))
            self.durations.append(time.monotonic() - t0)
            self._stop.wait(0.02)

    def __enter__(self) -> Blue:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.conn.close()


def create_students(dsn: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute((DEMO_MIGRATIONS / "0001_create_students.sql").read_text())
        conn.execute(
            "INSERT INTO students (tenant_id, given_name, family_name, grade) "
            "SELECT 'lincoln-high', 'Student', 'No. ' || i, (i % 12 + 1)::text FROM generate_series(1, 2000) i"
        )


def has_column(dsn: str, table: str, column: str) -> bool:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_name = %s AND column_name = %s", (table, column)
        ).fetchone() is not None


FAST = MigrationRunner(lock_timeout="200ms", statement_timeout="30s", retries=3, retry_backoff="50ms")


@pytest.mark.postgres
def test_libpq_clients_get_the_runners_timeouts(postgres_db, tmp_path):
    show = tmp_path / "show.sql"
    show.write_text("SHOW lock_timeout;\nSHOW statement_timeout;\n")
    run = run_migrations(psql_migrate(postgres_db, [show]), FAST)
    assert run.ok, run.output
    assert "200ms" in run.output and "30s" in run.output


@pytest.mark.postgres
def test_demo_migrations_lint_clean_apply_once_and_are_then_no_longer_pending(postgres_db, tmp_path):
    store = Store(tmp_path / "recess.db")
    pending = pending_migrations(DEMO_MIGRATIONS, applied(store, "web", "production"))
    assert [p.name for p in pending][:2] == ["0001_create_students.sql", "0002_create_courses_and_enrollments.sql"]
    assert lint_paths(pending).blocking() == []
    run = run_migrations(psql_migrate(postgres_db, pending), FAST)
    assert (run.ok, run.attempts, run.lock_timeouts) == (True, 1, 0), run.output
    assert has_column(postgres_db.dsn, "students", "preferred_name")
    mark_applied(store, "web", "production", [p.name for p in pending], deploy_id=1)
    assert pending_migrations(DEMO_MIGRATIONS, applied(store, "web", "production")) == []


@pytest.mark.postgres
def test_a_migration_stuck_behind_a_lock_times_out_retries_and_fails_while_blue_keeps_serving(postgres_db, tmp_path):
    import psycopg

    create_students(postgres_db.dsn)
    migration = tmp_path / "0003_add_nickname.sql"
    migration.write_text("ALTER TABLE students ADD COLUMN IF NOT EXISTS nickname text;\n")
    # Session A: a long transaction (a report, a stuck worker) holding a lock the ALTER conflicts with.
    holder = psycopg.connect(postgres_db.dsn)
    holder.execute("LOCK TABLE students IN ACCESS SHARE MODE")
    sleeps = Sleeps()
    try:
        with Blue(postgres_db.dsn) as blue:
            time.sleep(0.1)
            started = time.monotonic()
            run = run_migrations(psql_migrate(postgres_db, [migration]), FAST, sleep=lambda s: (sleeps.append(s), time.sleep(s)))
            elapsed = time.monotonic() - started
            time.sleep(0.1)
    finally:
        holder.rollback()
        holder.close()

    assert (run.ok, run.attempts, run.lock_timeouts) == (False, 3, 3), run.output
    assert run.output.count("canceling statement due to lock timeout") == 3
    assert "gave up after 3 lock timeouts" in run.summary
    assert sleeps == [0.05, 0.1]
    assert elapsed < 5
    assert not has_column(postgres_db.dsn, "students", "nickname")  # nothing half-applied
    # Blue answered throughout: every query succeeded, none waited much longer than lock_timeout,
    # and some did queue behind the waiting ALTER (which is what lock_timeout bounds).
    assert blue.errors == []
    assert len(blue.durations) >= 15
    assert max(blue.durations) < 1.0
    assert max(blue.durations) >= 0.05


@pytest.mark.postgres
def test_a_migration_succeeds_on_retry_once_the_lock_is_released(postgres_db, tmp_path):
    import psycopg

    create_students(postgres_db.dsn)
    migration = tmp_path / "0003_add_nickname.sql"
    migration.write_text("ALTER TABLE students ADD COLUMN IF NOT EXISTS nickname text;\n")
    holder = psycopg.connect(postgres_db.dsn)
    holder.execute("LOCK TABLE students IN ACCESS SHARE MODE")
    try:
        # The long transaction ends during the backoff.
        run = run_migrations(psql_migrate(postgres_db, [migration]), FAST, sleep=lambda s: holder.commit())
    finally:
        holder.close()
    assert (run.ok, run.attempts, run.lock_timeouts) == (True, 2, 1), run.output
    assert run.summary == "migrations applied after 1 lock timeout (2 attempts)"
    assert has_column(postgres_db.dsn, "students", "nickname")


@pytest.mark.postgres
def test_a_statement_over_statement_timeout_is_cancelled_and_not_retried(postgres_db, tmp_path):
    slow = tmp_path / "0004_slow_backfill.sql"
    slow.write_text("SELECT pg_sleep(5);\n")
    runner = MigrationRunner(lock_timeout="200ms", statement_timeout="300ms", retries=3, retry_backoff="50ms")
    started = time.monotonic()
    run = run_migrations(psql_migrate(postgres_db, [slow]), runner)
    assert time.monotonic() - started < 3
    assert (run.ok, run.attempts, run.lock_timeouts) == (False, 1, 0)
    assert "canceling statement due to statement timeout" in run.summary


GUIDE = Path(__file__).parent / "data" / "migrations" / "guide"
GUIDE_SCHEMA = """
CREATE TABLE students (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, given_name text NOT NULL, grade text);
CREATE TABLE guardians (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, student_id bigint, fax_number text NOT NULL);
CREATE TABLE attendance (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, student_id bigint, day date);
CREATE TABLE courses (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, title text);
CREATE TABLE grades (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, course_id bigint, points integer NOT NULL);
INSERT INTO students (given_name, grade) SELECT 'Student ' || i, '5' FROM generate_series(1, 500) i;
INSERT INTO guardians (student_id, fax_number) SELECT i, '555-0100' FROM generate_series(1, 500) i;
INSERT INTO courses (title) VALUES ('Algebra'), ('Biology');
INSERT INTO grades (course_id, points) SELECT 1 + i % 2, i % 100 FROM generate_series(1, 500) i;
"""
# The guide's sequences, with the application's work between deploys (backfills) as plain SQL.
GUIDE_SEQUENCE = [
    "rename_column/0101_add_first_name.sql",
    "UPDATE students SET first_name = given_name WHERE first_name IS NULL;",
    "rename_column/0102_given_name_nullable.sql",
    "rename_column/0103_drop_given_name.sql",
    "not_null_column/0201_add_homeroom.sql",
    "UPDATE students SET homeroom = '101' WHERE homeroom IS NULL;",
    "not_null_column/0202_homeroom_check.sql",
    "not_null_column/0203_homeroom_not_null.sql",
    "remove_column/0301_fax_nullable.sql",
    "remove_column/0302_drop_fax.sql",
    "add_index/0401_attendance_index.sql",
    "foreign_key/0501_grades_course_fk.sql",
    "foreign_key/0502_validate_grades_course_fk.sql",
    "change_type/0601_add_points_exact.sql",
    "UPDATE grades SET points_exact = points WHERE points_exact IS NULL;",
    "change_type/0602_points_nullable.sql",
    "change_type/0603_drop_points.sql",
]


@pytest.mark.postgres
def test_the_guides_sequences_run_on_a_real_server(postgres_db, tmp_path):
    import psycopg

    with psycopg.connect(postgres_db.dsn, autocommit=True) as conn:
        conn.execute(GUIDE_SCHEMA)
    files = []
    for i, step in enumerate(GUIDE_SEQUENCE):
        if step.endswith(".sql"):
            files.append(GUIDE / step)
        else:
            backfill = tmp_path / f"backfill_{i}.sql"
            backfill.write_text(step + "\n")
            files.append(backfill)
    run = run_migrations(psql_migrate(postgres_db, files), FAST)
    assert run.ok, run.output
    with psycopg.connect(postgres_db.dsn) as conn:
        nullable = dict(conn.execute(
            "SELECT column_name, is_nullable FROM information_schema.columns WHERE table_name = 'students'"
        ).fetchall())  # fmt: skip
        fk_valid = conn.execute("SELECT convalidated FROM pg_constraint WHERE conname = 'grades_course_fk'").fetchone()
        index_valid = conn.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'attendance_student_day_idx'::regclass"
        ).fetchone()
    assert nullable["homeroom"] == "NO" and "given_name" not in nullable and "first_name" in nullable
    assert fk_valid == (True,) and index_valid == (True,)
    assert not has_column(postgres_db.dsn, "guardians", "fax_number")
    assert not has_column(postgres_db.dsn, "grades", "points") and has_column(postgres_db.dsn, "grades", "points_exact")
