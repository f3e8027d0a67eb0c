"""Retention through the real flows: after several updates only the newest model files remain,
and the champion (or a version rolled back to, whose cached files were pruned) still loads."""

from __future__ import annotations

import pytest

from data_checks.sources.synthetic import write_weeks
from flows.bootstrap import bootstrap
from flows.continuous_training import continuous_training
from flows.rollback import rollback
from models.recommender import Recommender
from tasks.tracking import champion_cache_dir, load_champion
from tests.conftest import TINY_SHOP
from tests.conftest import completed_run as run

pytestmark = pytest.mark.slow


def test_after_several_updates_only_the_newest_model_files_remain(settings, prefect_server):
    settings.keep_model_files = 1
    # Files of earlier runs count as idle at once (no other run is training here).
    settings.batch_lease_seconds = 0.001
    # Every week is an update, and every challenger is promoted: versions 2 and 3 come from weeks 2 and 3.
    settings.volume_threshold_rows, settings.min_improvement, settings.min_relative_improvement = 1, -1.0, -1.0
    settings.max_forgetting, settings.min_primary_metric = 1.0, 0.0

    write_weeks(settings.landing_dir, range(0, 2), config=TINY_SHOP)
    run(bootstrap, settings)
    for week in (2, 3):
        write_weeks(settings.landing_dir, range(week, week + 1), config=TINY_SHOP)
        (outcome,) = [o for o in run(continuous_training, settings)[0] if o.batch.startswith("interactions")]
        assert outcome.promoted and outcome.champion_version == str(week)

    checkpoints = sorted(p.name for p in settings.checkpoints_dir.iterdir() if not p.name.endswith(".lock"))
    assert len([n for n in checkpoints if n.endswith(".served.pt")]) == 1
    assert len([n for n in checkpoints if n.startswith("challenger-") and not n.endswith(".served.pt")]) == 1
    assert len(checkpoints) == 2, checkpoints
    # Version 2 (fetched by the last run, and @previous-champion) stays; version 1 went.
    assert champion_cache_dir(settings, "2").exists() and not champion_cache_dir(settings, "1").exists()

    champion = load_champion.fn(settings)
    assert champion.version == "3" and Recommender.load(champion.checkpoint_path).users.ids

    # Rolling back to a version whose cached files were pruned downloads them again from MLflow.
    state = rollback("version 1 was right after all", to_version="1", settings=settings, return_state=True)
    assert state.is_completed(), state.message
    champion = load_champion.fn(settings)
    assert champion.version == "1" and Recommender.load(champion.checkpoint_path).users.ids
