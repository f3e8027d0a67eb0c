"""Shared fixtures. Every test gets its own freshrec home; nothing touches the network."""

from __future__ import annotations

import multiprocessing
import os
import socket
from pathlib import Path
from typing import Callable

import pytest

# A developer's own deployment settings must not leak into the tests.
for _name in list(os.environ):
    if _name.startswith("FRESHREC_") or _name in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        del os.environ[_name]
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

# Item titles' MiniLM vectors, shared by every test's home and child process (the settings'
# title_cache_dir): a title is encoded once per test session, not once per home. The tests of the
# cache itself (tests/model/test_title_cache.py) use directories of their own.
SHARED_TITLE_CACHE = Path(__file__).resolve().parents[1] / ".pytest_cache" / "freshrec-title-vectors"
os.environ["FRESHREC_TITLE_CACHE_DIR"] = str(SHARED_TITLE_CACHE)
# What a test adds to the environment it builds for a child process that runs a flow.
CHILD_ENV = {"FRESHREC_TITLE_CACHE_DIR": str(SHARED_TITLE_CACHE)}

from data_checks.sources.synthetic import ShopConfig  # noqa: E402
from models.settings import Settings  # noqa: E402

# A shop small enough that a bootstrap and two updates run in seconds on two CPU cores.
TINY_SHOP = ShopConfig(n_users=300, n_items=150, n_new_items=40, orders_per_week=500)
# Settings scaled to TINY_SHOP (about 2.5k rows a week). Tests write whole landing files, so they
# need not wait for files to settle.
TINY_SHOP_SETTINGS = dict(
    volume_threshold_rows=4_000, min_new_rows=500, reference_sample_rows=5_000, scratch_epochs=6, finetune_epochs=3, batch_size=256,
    landing_settle_seconds=0,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# What a process forked for a test (race, the crash windows' killed runs) needs imported, loaded
# once into the fork server of a test worker.
FORK_PRELOAD = ["flows.bootstrap", "flows.continuous_training", "flows.rollback", "great_expectations", "evidently", "tests.conftest"]


def fork_context():
    """multiprocessing's "forkserver" context: each process is forked from a server, one per test
    worker, that has imported ``FORK_PRELOAD`` and done nothing else. No client, engine or
    connection is shared with the test or between the processes, as in a fresh interpreter,
    without importing the libraries again in each one (seconds apiece). The server's environment
    is the one of the moment it started: run targets through ``in_environment``."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(FORK_PRELOAD)  # used when this worker's fork server starts
    return context


def race(target: Callable, argument_lists: list[tuple], timeout: float = 300) -> list:
    """Run ``target(barrier, results, *arguments)`` in one new process per argument list (from
    ``fork_context``, in the test's environment), all released at once by the barrier; returns
    what each put on ``results``."""
    context = fork_context()
    barrier, results = context.Barrier(len(argument_lists)), context.Queue()
    environment = dict(os.environ)
    processes = [
        context.Process(target=in_environment, args=(environment, target, barrier, results, *arguments)) for arguments in argument_lists
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=timeout) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    return outcomes


def in_environment(environment: dict[str, str], target: Callable, *arguments) -> None:
    """``target(*arguments)`` with ``environment`` as the process's environment: the fork server's
    is the one of the moment it started, not the test's."""
    os.environ.clear()
    os.environ.update(environment)
    target(*arguments)


def completed_run(flow, settings):
    """Run ``flow`` on ``settings``; it must end Completed. Returns its result and message."""
    state = flow(settings, return_state=True)
    assert state.is_completed(), state.message
    return state.result(), state.message


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The end-to-end files first, then the other slow files, then the rest, each group in
    collection order. `make test` hands files to its workers in this order
    (`--no-loadscope-reorder`): the files that run for minutes start at once and the quick ones
    fill the gaps at the end, rather than one worker running the last long file alone."""
    groups: dict[Path, int] = {}
    for item in items:  # a file's group is that of its slowest test, so a file stays in one piece
        slow = item.get_closest_marker("slow") is not None
        group = (0 if item.path.parent.name == "e2e" else 1) if slow else 2
        groups[item.path] = min(group, groups.get(item.path, 2))
    items.sort(key=lambda item: groups[item.path])  # stable: within a group, the order pytest collected


@pytest.fixture(autouse=True)
def no_tracking_uri_left_behind():
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, which Settings honours: without this,
    one test's store would become a later test's default, whichever tests ran before."""
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def empty_mlflow_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store as MLflow creates it (its tables, no experiment of freshrec's):
    MLflow's schema migrations take seconds, so a test's home starts from a copy of this one."""
    import sqlite3

    from mlflow import MlflowClient

    made = tmp_path_factory.mktemp("mlflow-store") / "made.db"
    uri = f"sqlite:///{made}"
    MlflowClient(uri, registry_uri=uri).search_registered_models()  # both schemas, migrated
    at_rest = made.with_name("mlflow.db")
    with sqlite3.connect(made) as reader, sqlite3.connect(at_rest) as writer:
        reader.backup(writer)
    writer.close()
    reader.close()
    return at_rest


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_mlflow_store: Path) -> Settings:
    """Settings scaled to TINY_SHOP, in a home of the test's own (its MLflow store a copy of
    ``empty_mlflow_store``)."""
    import shutil

    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, which Settings honours: without this,
    # one test's store would become the next test's default.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    home = tmp_path / "freshrec"
    home.mkdir()
    shutil.copyfile(empty_mlflow_store, home / "mlflow.db")
    return Settings(home=home, **TINY_SHOP_SETTINGS)


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server for every test that runs a real flow."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    # No flow run heartbeats (they tell a server a run is alive; no test reads them): Prefect
    # 3.9 waits up to a second for the heartbeat thread at the end of every flow run and subflow.
    with prefect_test_harness(server_startup_timeout=120), temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def mirror_home(source: Path, home: Path) -> None:
    """Make ``home`` hold what ``source`` holds, in place. SQLite databases are written through
    SQLite's backup API, so the engines this process keeps open on them (the ledger's, MLflow's)
    read the new content; every other file is copied; what ``source`` lacks is removed (a
    killed run's journal and files among them). Both homes must be at rest."""
    import shutil
    import sqlite3

    databases = sorted(p.relative_to(source) for p in source.rglob("*.db"))
    for relative in databases:
        (home / relative).parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(source / relative) as reader, sqlite3.connect(home / relative) as writer:
            reader.backup(writer)
        writer.close()
        reader.close()
    kept = {p.relative_to(source) for p in source.rglob("*")}
    for path in sorted(home.rglob("*"), reverse=True):  # children before their folders
        relative = path.relative_to(home)
        if relative in kept and path.is_dir() == (source / relative).is_dir():
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for relative in sorted(kept):
        if relative in databases:
            continue
        if (source / relative).is_dir():
            (home / relative).mkdir(parents=True, exist_ok=True)
        else:
            shutil.copy2(source / relative, home / relative)


class HomeAtRest:
    """A home a module builds once (``root/freshrec``) and a copy of it at rest: ``keep`` takes
    the copy, ``restore`` puts the home back as it was then, in place, before each test."""

    def __init__(self, root: Path) -> None:
        self.home, self.at_rest = root / "freshrec", root / "at-rest"

    def keep(self) -> "HomeAtRest":
        mirror_home(self.home, self.at_rest)
        return self

    def restore(self) -> Path:
        mirror_home(self.at_rest, self.home)
        return self.home
