"""An event stream of views, carts and purchases, without price, country, quantity or order,
landed through its mapping file and run through the real flows (a temporary Prefect server, an
MLflow SQLite store).

Risks guarded: a source without the sale columns that cannot land or train, views scored as
purchases, drift that breaks on absent columns, a row of the export lost between the shop's
file and the ledger.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from data_checks.contract import REASON_COLUMN
from data_checks.sources import funnel
from data_checks.sources.mapping import load_mapping, write_landing
from flows.bootstrap import bootstrap
from flows.continuous_training import continuous_training
from models.pyfunc import recommend
from models.recommender import Recommender
from tasks import ledger
from tasks.tracking import load_champion
from tests.conftest import completed_run as run

pytestmark = pytest.mark.slow
TINY_FUNNEL = funnel.FunnelConfig(n_visitors=400, n_items=150, n_new_items=40)


def test_a_view_cart_purchase_stream_lands_through_its_mapping_and_keeps_the_champion_fresh(settings, prefect_server, tmp_path):
    export = tmp_path / "export"
    funnel.write_weeks(export, range(6), drift_from_week=4, config=TINY_FUNNEL, bad_rows_weeks=(3,))
    mapping = load_mapping(export / funnel.MAPPING_PATH.name)
    weeks = sorted(export.glob("events-week*.csv"))

    def land(*numbers: int) -> list[Path]:
        return write_landing(mapping, settings.landing_dir, files=[weeks[n] for n in numbers])

    land(0, 1)
    outcomes, _ = run(bootstrap, settings)
    assert outcomes[-1].promoted and outcomes[-1].champion_version == "1"
    engine = ledger.connect(settings.ledger_url)
    first = [b for b in ledger.all_batches(engine) if b.kind == "interactions"]
    accepted = pd.concat([pd.read_parquet(b.accepted_path) for b in first])
    counts = accepted["event_type"].value_counts()
    assert set(counts.index) == {"view", "add_to_cart", "purchase"}
    assert counts["view"] > counts["add_to_cart"] > counts["purchase"] > 0  # a funnel
    assert accepted[["quantity", "price", "order_id", "country"]].isna().all().all()
    report = Path(first[0].report_path).read_text(encoding="utf-8")
    assert "Not applicable" in report and "price_present" in report and "order_single_user" in report

    # Week 3 has spoilt rows (a missing visitor, an unknown action, unreadable and future times:
    # the adapter lands those with the first week it converts and in the ISO week of 2100-01-01).
    landed = land(2, 3)
    assert any(path.name.endswith("2099-W53.csv") for path in landed)
    outcomes, _ = run(continuous_training, settings)
    week3 = next(o for o in outcomes if o.batch.endswith("2026-W05.csv"))
    assert week3.status == "partially_accepted"
    names = {path.name for path in landed}
    spoilt = pd.concat([pd.read_parquet(b.quarantine_path) for b in ledger.all_batches(engine) if b.file_name in names and b.quarantine_path])
    reasons = set(";".join(spoilt[REASON_COLUMN]).split(";"))
    assert {"anonymous_user", "event_type_known", "event_time_present"} <= reasons
    future = next(o for o in outcomes if o.batch.endswith("2099-W53.csv"))  # every row of it dated 2100
    assert future.status == "rejected" and future.rows_quarantined == future.rows_in > 0
    updated = [o for o in outcomes if o.update]
    assert updated, [o.reasons for o in outcomes]
    # The gate says what it scored, and the run records it with the weights it trained with.
    assert any("Recall@20 (purchase events)" in r for o in updated for r in o.reasons)
    params = MlflowClient(settings.mlflow_tracking_uri).get_run(updated[-1].mlflow_run_id).data.params
    assert params["target_event"] == "purchase" and float(params["view_weight"]) == settings.view_weight

    # New items and a change of taste from week 4: drift on the columns an event stream has.
    land(4, 5)
    outcomes, _ = run(continuous_training, settings)
    drifted = [o for o in outcomes if o.drift_share is not None and o.drift_share >= settings.drift_share_threshold]
    assert drifted and drifted[0].update, [(o.batch, o.drift_share, o.reasons) for o in outcomes]
    assert not {"price", "quantity", "country", "basket_size"} & {c for o in outcomes for c in o.drifted_columns}

    # Every row of the shop's export is in the ledger, accepted or quarantined.
    batches = [b for b in ledger.all_batches(engine) if b.kind == "interactions"]
    assert all(b.rows_in == b.rows_accepted + b.rows_quarantined for b in batches)
    exported = sum(len(pd.read_csv(path)) for path in weeks)
    assert sum(b.rows_in for b in batches) == exported

    # The champion recommends to a visitor who has only browsed.
    champion = Recommender.load(load_champion.fn(settings).checkpoint_path)
    browsers = accepted.groupby("user_id")["event_type"].agg(set)
    visitor = browsers[browsers.map(lambda types: types == {"view"})].index[0]
    answer = recommend(champion, pd.DataFrame({"user_id": [visitor], "k": [5]}))
    assert answer["rank"].tolist() == [1, 2, 3, 4, 5] and set(answer["item_id"]) <= set(champion.items.ids)
