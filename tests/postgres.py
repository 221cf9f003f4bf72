"""A throwaway PostgreSQL server for tests: initdb in a temporary folder, started on a free port,
stopped and removed after the session.

Use it from a test module (or the root conftest) with:

    pytest_plugins = ["tests.postgres"]

`postgres_server` (session scope) is the running server; `postgres_db` (per test) is a fresh,
empty database on it (`.dsn` for psycopg, `.env` for psql), dropped afterwards. Tests skip only when no PostgreSQL server binaries exist
(`make test` installs them); any other failure to start is an error that shows the server's log.

PostgreSQL refuses to run as root, so as root the server runs as the `postgres` system user
(`runuser -u postgres`). It listens on 127.0.0.1 only, with trust authentication, fsync off.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.kit.ports import free_port  # noqa: F401 (also imported from here)

START_TIMEOUT = 30  # seconds


def find_bindir() -> Path | None:
    """The folder with `initdb`, `pg_ctl`, `postgres` and `psql`: Debian's newest first, then PATH."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for c in candidates:
        if all((Path(c) / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(c)
    return None




@dataclass
class PostgresServer:
    bindir: Path
    root: Path  # temporary folder: data/, the socket and the log
    port: int
    host: str = "127.0.0.1"
    user: str = "postgres"
    run_as: str | None = None  # system user the server runs as (when the tests run as root)
    _stopped: bool = field(default=False, repr=False)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def logfile(self) -> Path:
        return self.root / "server.log"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user={self.user} dbname={dbname} connect_timeout=10"

    def env(self, dbname: str = "postgres") -> dict[str, str]:
        """libpq variables that point psql (or any libpq client) at this server."""
        return {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user, "PGDATABASE": dbname}

    @property
    def psql(self) -> Path:
        return self.bindir / "psql"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _as_server_user(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", self.run_as, "--", *cmd] if self.run_as else cmd

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses={self.host} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        cmd = [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
               "-w", "-t", str(START_TIMEOUT), "-o", opts, "start"]  # fmt: skip
        proc = subprocess.run(self._as_server_user(cmd), capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(
                f"PostgreSQL did not start on port {self.port}: {proc.stderr.strip()}\n{self.log_tail()}"
            )

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if (self.datadir / "postmaster.pid").exists():
            subprocess.run(
                self._as_server_user([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                stdin=subprocess.DEVNULL,
            )
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(bindir: Path) -> PostgresServer:
    """initdb + start in a fresh temporary folder. Raises RuntimeError with the server's log."""
    run_as = None
    root = Path(tempfile.mkdtemp(prefix="recess-pg-"))
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError("running as root needs the `postgres` system user to start PostgreSQL (apt-get install postgresql creates it)") from None
        if not shutil.which("runuser"):
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError("running as root needs `runuser` (util-linux) to start PostgreSQL as the postgres user")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        run_as = "postgres"
    server = PostgresServer(bindir=bindir, root=root, port=0, run_as=run_as)
    init = [str(bindir / "initdb"), "-D", str(server.datadir), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--locale=C", "--no-sync"]  # fmt: skip
    proc = subprocess.run(server._as_server_user(init), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {proc.stderr.strip() or proc.stdout.strip()}")
    last_error: Exception | None = None
    for _ in range(3):  # another process may take the free port between the check and the start
        server.port = free_port()
        try:
            server.start()
            atexit.register(server.stop)
            return server
        except RuntimeError as exc:
            last_error = exc
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(str(last_error))


@pytest.fixture(scope="session")
def postgres_server():
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL server binaries not found (looked in /usr/lib/postgresql/*/bin and PATH); "
            "`make test` installs them (scripts/system-deps.sh), or: apt-get install postgresql"
        )
    server = start_postgres(bindir)
    try:
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class PostgresDatabase:
    server: PostgresServer
    name: str

    @property
    def dsn(self) -> str:
        return self.server.dsn(self.name)

    @property
    def env(self) -> dict[str, str]:
        return self.server.env(self.name)


@pytest.fixture
def postgres_db(postgres_server: PostgresServer):
    """A fresh, empty database for one test, dropped afterwards."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PostgresDatabase(postgres_server, name)
    finally:
        with psycopg.connect(postgres_server.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
