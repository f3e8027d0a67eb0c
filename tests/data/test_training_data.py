"""Which rows a training sees. Risks guarded: training twice on a batch, never training on the
rows held out for evaluation, a bootstrap cut-off that leaks later data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from data_checks.sources.synthetic import EPOCH, write_weeks
from tasks import ledger
from tasks.ingest import find_new_files, validate_file
from tasks.tracking import ChampionInfo
from tasks.training import assemble
from tests.conftest import TINY_SHOP


def land(settings, weeks: range) -> None:
    write_weeks(settings.landing_dir, weeks, config=TINY_SHOP)
    for f in find_new_files(settings):
        validate_file(f, settings)


def test_bootstrap_cut_off_keeps_later_batches_waiting(settings):
    land(settings, range(0, 3))
    until = EPOCH + pd.Timedelta(days=14)  # weeks 0 and 1 end before it, week 2 starts at it
    data = assemble(settings, None, until)
    engine = ledger.connect(settings.ledger_url)
    by_name = {b.id: b.file_name for b in ledger.all_batches(engine)}
    assert [by_name[i] for i in data.batch_ids] == ["interactions-week000.csv", "interactions-week001.csv"]
    assert data.holdout["event_time"].max() < until
    assert data.new["event_time"].max() <= data.holdout["event_time"].min()
    assert len(data.replay) == 0


def test_an_update_trains_on_the_champions_holdout_and_replays_history(settings):
    land(settings, range(0, 2))
    first = assemble(settings, None)
    engine = ledger.connect(settings.ledger_url)
    ledger.mark_consumed(engine, first.batch_ids, "1")
    watermark = first.new["event_time"].max()
    champion = ChampionInfo("1", "run", Path("unused.pt"), Path("unused.parquet"), watermark, 0.3)

    land(settings, range(2, 3))
    update = assemble(settings, champion)
    seen = pd.concat([update.new, update.holdout])
    # The rows the champion held out are new to it, so this update trains on or evaluates them.
    assert len(seen) == len(first.holdout) + ledger.unconsumed_batches(engine)[0].rows_accepted
    assert (update.replay["event_time"] <= watermark).all()
    assert len(update.replay) == min(len(first.new), int(len(update.new) * settings.replay_ratio))
