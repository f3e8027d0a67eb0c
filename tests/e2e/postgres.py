"""A throwaway PostgreSQL cluster for the tests that need a real one (Debian's `postgresql`
package, which .ci/run installs): a free loopback port, fsync off, removed afterwards."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port

POSTGRES_ROOT = Path("/usr/lib/postgresql")


def postgres_bin_dir() -> Path:
    """The newest installed PostgreSQL's bin directory (Debian keeps one per major version)."""
    found = [p.parent for p in POSTGRES_ROOT.glob("*/bin/pg_ctl") if p.parent.parent.name.isdigit()]
    if not found:
        pytest.fail(
            f"no PostgreSQL server binaries under {POSTGRES_ROOT}/*/bin: install Debian's `postgresql` package "
            "(`apt-get install -y --no-install-recommends postgresql`, as .ci/run does)",
            pytrace=False,
        )
    return max(found, key=lambda bin_dir: int(bin_dir.parent.name))


def run_checked(command: list, log: Path | None = None, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=120, env=env)
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
        raise RuntimeError(f"{' '.join(map(str, command))} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}\n{tail}")
    return result.stdout


@dataclass(frozen=True)
class Postgres:
    bin_dir: Path
    port: int
    password: str | None = None  # the superuser's, when connections over TCP need one

    def url(self, database: str) -> str:
        login = f"postgres:{self.password}" if self.password else "postgres"
        return f"postgresql+psycopg2://{login}@127.0.0.1:{self.port}/{database}"

    def env(self) -> dict[str, str]:
        return {**os.environ, **({"PGPASSWORD": self.password} if self.password else {})}

    def psql(self, database: str, sql: str) -> list[list[str]]:
        """Rows of ``sql`` read by psql itself, not through freshrec's or MLflow's SQLAlchemy."""
        out = run_checked(
            [self.bin_dir / "psql", "-h", "127.0.0.1", "-p", self.port, "-U", "postgres", "-d", database, "-X", "-A", "-t", "-F", "|", "-c", sql],
            env=self.env(),
        )
        return [line.split("|") for line in out.splitlines() if line]

    def dump(self, database: str) -> str:
        """The whole database as SQL text (pg_dump): everything it stores, to search."""
        return run_checked([self.bin_dir / "pg_dump", "-h", "127.0.0.1", "-p", self.port, "-U", "postgres", database], env=self.env())


@contextlib.contextmanager
def throwaway_cluster(databases: tuple[str, ...], password: str | None = None) -> Iterator[Postgres]:
    """A cluster with ``databases``; with ``password``, TCP connections authenticate (scram)."""
    bin_dir = postgres_bin_dir()
    root = Path(tempfile.mkdtemp(prefix="freshrec-postgres-"))
    # PostgreSQL refuses to run as root: then the cluster belongs to the postgres user.
    as_owner: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    data, log, port = root / "data", root / "postgres.log", free_port()
    cluster = Postgres(bin_dir, port, password)
    auth = ["-A", "trust"]
    if password:
        secret = root / "pwfile"
        secret.write_text(password + "\n")
        if as_owner:
            shutil.chown(secret, "postgres", "postgres")
        auth = ["-A", "scram-sha-256", f"--pwfile={secret}"]
    try:
        run_checked([*as_owner, bin_dir / "initdb", "-D", data, "-U", "postgres", *auth, "--auth-local", "trust", "-E", "UTF8", "--no-locale", "--no-sync"])
        # fsync off: the cluster lives for one test module, durability buys nothing here.
        options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root} -c fsync=off"
        run_checked([*as_owner, bin_dir / "pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "-t", "60", "start"], log)
        for database in databases:
            run_checked([bin_dir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", database], env=cluster.env())
        yield cluster
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_owner, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)
