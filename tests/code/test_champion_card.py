"""The champion card: what a later run reads of a trained version, one typed file written with
its training run, instead of parameter and metric names read back one by one.

Risks guarded: a malformed or foreign card read as if it were one (decay measured against a
made-up holdout score); a version trained before cards existed that can no longer be a
champion; a champion whose primary metric is not recall measured for decay on recall.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from tasks.tracking import CARD_ARTIFACT, ChampionCard, ChampionInfo, champion_card


def test_a_card_reads_back_as_written():
    card = ChampionCard("2011-11-30T17:00:00+00:00", 20, "purchase", {"recall": 0.31, "ndcg": 0.2, "hit_rate": 0.5, "mrr": 0.1}, [3, 4])
    assert ChampionCard.from_json(card.to_json()) == card


@pytest.mark.parametrize(
    "text",
    ["not json", "[]", '{"eval_k": 20}', '{"trained_until": "yesterday at noon", "eval_k": 20, "target_event": "purchase", "holdout": {"recall": 0.1}}',
     '{"trained_until": "2011-01-01", "eval_k": "twenty", "target_event": "purchase", "holdout": {"recall": 0.1}}',
     '{"trained_until": "2011-01-01", "eval_k": 20, "target_event": "purchase", "holdout": {"ndcg": 0.1}}',
     '{"trained_until": "2011-01-01", "eval_k": 20, "target_event": "purchase", "holdout": {"recall": "high"}}'],
)
def test_a_malformed_card_is_refused_by_name(text):
    with pytest.raises(ValueError, match="not a champion card"):
        ChampionCard.from_json(text)


def test_the_holdout_score_of_the_primary_metric():
    info = ChampionInfo("1", "run", Path("m.pt"), Path("r.parquet"), pd.Timestamp("2011-01-01"), {"recall": 0.3, "ndcg": 0.2})
    assert info.holdout_score("recall") == 0.3 and info.holdout_score("ndcg") == 0.2


def test_a_version_from_before_cards_gets_one_from_its_run(tmp_path):
    """A registry's older versions stay usable: their card is made from the run's parameters
    and metrics, once, and kept beside their cached files."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("old", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment)
    client.log_param(run.info.run_id, "trained_until", "2011-06-30 12:00:00+00:00")
    client.log_param(run.info.run_id, "eval_k", "20")
    client.log_metric(run.info.run_id, "challenger_recall", 0.25)
    client.log_metric(run.info.run_id, "challenger.newest.ndcg", 0.125)
    cache = tmp_path / "cache"
    cache.mkdir()
    card = champion_card(client, run.info.run_id, cache)
    assert card.holdout == {"recall": 0.25, "ndcg": 0.125} and pd.Timestamp(card.trained_until) == pd.Timestamp("2011-06-30T12:00:00Z")
    assert ChampionCard.from_json((cache / CARD_ARTIFACT).read_text()) == card


def test_a_card_in_the_run_wins_over_its_parameters(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("new", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment)
    client.log_param(run.info.run_id, "trained_until", "2000-01-01")  # not what the card says
    written = ChampionCard("2011-06-30T12:00:00+00:00", 20, "purchase", {"recall": 0.4, "ndcg": 0.3, "hit_rate": 0.6, "mrr": 0.2})
    (tmp_path / CARD_ARTIFACT).write_text(written.to_json())
    client.log_artifact(run.info.run_id, str(tmp_path / CARD_ARTIFACT))
    cache = tmp_path / "cache"
    cache.mkdir()
    assert champion_card(client, run.info.run_id, cache) == written
