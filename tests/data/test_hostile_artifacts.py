"""Hostile text from landing files (values in every string column, a header name, the file name)
through the real validation, decision and report code to the Markdown people read.

Risks guarded: a producer's data forging headings, table rows, links or remote images in the
Prefect UI (which renders artifact Markdown with raw HTML allowed), or raw HTML in the
validation summary logged to MLflow. The Markdown is rendered with markdown-it (CommonMark, GFM
tables and strikethrough, raw HTML on) and must hold exactly the structure the code writes.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
from markdown_it import MarkdownIt

import flows.backtest
import tasks.ingest
import tasks.monitor
import tasks.report
from data_checks.drift import ChampionCounts, detect_drift
from data_checks.landing import output_stem
from data_checks.sources.synthetic import SyntheticShop
from flows import backtest_harness as bt
from tasks.gates import UpdateSignals, decide_update
from tasks.ingest import find_new_files, load_catalog, validate_file
from tasks.monitor import Decay
from tasks.report import BatchOutcome
from tests.conftest import TINY_SHOP
from tests.data.test_hostile_report import Page

HOSTILE = (
    "</script><script>alert(1)</script>",
    "<!--<script>",
    "x\n# forged\n![](http://evil.example/i.png)",
    "[x](http://evil.example)",
    "<img src=http://evil.example/i.png>",
    "`code` *b* _i_ #h | \\",
    "\r\n| forged | row |\n|---|---|",
    "- item\n1. item\n> quote\n---",
    "www.evil.example mail@evil.example",
)
HEADER = "x\n# forged\n![](http://evil.example/i.png)"
FILE_NAME = "interactions-[x](http:evil) ![](http:evil) <img src=x> `*_#|\\\n# forged.parquet"
EXTRA_COLUMN_FILE = "interactions-extra-column.parquet"


def visible(text: str) -> str:
    """How escaped text reads once rendered: control characters as their Python escape."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Rendered(HTMLParser):
    """The tags and text of Markdown rendered to HTML."""

    def __init__(self, markdown: str):
        super().__init__(convert_charrefs=True)
        self.tags: Counter = Counter()
        self.links: list[str] = []
        self.parts: list[str] = []
        renderer = MarkdownIt("commonmark").enable(["table", "strikethrough"])
        renderer.validateLink = lambda url: True  # count every link, whatever its scheme
        self.feed(renderer.render(markdown))
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags[tag] += 1
        if tag == "a":
            self.links.append(dict(attrs)["href"])

    def handle_data(self, data):
        self.parts.append(data)

    @property
    def text(self) -> str:
        return "".join(self.parts)


# Implied by the structure a test names (a table's parts).
IMPLIED = {"thead", "tbody", "th", "td"}


def assert_inert(markdown: str, **structure: int) -> Rendered:
    """``markdown`` forges nothing: no raw HTML, image or link syntax, and it renders to exactly
    ``structure`` (tag: count; any other tag but those IMPLIED is absent)."""
    assert "<" not in markdown, markdown
    assert "![" not in markdown and "](" not in markdown, markdown
    assert not re.search(r"(?<!\\)://", markdown), markdown  # a GFM autolink
    rendered = Rendered(markdown)
    assert {tag: n for tag, n in rendered.tags.items() if tag not in IMPLIED} == structure, markdown
    return rendered


def hostile(values: pd.Series) -> pd.Series:
    """Each distinct value behind a hostile prefix: one-to-one, so orders keep a single user."""
    names = {v: HOSTILE[i % len(HOSTILE)] + v for i, v in enumerate(values.dropna().unique())}
    return values.map(names)


def land_hostile_files(settings) -> dict[str, tasks.ingest.BatchValidation]:
    """A catalog and an interactions file with hostile text in every string column (the latter
    under a hostile name), and a file with a hostile extra header; validated for real."""
    shop = SyntheticShop(0, TINY_SHOP)
    settings.landing_dir.mkdir(parents=True)
    catalog = shop.catalog(include_new_items=False)
    items = dict(zip(catalog["item_id"], hostile(catalog["item_id"])))  # the same ids in both files
    catalog["item_id"] = catalog["item_id"].map(items)
    catalog["title"], catalog["category"] = hostile(catalog["title"]), hostile(catalog["category"])
    catalog.to_parquet(settings.landing_dir / "catalog-hostile.parquet", index=False)
    rows = shop.week(0)
    rows["item_id"] = rows["item_id"].map(items)
    for column in ("user_id", "order_id", "country"):
        rows[column] = hostile(rows[column])
    # An event type outside the contract's vocabulary is quarantined by name: a few hostile ones
    # reach the quarantine and the reports, the rest are purchases.
    rows["event_type"] = [HOSTILE[(i // 40) % len(HOSTILE)] if i % 40 == 0 else "purchase" for i in range(len(rows))]
    rows.to_parquet(settings.landing_dir / FILE_NAME, index=False)
    rows.head(50).assign(**{HEADER: "1"}).to_parquet(settings.landing_dir / EXTRA_COLUMN_FILE, index=False)
    batches = {v.file_name: v for v in (validate_file(f, settings) for f in find_new_files(settings))}
    assert batches[FILE_NAME].rows_accepted > 0  # hostile values are data like any other
    assert pd.read_parquet(batches[FILE_NAME].accepted_path)["country"].str.startswith(HOSTILE).all()  # kept raw
    assert batches[EXTRA_COLUMN_FILE].status == "rejected" and batches[EXTRA_COLUMN_FILE].reasons == [f"unexpected columns: {HEADER}"]
    return batches


def capture(monkeypatch, module, *names: str) -> list[dict]:
    calls = []
    for name in names:
        monkeypatch.setattr(module, name, lambda _name=name, **kwargs: calls.append({"function": _name, **kwargs}))
    return calls


def test_the_validation_summary_of_hostile_files_forges_nothing(settings):
    batches = land_hostile_files(settings)
    for batch in batches.values():
        summary = Path(batch.report_path).read_text(encoding="utf-8")
        failed = sum(1 for row in batch.rule_table if row["rows_failed"])
        listed = len(batch.reasons) - failed  # batch reasons and notes; rule counts are the table
        structure = {"h1": 1, "p": 1, "strong": 1}
        structure |= {"ul": 1, "li": listed} if listed else {}
        structure |= {"table": 1, "tr": len(batch.rule_table) + 1, "p": 2} if batch.rule_table else {}
        rendered = assert_inert(summary, **structure)
        assert f"Validation of {visible(batch.file_name)}" in rendered.text
    assert f"unexpected columns: {visible(HEADER)}" in Rendered(Path(batches[EXTRA_COLUMN_FILE].report_path).read_text()).text


def test_the_validation_artifact_of_a_hostile_file_forges_nothing(settings, monkeypatch):
    batches = land_hostile_files(settings)
    calls = capture(monkeypatch, tasks.ingest, "create_table_artifact")
    for batch in batches.values():
        tasks.ingest.publish_validation.fn(batch, settings)
    assert calls, "no table artifact was published"
    for call in calls:
        assert re.fullmatch(r"[a-z0-9-]+", call["key"])
        # Table cells are plain text in Prefect's UI; the description is Markdown.
        rendered = assert_inert(call["description"], p=1)
        assert visible(FILE_NAME) in rendered.text or "catalog-hostile.parquet" in rendered.text


def test_the_run_report_of_hostile_batches_forges_nothing(settings, monkeypatch):
    batches = land_hostile_files(settings)
    outcomes = [BatchOutcome.of_validation(b) for b in batches.values()]
    failed = BatchOutcome.of_validation(batches[FILE_NAME], with_reasons=False)
    failed.status, failed.reasons = "update failed", [f"update failed: ValueError: {HOSTILE[2]}", HOSTILE[6]]
    outcomes.append(failed)
    calls = capture(monkeypatch, tasks.report, "create_markdown_artifact")
    tasks.report.publish_report.fn("Continuous training", outcomes)
    (call,) = calls
    rendered = assert_inert(call["markdown"], h1=1, table=1, tr=len(outcomes) + 1)
    assert visible(FILE_NAME) in rendered.text and f"unexpected columns: {visible(HEADER)}" in rendered.text
    assert visible(HOSTILE[2]) in assert_inert(call["description"], p=1).text


def test_the_decision_artifacts_of_a_hostile_batch_forge_nothing(settings, monkeypatch):
    batches = land_hostile_files(settings)
    batch = batches[FILE_NAME]
    reference = SyntheticShop(1, TINY_SHOP).week(1)
    categories = load_catalog(settings).set_index("item_id")["category"]  # hostile, as the catalog landed
    counts = ChampionCounts(reference["item_id"].value_counts(), reference["user_id"].value_counts(), categories)
    report = settings.reports_dir / f"{output_stem(batch.batch_id, batch.file_name)}.drift.html"
    drift = detect_drift(pd.read_parquet(batch.accepted_path), reference, counts, report)
    assert len(Page(report.read_text(encoding="utf-8")).scripts) == 4  # Evidently's own, no more
    decision = decide_update.fn(UpdateSignals(drift.drift_share, 0.0, batch.rows_accepted, 1.0), settings)
    calls = capture(monkeypatch, tasks.monitor, "create_table_artifact", "create_link_artifact")
    tasks.monitor.log_decision.fn(settings, batch, drift, Decay(0.1, 0.2, 10), decision)
    table, link = calls
    assert visible(FILE_NAME) in assert_inert(table["description"], p=1).text
    # Prefect stores a link artifact as the Markdown "[link_text](link)".
    assert_inert(link["link_text"], p=1)
    rendered = Rendered(f"[{link['link_text']}]({link['link']})")
    assert dict(rendered.tags) == {"p": 1, "a": 1} and rendered.links == [link["link"]]
    assert re.fullmatch(r"[^\s()<>\[\]`\\]+", link["link"]), link["link"]
    assert rendered.text.strip() == f"Evidently drift report for {visible(FILE_NAME)}"


def test_the_backtest_artifact_forges_nothing(settings, monkeypatch, tmp_path):
    fenced = "peer\n````\n# forged\n![](http://evil.example/i.png)"
    track = {"mean_recall_at_20": 0.1, "mean_ndcg_at_20": 0.05, "updates": 1, "train_seconds": 2.0}
    result = {
        "source": HOSTILE[2], "results": {"triggered": track, fenced: track},
        "triggered_vs_retrain": {"recall_share": 0.9, "train_time_share": None},
        "triggered_vs": {fenced: {m: {"mean_difference": 0.01, "low": -0.01, "high": 0.02, "periods": 1} for m in ("recall", "ndcg")}},
    }
    monkeypatch.setattr(bt, "write_report", lambda result, out: (out, out.with_suffix(".png")))
    monkeypatch.setattr(bt, "log_report", lambda settings, result, files: "run-id")
    monkeypatch.setattr(flows.backtest, "get_run_logger", lambda: logging.getLogger("backtest"))
    calls = capture(monkeypatch, flows.backtest, "create_markdown_artifact")
    flows.backtest.publish_backtest_report.fn(result, tmp_path / "report.json", settings)
    (call,) = calls
    title, _, rest = call["markdown"].partition("\n")
    assert visible(HOSTILE[2]) in assert_inert(title, h1=1).text
    rendered = Rendered(rest.replace(bt.protocol(), ""))  # the protocol is the code's own Markdown
    assert dict(rendered.tags) == {"pre": 1, "code": 1} and rendered.text.strip() == bt.format_report(result)
    assert_inert(call["description"], p=1)


def test_validation_reports_of_a_file_named_with_glob_characters_reach_mlflow(settings, tmp_path):
    from mlflow import MlflowClient

    from tasks.tracking import log_validation_run

    reports = tmp_path / "reports"
    reports.mkdir()
    for name in ("000007-interactions-[x]*?.validation.json", "000007-interactions-[x]*?.validation.md", "000007-interactions-x.validation.md"):
        (reports / name).write_text(name)
    run_id = log_validation_run(settings, 7, "interactions-[x]*?.csv", "accepted", {"rows_in": 1}, {}, reports)
    client = MlflowClient(settings.mlflow_tracking_uri)
    logged = sorted(a.path for a in client.list_artifacts(run_id, "validation"))
    assert logged == ["validation/000007-interactions-[x]*?.validation.json", "validation/000007-interactions-[x]*?.validation.md"]
