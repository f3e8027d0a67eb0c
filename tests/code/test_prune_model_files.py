"""Retention of model files: which ones go, and that pruning never touches what a run needs.
Risks guarded: a disk filled by checkpoints nobody reads, and a pruning that deletes the serving
champion's files, another run's training, or anything outside checkpoints/ and the cache."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from prefect.logging import disable_run_logger

from tasks import training
from tasks.tracking import cached_checkpoint_path
from tasks.training import UNFINISHED, ModelFile, files_to_prune, model_files, prune, prune_model_files

NOW = 1_000_000.0


def listing(*entries: tuple[str, str, float]) -> list[ModelFile]:
    return [ModelFile(Path(path), kind, mtime, 1) for path, kind, mtime in entries]


@pytest.mark.parametrize(
    "files, protected, keep, doomed",
    [
        pytest.param(  # the newest `keep` of each kind stay, the others go, oldest first
            listing(("c/a", "challenger", 1), ("c/b", "challenger", 3), ("c/c", "challenger", 2), ("c/a.s", "served", 1)),
            set(), 1, ["c/a", "c/c"], id="newest-per-kind",
        ),
        pytest.param(
            listing(("c/a", "challenger", 1), ("c/b", "challenger", 2)), set(), 2, [], id="no-more-than-keep",
        ),
        pytest.param(  # the champion's checkpoint lies inside its cache entry: the entry stays
            listing(("h/v1", "champion", 1), ("h/v2", "champion", 2), ("h/v3", "champion", 3)),
            {Path("h/v1/model/artifacts/recommender.pt")}, 1, ["h/v2"], id="protected-folder",
        ),
        pytest.param(
            listing(("c/a", "challenger", 1), ("c/b", "challenger", 2)), {Path("c/a")}, 1, [], id="protected-file",
        ),
        pytest.param(  # changed since in_use_since (NOW - 10): another run may be training on them
            listing(("c/t1", "progress", NOW - 5), ("c/t2", "progress", NOW - 3), ("c/t3", "progress", NOW - 100), ("c/t4", "progress", NOW - 50)),
            set(), 1, ["c/t3", "c/t4"], id="in-use",
        ),
        pytest.param(
            listing((f"c/.torchrun-a{training.DELETING}1-x", UNFINISHED, 1)), set(), 3, [f"c/.torchrun-a{training.DELETING}1-x"], id="unfinished",
        ),
        pytest.param([], set(), 1, [], id="nothing"),
    ],
)
def test_files_to_prune(files, protected, keep, doomed):
    assert [str(f.path) for f in files_to_prune(files, protected, keep, NOW - 10)] == doomed


def test_old_files_go_oldest_first_whatever_the_listing_order():
    files = listing(*((f"c/{i}", "challenger", float(i)) for i in (5, 2, 9, 1, 7)))
    assert [f.mtime for f in files_to_prune(files, set(), 2, NOW)] == [1.0, 2.0, 5.0]


def _touch(path: Path, age_seconds: float, content: bytes = b"model") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.suffix and not path.name.endswith(".pt"):
        path.mkdir(exist_ok=True)
        (path / "inside.bin").write_bytes(content)
        os.utime(path / "inside.bin", (time.time() - age_seconds,) * 2)
    else:
        path.write_bytes(content)
    os.utime(path, (time.time() - age_seconds,) * 2)
    return path


@pytest.fixture
def home_with_model_files(settings):
    """Three runs' files in checkpoints/, three cached versions, and things pruning must not touch."""
    settings.keep_model_files = 1
    checkpoints, cache = settings.checkpoints_dir, settings.home / "cache"
    for age, key in ((300, "aaa"), (200, "bbb"), (100, "ccc")):
        _touch(checkpoints / f"challenger-{key}.pt", age)
        _touch(checkpoints / f"challenger-{key}.served.pt", age)
        _touch(checkpoints / f"training-{key}.pt", age)
        _touch(checkpoints / f"torchrun-{key}", age)
    for age, version in ((300, 1), (200, 2), (100, 3)):
        _touch(cache / f"{settings.registered_model_name}-v{version}" / "model" / "artifacts" / "recommender.pt", age)
        os.utime(cache / f"{settings.registered_model_name}-v{version}" / "model" / "artifacts", (time.time() - age,) * 2)
        os.utime(cache / f"{settings.registered_model_name}-v{version}" / "model", (time.time() - age,) * 2)
        os.utime(cache / f"{settings.registered_model_name}-v{version}", (time.time() - age,) * 2)
    outside = _touch(settings.home / "elsewhere" / "challenger-fff.pt", 999)
    (checkpoints / "challenger-ddd.pt").symlink_to(outside)
    os.utime(checkpoints / "challenger-ddd.pt", (time.time() - 999,) * 2, follow_symlinks=False)
    _touch(checkpoints / "my-own-model.pt", 999)  # a name freshrec does not write
    _touch(cache / "text" / "vectors.npy", 999)  # the title vectors' cache
    _touch(cache / "other-model-v1" / "model" / "m.pt", 999)  # another registered model's entry
    return settings


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_prune_keeps_the_newest_of_each_kind_and_what_is_protected(home_with_model_files):
    settings = home_with_model_files
    champion = cached_checkpoint_path(settings, "1")  # rolled back to the oldest version
    pruning = prune(settings, {champion}, in_use_since=time.time() - 150)
    assert pruning.failed == []
    assert names(settings.checkpoints_dir) == sorted(
        ["challenger-ccc.pt", "challenger-ccc.served.pt", "training-ccc.pt", "torchrun-ccc", "challenger-ddd.pt", "my-own-model.pt"]
    )
    assert names(settings.home / "cache") == sorted(
        [f"{settings.registered_model_name}-v1", f"{settings.registered_model_name}-v3", "text", "other-model-v1"]
    )
    assert champion.read_bytes() == b"model"
    assert (settings.home / "elsewhere" / "challenger-fff.pt").exists()  # a link is never followed
    assert sum(f.size for f in pruning.deleted) == 4 * 2 * len(b"model") + len(b"model")  # 8 files in checkpoints/, one cached


def test_files_changed_since_the_run_began_or_within_the_lease_stay(home_with_model_files):
    settings = home_with_model_files
    prune(settings, set(), in_use_since=time.time() - 250)
    assert {p.name for p in settings.checkpoints_dir.glob("challenger-*.pt")} >= {"challenger-bbb.pt", "challenger-ccc.pt"}
    assert not (settings.checkpoints_dir / "challenger-aaa.pt").exists()


def test_a_deletion_that_fails_is_reported_and_the_others_go_on(home_with_model_files, monkeypatch):
    settings = home_with_model_files
    real = training._remove

    def refusing(path: Path) -> None:
        if path.name == "challenger-aaa.pt":
            raise PermissionError(13, "Permission denied")
        real(path)

    monkeypatch.setattr(training, "_remove", refusing)
    pruning = prune(settings, set(), in_use_since=time.time() - 50)
    ((failed, why),) = pruning.failed
    assert failed.path.name == "challenger-aaa.pt" and "Permission denied" in why
    assert not (settings.checkpoints_dir / "challenger-bbb.pt").exists() and len(pruning.deleted) == 9


def test_a_folder_is_renamed_away_before_it_is_removed_and_a_dead_pruning_is_finished(home_with_model_files, monkeypatch):
    settings = home_with_model_files
    entry = settings.home / "cache" / f"{settings.registered_model_name}-v1"

    def dying(path, *args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(training.shutil, "rmtree", dying)
    prune(settings, set(), in_use_since=time.time() - 50)
    assert not entry.exists()  # never a half-removed entry that load_champion would trust
    (left,) = [p for p in (settings.home / "cache").iterdir() if p.name.startswith(f".{entry.name}{training.DELETING}")]
    monkeypatch.undo()
    assert [f.kind for f in model_files(settings) if f.path == left] == [UNFINISHED]
    prune(settings, set(), in_use_since=time.time() + 1)
    assert not left.exists() and not [p for p in (settings.home / "cache").iterdir() if training.DELETING in p.name]


def test_the_task_prunes_checkpoints_but_not_the_cache_when_the_registry_does_not_answer(home_with_model_files, monkeypatch):
    settings = home_with_model_files
    settings.batch_lease_seconds = 50

    def unreachable(settings):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(training, "aliased_versions", unreachable)
    with disable_run_logger():
        pruning = prune_model_files.fn(settings)
    assert {f.kind for f in pruning.deleted} == {"challenger", "served", "progress", "torchrun"}
    assert len(list((settings.home / "cache").glob(f"{settings.registered_model_name}-v*"))) == 3


def test_the_task_never_raises(settings, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(training, "aliased_versions", lambda settings: {})
    monkeypatch.setattr(training, "prune", broken)
    with disable_run_logger():
        assert prune_model_files.fn(settings) is None
