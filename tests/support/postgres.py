"""A throwaway PostgreSQL cluster for tests: ``initdb`` into a temporary directory, started
with ``pg_ctl`` on a free loopback port, stopped and deleted at the end.

* The binaries are the Debian ``postgresql`` package's (``/usr/lib/postgresql/<v>/bin``, the
  newest version found), or ``$LLORCH_PG_BINDIR``, or ``initdb`` on ``PATH``. ``make postgres`` (part of ``make test``)
  installs the package when it is missing (``scripts/install-postgres.sh``).
* PostgreSQL refuses to run as root: when the tests run as root (as CI does), the cluster
  belongs to the ``postgres`` system user (created by the package; ``llorch-pg`` is created
  if neither exists) and its directory is chowned to it.
* Clients connect over TCP to ``127.0.0.1`` with the superuser ``postgres`` and a random
  password (SCRAM): other processes — real ``orchestratord`` daemons — use the same DSN. The
  unix socket lives in the temporary directory (local connections are trusted there).
* ``fsync`` stays on: durability is what the stores are tested for.
* A watchdog process stops the server and deletes its directory if the test process dies
  without stopping it (``kill -9``, ``timeout``).

:func:`postgres_unavailable` tells why no cluster can be started; the fixtures in
``tests/conftest.py`` skip on it outside CI and fail under ``CI``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

__all__ = ["PostgresCluster", "find_bindir", "in_ci", "postgres_unavailable"]

SUPERUSER = "postgres"

_WATCHDOG = """
import os, shutil, signal, sys, time
data, root = sys.argv[1], sys.argv[2]
sys.stdin.buffer.read()  # returns at EOF: the test process stopped the cluster, or died
try:
    with open(os.path.join(data, "postmaster.pid")) as f:
        pid = int(f.readline())
    os.kill(pid, signal.SIGINT)  # fast shutdown
    for _ in range(300):
        os.kill(pid, 0)
        time.sleep(0.1)
except (OSError, ValueError):
    pass
shutil.rmtree(root, ignore_errors=True)
"""


def in_ci() -> bool:
    """True under CI (``CI`` set to anything but empty, ``0`` or ``false``)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _version(path: str) -> tuple[int, ...]:
    found = re.search(r"/postgresql/([\d.]+)/bin", path)
    return tuple(int(p) for p in found.group(1).split(".")) if found else (0,)


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or ``None``."""
    env = os.environ.get("LLORCH_PG_BINDIR")
    if env:
        return Path(env) if (Path(env) / "initdb").is_file() else None
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version, reverse=True)
    if found:
        return Path(found[0]).parent
    initdb = shutil.which("initdb")
    if initdb is not None:
        real = Path(initdb).resolve().parent
        if (real / "pg_ctl").is_file():
            return real
    return None


def postgres_unavailable() -> str | None:
    """Why a cluster cannot be started here (``None`` when it can)."""
    if find_bindir() is None:
        return (
            "PostgreSQL server binaries not found (no initdb under /usr/lib/postgresql/*/bin, "
            "$LLORCH_PG_BINDIR or PATH); `make postgres` (part of `make test`) installs them "
            "(scripts/install-postgres.sh)"
        )
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cluster_user() -> pwd.struct_passwd | None:
    """The user that runs the server: ``None`` when not root (the current user does)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "llorch-pg"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "llorch-pg"],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam("llorch-pg")


class PostgresCluster:
    """One throwaway cluster; :meth:`start` it, :meth:`create_database` per test,
    :meth:`stop` it at the end (which deletes everything)."""

    def __init__(self, bindir: Path | None = None) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise FileNotFoundError(postgres_unavailable())
        self.bindir = found
        self.password = secrets.token_hex(16)
        self.port = 0
        self._user = _cluster_user()
        self.root = Path(tempfile.mkdtemp(prefix="llorch-pg-", dir=self._base_dir()))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self._counter = 0
        self._lock = threading.Lock()
        self._started = False
        self._options = ""
        self._watchdog: subprocess.Popen[bytes] | None = None
        if self._user is not None:
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)

    def _base_dir(self) -> str:
        """The temporary directory, or ``/tmp`` when the cluster's user could not reach it
        (e.g. ``TMPDIR`` under root's ``0700`` home)."""
        base = Path(tempfile.gettempdir()).resolve()
        if self._user is None:
            return str(base)
        reachable = all(p.stat().st_mode & 0o001 for p in (base, *base.parents))
        return str(base) if reachable else "/tmp"

    # -- processes -----------------------------------------------------------------------

    def _run(self, args: Sequence[str], *, timeout: float = 120) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(HOME=str(self.root), LC_ALL="C", LANG="C")
        kwargs: dict[str, Any] = {}
        if self._user is not None:
            kwargs.update(user=self._user.pw_uid, group=self._user.pw_gid, extra_groups=[])
        done = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{args[0]} failed ({done.returncode}): {done.stderr.strip()}\n"
                f"{done.stdout.strip()}\n{self.log_tail()}"
            )

    def log_tail(self, n: int = 3000) -> str:
        """The end of the server's log."""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-n:]
        return ""

    def start(self) -> PostgresCluster:
        """``initdb`` and start the server on a free port (retrying if the port was taken)."""
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._user is not None:
            os.chown(pwfile, self._user.pw_uid, self._user.pw_gid)
        try:
            self._run(
                [
                    "initdb",
                    "-D",
                    str(self.data),
                    "-U",
                    SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",  # the throwaway cluster's initial files need no fsync
                ]
            )
        finally:
            pwfile.unlink()
        last: Exception | None = None
        for _ in range(5):
            self.port = _free_port()
            options = (
                f"-c port={self.port} -c listen_addresses=127.0.0.1 "
                f"-c unix_socket_directories={self.root} -c max_connections=300 "
                "-c fsync=on"
            )
            try:
                self._run(
                    [
                        "pg_ctl",
                        "-D",
                        str(self.data),
                        "-l",
                        str(self.log_path),
                        "-o",
                        options,
                        "-w",
                        "-t",
                        "60",
                        "start",
                    ]
                )
            except RuntimeError as exc:  # most likely the port was taken meanwhile
                last = exc
                continue
            self._started = True
            self._options = options
            self._start_watchdog()
            return self
        raise RuntimeError(f"could not start PostgreSQL: {last}")

    def _start_watchdog(self) -> None:
        """A small process that stops the server and deletes its directory if this process
        dies without :meth:`stop` (``kill``, ``timeout``): it waits for EOF on a pipe whose
        other end only this process holds."""
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(self.data), str(self.root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to the test run does not reach it first
        )

    def restart(self, down_s: float = 0.0) -> None:
        """Stop the server (fast: open connections are cut), stay down ``down_s`` seconds,
        start it again on the same port and data (for tests of a database restart)."""
        self._run(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop"])
        time.sleep(down_s)
        self._run(
            [
                "pg_ctl",
                "-D",
                str(self.data),
                "-l",
                str(self.log_path),
                "-o",
                self._options,
                "-w",
                "-t",
                "60",
                "start",
            ]
        )

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its directory."""
        try:
            if self._started:
                self._run(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop"])
                self._started = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            if self._watchdog is not None:
                assert self._watchdog.stdin is not None
                self._watchdog.stdin.close()  # EOF: nothing left for it to do
                self._watchdog.wait(timeout=30)
                self._watchdog = None

    # -- databases -----------------------------------------------------------------------

    def dsn(self, dbname: str = "postgres") -> str:
        """A TCP DSN for ``dbname`` (usable by any process on this machine)."""
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, prefix: str = "t") -> str:
        """Create a fresh empty database and return its DSN."""
        with self._lock:
            self._counter += 1
            name = f"{prefix}_{self._counter}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def drop_database(self, dsn: str) -> None:
        """Drop the database of ``dsn`` (closing any connection still open to it)."""
        name = dsn.rsplit("/", 1)[1]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
