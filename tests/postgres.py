"""A throwaway PostgreSQL server for the tests: initdb into a temporary folder, loopback only.

Debian's ``postgresql`` package puts ``initdb``/``postgres`` under ``/usr/lib/postgresql/<version>/bin``
(not on PATH); the Makefile installs it on a clean CI machine. PostgreSQL refuses to run as root, and CI
runs as root, so there the server runs as the unprivileged ``postgres`` user (created when missing)
via ``setpriv`` (which execs, so signals reach the server). Durability is off (fsync,
synchronous_commit, full_page_writes): the data is thrown away.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

START_TIMEOUT_S = 60.0
"""Safety net for the server to accept connections; it takes about a second."""

TEMPLATE = "tf_template"
"""The session's database migrated to the head once; ``postgres_url`` copies it per test."""


def find_bin_dir() -> Path | None:
    """The newest PostgreSQL server's bin folder, or None when none is installed."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    """One ``postgres`` process over one data folder; :meth:`stop` and :meth:`start` keep the data."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        root = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None
        self.folder = Path(tempfile.mkdtemp(prefix="tuneforge-pg-", dir=root))
        self.data = self.folder / "data"
        self.port = _free_port()
        self.user = "tuneforge"
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]
            if not _user_exists("postgres"):
                subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)
            shutil.chown(self.folder, "postgres")
        self.folder.chmod(0o700)
        self._process: subprocess.Popen[bytes] | None = None
        self._log = self.folder / "postgres.log"
        initdb = [str(bin_dir / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8"]
        made = subprocess.run([*self._as, *initdb, "--no-sync", "--no-instructions"], capture_output=True, text=True)
        if made.returncode != 0:
            raise RuntimeError(f"initdb failed ({made.returncode}): {made.stderr.strip()}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.folder),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "300",
        }
        argv = [*self._as, str(self.bin_dir / "postgres"), "-D", str(self.data)]
        for name, value in options.items():
            argv += ["-c", f"{name}={value}"]
        with open(self._log, "ab") as log:
            self._process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"postgres exited at start: {self._log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                if self._accepts():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"postgres did not accept connections: {self._log.read_text()[-2000:]}")

    def _accepts(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres"):
                return True
        except psycopg.OperationalError:
            return False

    def stop(self) -> None:
        """Fast shutdown (SIGINT): open connections are cut, as when the database host goes away."""
        if self._process is None:
            return
        self._process.send_signal(2)
        self._process.wait(timeout=START_TIMEOUT_S)
        self._process = None

    def create_database(self, *, template: str | None = None, name: str | None = None) -> str:
        """A new empty database (or a copy of ``template``); returns its SQLAlchemy URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return self.url(name)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
