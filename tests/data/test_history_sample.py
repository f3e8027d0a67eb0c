"""The bounded replay history (tasks/history.py). Risks guarded: an update that reads all history
back (its cost growing with the shop's age), a reservoir whose head is not the recency-weighted
sample replay asks for, a state that goes stale when a promotion is undone or the settings
change, a damaged state trusted, and an update that sees other rows than the full history gave."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_checks.contract import with_contract_columns
from tasks import history, ledger
from tasks.training import _assemble_from_all_history, assemble_training_data, read_accepted, replay_sample
from tests.data.test_training_data import first_champion, land


def days_of_history(n_days: int = 200, per_day: int = 50) -> pd.DataFrame:
    days = pd.date_range("2026-01-01", periods=n_days, freq="D", tz="UTC")
    rows = pd.DataFrame({"event_time": days.repeat(per_day), "user_id": "u", "item_id": "i"})
    return with_contract_columns(rows)


def fold_in_pieces(settings, frame: pd.DataFrame, pieces: int) -> history.HistorySample:
    sample = history._empty(settings.replay_reservoir_rows)
    for batch_id, piece in enumerate(np.array_split(np.arange(len(frame)), pieces), start=1):
        path = settings.home / f"piece-{batch_id}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.iloc[piece].to_parquet(path, index=False)
        sample = history._fold_batch(sample, batch_id, str(path), settings)
    return sample


def test_folding_batch_by_batch_keeps_the_smallest_keys_of_the_whole_history(settings):
    settings = settings.model_copy(update={"replay_reservoir_rows": 1_500})
    frame = days_of_history()
    sample = fold_in_pieces(settings, frame, pieces=7)
    every_key = np.concatenate([
        history.keys(frame.iloc[piece], batch_id, settings.replay_half_life_days, settings.seed)
        for batch_id, piece in enumerate(np.array_split(np.arange(len(frame)), 7), start=1)
    ])
    assert len(sample.rows) == 1_500 and sample.history_rows == len(frame) and not sample.complete
    np.testing.assert_array_equal(sample.rows[history.KEY].to_numpy(), np.sort(every_key)[:1_500])


def test_the_reservoirs_head_is_the_recency_weighted_sample_replay_draws(settings):
    settings = settings.model_copy(update={"replay_reservoir_rows": 3_000})
    frame = days_of_history()
    head = fold_in_pieces(settings, frame, pieces=5).head(None, ["purchase"]).iloc[:1_000]
    now = frame["event_time"].max() + pd.Timedelta(days=1)
    recent = now - pd.Timedelta(days=30)
    # The same draw replay_sample makes from the whole history, and far from a uniform draw.
    expected = np.mean([replay_sample(frame, 1_000, 30.0, now, seed)["event_time"].ge(recent).mean() for seed in range(5)])
    assert head["event_time"].ge(recent).mean() == pytest.approx(expected, abs=0.05)
    assert expected > 0.45 > replay_sample(frame, 1_000, None, now, 0)["event_time"].ge(recent).mean()
    uniform = fold_in_pieces(settings.model_copy(update={"replay_half_life_days": None}), frame, 5).head(None, ["purchase"])
    assert uniform.iloc[:1_000]["event_time"].ge(recent).mean() < 0.25  # about 30 of 200 days


def update_after_first_champion(settings):
    first, watermark, champion = first_champion(settings)
    history.fold(settings)  # as the promotion's run does
    land(settings, range(2, 3))
    return first, watermark, champion


def test_an_update_reads_the_new_batches_and_the_sample_not_the_history(settings):
    first, watermark, champion = update_after_first_champion(settings)
    engine = ledger.connect(settings.ledger_url)
    consumed = ledger.consumed_batches(engine)
    # Batches wholly before the watermark are never read again: gone from disk, the update still assembles.
    older = [b for b in consumed if b.max_event_time is not None and pd.Timestamp(b.max_event_time) <= watermark]
    assert older
    for batch in older:
        Path(batch.accepted_path).unlink()
    update = assemble_training_data.fn(settings, champion)
    assert len(update.replay) == min(len(first.new), int(len(update.new) * settings.replay_ratio))
    assert (update.replay["event_time"] <= watermark).all() and len(update.historical)
    assert update.replay.merge(update.historical, on=["user_id", "item_id", "event_time", "order_id"]).empty


def test_an_update_sees_what_the_full_history_gave(settings):
    _, _, champion = update_after_first_champion(settings)
    engine = ledger.connect(settings.ledger_url)
    pending = ledger.unconsumed_batches(engine)
    full = _assemble_from_all_history(settings, champion, engine, pending, [read_accepted(b.accepted_path, settings) for b in pending])
    sampled = assemble_training_data.fn(settings, champion)
    pd.testing.assert_frame_equal(sampled.new, full.new)
    pd.testing.assert_frame_equal(sampled.holdout, full.holdout)
    assert set(sampled.eval_users) == set(full.eval_users)
    assert sampled.new_items == full.new_items
    # The whole history fits the reservoir: replay and the forgetting slice are drawn from all of it.
    key = ["user_id", "item_id", "event_time", "order_id"]
    assert len(sampled.replay.merge(full.replay, on=key).drop_duplicates(key)) == len(sampled.replay.drop_duplicates(key))


def test_a_promotion_undone_drops_its_rows_from_the_sample(settings):
    update_after_first_champion(settings)
    engine = ledger.connect(settings.ledger_url)
    before = history.fold(settings)
    assert before.batch_ids and len(before.rows)
    with engine.begin() as conn:  # what release_move does to a promotion's batches
        conn.execute(ledger.batches.update().values(consumed_by_version=None))
    after = history.fold(settings)
    assert after.batch_ids == frozenset() and after.rows.empty and after.users.empty


def test_a_damaged_state_or_other_settings_rebuild_it(settings):
    update_after_first_champion(settings)
    good = history.fold(settings)
    root = history.state_dir(settings)
    current = root / (root / "CURRENT").read_text().strip()
    (current / "rows.parquet").write_bytes(b"not parquet")
    rebuilt = history.fold(settings)
    pd.testing.assert_frame_equal(rebuilt.rows, good.rows)
    other = history.fold(settings.model_copy(update={"replay_half_life_days": 90.0}))
    assert not np.array_equal(other.rows[history.KEY].to_numpy(), good.rows[history.KEY].to_numpy())
    assert len(list(root.glob("v-*"))) == 1  # the older states are removed


def test_a_run_that_stopped_before_folding_is_caught_up_by_the_next_update(settings):
    first, watermark, champion = first_champion(settings)  # consumed, never folded
    land(settings, range(2, 3))
    update = assemble_training_data.fn(settings, champion)
    assert len(update.replay) == min(len(first.new), int(len(update.new) * settings.replay_ratio))
    assert history.fold(settings).batch_ids == {b.id for b in ledger.consumed_batches(ledger.connect(settings.ledger_url))}


def test_a_reservoir_smaller_than_asked_is_said(settings):
    settings = settings.model_copy(update={"replay_reservoir_rows": 300})
    _, _, champion = update_after_first_champion(settings)
    update = assemble_training_data.fn(settings, champion)
    assert len(update.replay) <= 300 and len(update.historical) <= 300
    assert any("raise replay_reservoir_rows" in note for note in update.notes)




def test_an_update_whose_replay_takes_all_history_scores_forgetting_on_that_history(settings):
    settings = settings.model_copy(update={"replay_ratio": 100.0, "forgetting_slice_rows": 300})
    first, watermark, champion = update_after_first_champion(settings)
    update = assemble_training_data.fn(settings, champion)
    assert len(update.replay) == len(first.new)  # all of it
    assert len(update.historical) == 300 and (update.historical["event_time"] <= watermark).all()
