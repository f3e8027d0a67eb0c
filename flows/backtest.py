"""The backtest flow: does the update policy pay? History replayed through the real pipeline.

    python -m flows backtest --source online-retail --period month
    python -m flows backtest --source synthetic
    python -m flows backtest --source funnel

Every policy (never update, retrain from scratch every period, incremental every period,
triggered incremental) and every peer (recent popularity, repeat purchase, item-kNN, TIFU-KNN, UP-CF@r, ALS) is
scored prequentially on each test period; the report (JSON and a plot) is written and logged to
MLflow. See flows/backtest_harness.py for the protocol.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

from data_checks.markup import md_text
from data_checks.sources import funnel
from data_checks.sources.mapping import load_mapping, write_landing
from data_checks.sources.synthetic import ShopConfig, write_weeks
from models.settings import Settings
from flows import backtest_harness as bt

ONLINE_RETAIL_BOOTSTRAP = ["2010-12"]
ONLINE_RETAIL_TESTS = [f"2011-{m:02d}" for m in range(1, 12)]  # December 2011 is a partial month


def online_retail_periods(data_path: Path, work: Path, period: str) -> tuple[list[bt.Period], list[bt.Period]]:
    """Bootstrap on December 2010, test months 2011-01 to 2011-11 (or the ISO weeks of the same span)."""
    from data_checks.sources.online_retail import write_landing

    if not data_path.exists():
        raise FileNotFoundError(f"{data_path} not found: pass the UCI Online Retail file (online_retail.csv.gz)")
    source = work / "source"
    written = write_landing(data_path, source, period)
    catalog = next(p for p in written if p.name.startswith("catalog-"))
    by_label = {re.sub(r"^interactions-online-retail-(.+)\.csv$", r"\1", p.name): p for p in written if p != catalog}
    if period == "month":
        boot_labels, test_labels = ONLINE_RETAIL_BOOTSTRAP, ONLINE_RETAIL_TESTS
    else:  # ISO weeks: those of 2010 for the bootstrap, then up to 2011-W47, the last to end in November
        labels = sorted(by_label)
        boot_labels = [label for label in labels if label < "2011-W01"]
        test_labels = [label for label in labels if "2011-W01" <= label <= "2011-W47"]
    bootstrap = [bt.Period(label, (catalog, by_label[label])) for label in boot_labels]
    tests = [bt.Period(label, (by_label[label],)) for label in test_labels]
    return bootstrap, tests


def synthetic_periods(work: Path, weeks: int, bootstrap_weeks: int, drift_from_week: int | None, shop: ShopConfig, seed: int) -> tuple[list[bt.Period], list[bt.Period]]:
    written = write_weeks(work / "source", range(weeks), seed=seed, drift_from_week=drift_from_week, config=shop)
    periods = []
    for week in range(weeks):
        files = tuple(sorted((p for p in written if p.stem.endswith(f"week{week:03d}")), key=lambda p: not p.name.startswith("catalog-")))
        periods.append(bt.Period(f"week{week:03d}", files))
    return periods[:bootstrap_weeks], periods[bootstrap_weeks:]


def funnel_periods(work: Path, weeks: int, bootstrap_weeks: int, drift_from_week: int | None, shop: funnel.FunnelConfig, seed: int) -> tuple[list[bt.Period], list[bt.Period]]:
    """The funnel shop's export, landed through its mapping file as a user's own export would be:
    one interactions file per ISO week, the catalog with the first."""
    export, source = work / "export", work / "source"
    for folder in (export, source):  # landing files are immutable: start from none
        shutil.rmtree(folder, ignore_errors=True)
    funnel.write_weeks(export, range(weeks), seed=seed, drift_from_week=drift_from_week, config=shop)
    mapping = load_mapping(export / funnel.MAPPING_PATH.name)
    written = write_landing(mapping, source)
    catalog = tuple(p for p in written if p.name.startswith("catalog-"))
    prefix = f"interactions-{mapping.name}-"
    weekly = sorted(p for p in written if p.name.startswith(prefix))
    periods = [bt.Period(p.stem.removeprefix(prefix), (*catalog, p) if i == 0 else (p,)) for i, p in enumerate(weekly)]
    return periods[:bootstrap_weeks], periods[bootstrap_weeks:]


@task(name="prepare-periods", cache_policy=NO_CACHE)
def prepare_periods(
    source: str, period: str, data_path: str | None, work: Path, weeks: int, bootstrap_weeks: int,
    drift_from_week: int | None, shop: ShopConfig | None, seed: int, funnel_shop: funnel.FunnelConfig | None = None,
) -> tuple[list[bt.Period], list[bt.Period]]:
    """The source's landing files, written once under ``work``, grouped into periods."""
    if source == "online-retail":
        if not data_path:
            raise ValueError("the online-retail backtest needs data_path: the UCI Online Retail file (online_retail.csv.gz, CC BY 4.0)")
        bootstrap, tests = online_retail_periods(Path(data_path), work, period)
    elif source == "funnel":
        bootstrap, tests = funnel_periods(work, weeks, bootstrap_weeks, drift_from_week, funnel_shop or funnel.FunnelConfig(), seed)
    else:
        bootstrap, tests = synthetic_periods(work, weeks, bootstrap_weeks, drift_from_week, shop or ShopConfig(), seed)
    get_run_logger().info(
        "%s: bootstrap on %s, %d test periods (%s to %s)",
        source, ", ".join(p.label for p in bootstrap), len(tests), tests[0].label, tests[-1].label,
    )
    return bootstrap, tests


@task(name="publish-backtest-report", cache_policy=NO_CACHE)
def publish_backtest_report(result: dict, out: Path, settings: Settings) -> dict:
    """The report as JSON and a plot at ``out``, an MLflow run and a Prefect artifact."""
    files = bt.write_report(result, out)
    result = {**result, "mlflow_run_id": bt.log_report(settings, result, files)}
    table = bt.format_report(result)
    create_markdown_artifact(key="freshrec-backtest", markdown=bt.format_markdown(result), description=md_text(table.splitlines()[-1]))
    get_run_logger().info("report: %s and %s\n%s", files[0], files[1], table)
    return result


@task(name="run-policy", cache_policy=NO_CACHE)
def run_policy(policy: str, settings: Settings, work: Path, bootstrap: list[bt.Period], tests: list[bt.Period]):
    logger = get_run_logger()

    def on_period(track: bt.Track, period: bt.Period) -> None:
        logger.info(
            "%s %s: champion v%s Recall@%d %.4f on %d users; %d updates so far, %.1f s training",
            track.name, period.label, track.versions[period.label], track.k, track.recall[period.label],
            track.users[period.label], track.updates, track.train_seconds,
        )

    return bt.run_policy(policy, settings, work, bootstrap, tests, on_period)


@task(name="run-peers", cache_policy=NO_CACHE)
def run_peers(accepted, bootstrap, tests, include_als: bool, target_event: str, k: int) -> list[bt.Track]:
    return bt.run_peers(accepted, bootstrap, tests, include_als, target_event, k)


@flow(name="backtest")
def backtest(
    source: Literal["online-retail", "synthetic", "funnel"] = "online-retail",
    period: Literal["month", "week"] = "month",
    data_path: str | None = None,
    policies: list[Literal["never", "retrain", "incremental", "triggered"]] | None = None,
    include_peers: bool = True,
    include_als: bool = True,
    out: str | None = None,
    synthetic_weeks: int = 8,
    synthetic_bootstrap_weeks: int = 2,
    synthetic_drift_from_week: int | None = 5,
    synthetic_shop: ShopConfig | None = None,
    funnel_shop: funnel.FunnelConfig | None = None,
    settings: Settings | None = None,
) -> State:
    """Replay ``source`` period by period through every policy, score the peers the same way,
    and write the report to ``out`` (default: <home>/backtest/<source>/report.json).

    Args:
        source: online-retail (the UCI file at data_path), synthetic (a generated shop of
            purchases) or funnel (a generated shop of views, carts and purchases, landed
            through its mapping file; scored on settings.target_event).
        period: month or week: the unit each policy updates on and is scored on.
        data_path: the UCI Online Retail file (CSV, gzipped or not) when source is online-retail.
        policies: the update policies to replay; empty: all four.
        include_peers: also score recent popularity, repeat purchase, item-kNN, TIFU-KNN, UP-CF@r and ALS.
        include_als: ALS among the peers (needs the `implicit` package).
        out: where the JSON report (and the plot beside it) is written.
        synthetic_weeks: weeks of a generated shop (synthetic or funnel), bootstrap weeks included.
        synthetic_bootstrap_weeks: weeks the first champion trains on.
        synthetic_drift_from_week: the week the generated shop's tastes change; empty: never.
        synthetic_shop: the synthetic shop's size (users, items, orders a week).
        funnel_shop: the funnel shop's size and funnel (visitors, items, sessions, rates).
        settings: freshrec settings; fields left empty come from the worker's FRESHREC_* environment.
    """
    settings = settings or Settings()
    started = time.perf_counter()
    work = settings.home / "backtest" / source
    bootstrap, tests = prepare_periods(
        source, period, data_path, work, synthetic_weeks, synthetic_bootstrap_weeks, synthetic_drift_from_week, synthetic_shop, settings.seed,
        funnel_shop,
    )
    tracks, accepted = [], None
    for policy in policies or list(bt.POLICIES):
        track, rows = run_policy(policy, settings, work, bootstrap, tests)
        tracks.append(track)
        accepted = accepted or rows
    if include_peers:
        tracks += run_peers(accepted, bootstrap, tests, include_als, settings.target_event, settings.eval_k)
    result = bt.report(
        source, period, bootstrap, tests, tracks, time.perf_counter() - started, settings.target_event, settings.event_weights()
    )
    result = publish_backtest_report(result, Path(out) if out else work / "report.json", settings)
    return Completed(message=bt.format_report(result), data=result)
