"""Which rows a training sees. Risks guarded: training twice on a batch, never training on the
rows held out for evaluation, a bootstrap cut-off that leaks later data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from data_checks.sources.synthetic import EPOCH, write_weeks
from tasks import ledger
from tasks.ingest import find_new_files, validate_file
from tasks.tracking import ChampionInfo
from tasks.training import assemble_training_data, replay_sample
from tests.conftest import TINY_SHOP


def land(settings, weeks: range) -> None:
    write_weeks(settings.landing_dir, weeks, config=TINY_SHOP)
    for f in find_new_files(settings):
        validate_file(f, settings)


def test_bootstrap_cut_off_keeps_later_batches_waiting(settings):
    land(settings, range(0, 3))
    until = EPOCH + pd.Timedelta(days=14)  # weeks 0 and 1 end before it, week 2 starts at it
    data = assemble_training_data.fn(settings, None, until)
    engine = ledger.connect(settings.ledger_url)
    by_name = {b.id: b.file_name for b in ledger.all_batches(engine)}
    assert [by_name[i] for i in data.batch_ids] == ["interactions-week000.csv", "interactions-week001.csv"]
    assert data.holdout["event_time"].max() < until
    assert data.new["event_time"].max() <= data.holdout["event_time"].min()
    assert len(data.replay) == 0


def first_champion(settings):
    """Weeks 0-1 landed and consumed by a version 1 trained until their newest training row."""
    land(settings, range(0, 2))
    first = assemble_training_data.fn(settings, None)
    ledger.mark_consumed(ledger.connect(settings.ledger_url), first.batch_ids, "1")
    watermark = first.new["event_time"].max()
    return first, watermark, ChampionInfo("1", "run", Path("unused.pt"), Path("unused.parquet"), watermark, {"recall": 0.3})


def test_an_update_trains_on_the_champions_holdout_and_replays_history(settings):
    first, watermark, champion = first_champion(settings)
    engine = ledger.connect(settings.ledger_url)

    land(settings, range(2, 3))
    update = assemble_training_data.fn(settings, champion)
    seen = pd.concat([update.new, update.holdout])
    # The rows the champion held out are new to it, so this update trains on or evaluates them.
    assert len(seen) == len(first.holdout) + ledger.unconsumed_batches(engine)[0].rows_accepted
    assert (update.replay["event_time"] <= watermark).all()
    assert len(update.replay) == min(len(first.new), int(len(update.new) * settings.replay_ratio))


def test_replay_with_a_half_life_draws_recent_history_more_often():
    days = pd.date_range("2026-01-01", periods=200, freq="D", tz="UTC")
    history = pd.DataFrame({"event_time": days.repeat(50), "user_id": "u", "item_id": "i"})
    now = days[-1] + pd.Timedelta(days=1)
    uniform = replay_sample(history, 1000, None, now, seed=0)
    recent = replay_sample(history, 1000, 30.0, now, seed=0)
    assert len(uniform) == len(recent) == 1000 and not recent.index.duplicated().any()
    last_month = history["event_time"] >= now - pd.Timedelta(days=30)
    assert uniform["event_time"].ge(now - pd.Timedelta(days=30)).mean() < 0.25  # about 30 of 200 days
    assert recent["event_time"].ge(now - pd.Timedelta(days=30)).mean() > 0.45  # half the mass within one half-life
    assert len(replay_sample(history[last_month], 10_000, 30.0, now, seed=0)) == last_month.sum()  # never more than there is


def test_a_full_retrain_replays_all_history(settings):
    land(settings, range(0, 2))
    first = assemble_training_data.fn(settings, None)
    ledger.mark_consumed(ledger.connect(settings.ledger_url), first.batch_ids, "1")
    champion = ChampionInfo("1", "run", Path("unused.pt"), Path("unused.parquet"), first.new["event_time"].max(), {"recall": 0.3})
    land(settings, range(2, 3))
    update = assemble_training_data.fn(settings.model_copy(update={"init_from": "scratch"}), champion)
    assert len(update.replay) == len(first.new)  # every row up to the champion's watermark


def test_the_forgetting_and_cold_start_slices(settings):
    settings = settings.model_copy(update={"replay_ratio": 0.5, "forgetting_slice_rows": 800})
    first, watermark, champion = first_champion(settings)
    write_weeks(settings.landing_dir, range(2, 3), drift_from_week=2, config=TINY_SHOP)  # new items appear
    for f in find_new_files(settings):
        validate_file(f, settings)

    # Hold out most of the drifted week, so some new items are first bought inside the holdout.
    update = assemble_training_data.fn(settings.model_copy(update={"holdout_fraction": 0.8}), champion)
    key = ["user_id", "item_id", "event_time"]
    history = first.new  # what the champion trained on: the part of the history before its watermark
    # Historical: earlier rows, none of them replayed, at most forgetting_slice_rows.
    assert len(update.historical) == 800
    assert (update.historical["event_time"] <= watermark).all()
    assert update.historical.merge(update.replay, on=key).empty
    assert len(update.historical.merge(history, on=key)) >= 800  # all from history (duplicate keys may repeat)
    # Cold start: holdout items nobody bought before the holdout, and only those.
    bought_before = set(history["item_id"]) | set(first.holdout["item_id"]) | set(update.new["item_id"])
    assert update.new_items == set(update.holdout["item_id"]) - bought_before
    assert update.new_items  # the drifted week's new items


def land_funnel(settings, weeks: range) -> None:
    from data_checks.sources import funnel
    from data_checks.sources.mapping import load_mapping, write_landing

    export = settings.home / "export"
    written = funnel.write_weeks(export, weeks, config=funnel.FunnelConfig(n_visitors=200, n_items=80, n_new_items=10))
    write_landing(load_mapping(export / funnel.MAPPING_PATH.name), settings.landing_dir, [p for p in written if p.name.startswith("events-")])
    for f in find_new_files(settings):
        validate_file(f, settings)


def test_a_type_of_weight_zero_never_reaches_training_but_stays_accepted(settings):
    land_funnel(settings, range(0, 2))
    every = assemble_training_data.fn(settings, None)
    assert set(pd.concat([every.new, every.holdout])["event_type"]) == {"view", "add_to_cart", "purchase"}
    purchases_only = assemble_training_data.fn(settings.model_copy(update={"view_weight": 0.0, "add_to_cart_weight": 0.0}), None)
    assert set(pd.concat([purchases_only.new, purchases_only.holdout])["event_type"]) == {"purchase"}
    accepted = sum(b.rows_accepted for b in ledger.all_batches(ledger.connect(settings.ledger_url)) if b.kind == "interactions")
    assert every.rows == accepted > purchases_only.rows  # the ledger still holds every accepted row


def test_an_accepted_file_written_before_columns_were_optional_reads_as_purchases(settings):
    land(settings, range(0, 2))
    for batch in ledger.all_batches(ledger.connect(settings.ledger_url)):
        if batch.kind == "interactions":  # as earlier versions wrote them: no event type, order sizes as int64
            pd.read_parquet(batch.accepted_path).drop(columns=["event_type"]).to_parquet(batch.accepted_path, index=False)
    data = assemble_training_data.fn(settings, None)
    assert (pd.concat([data.new, data.holdout])["event_type"] == "purchase").all()
