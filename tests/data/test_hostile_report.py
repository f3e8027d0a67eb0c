"""Hostile category and country values in the Evidently drift report (reports/*.drift.html,
also logged to MLflow). Risks guarded: a value from a landing file ending the report's inline
<script> block and running its own script when the report is opened, or adding markup (links,
images) to it; and the escaping changing what drifted."""

from __future__ import annotations

import json
import re
from collections import Counter
from html import escape
from html.parser import HTMLParser

import pandas as pd
import pytest

from data_checks.drift import ChampionCounts, detect_drift
from data_checks.sources.synthetic import SyntheticShop
from tests.data.test_drift import champion_view

HOSTILE = (
    "</script><script>alert(1)</script>",
    "<!--<script>",
    "</SCRIPT ><img src=x onerror=alert(2)>",
    '<a href="http://evil.example">click</a>',
    "&lt;b&gt; & \u2028 \\u003c",
)


class Page(HTMLParser):
    """The elements of an HTML page as a browser's tokenizer sees them, and each script's text."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: Counter = Counter()
        self.scripts: list[str] = []
        self.in_script = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags[tag] += 1
        if tag == "script":
            self.scripts.append("")
            self.in_script = True

    def handle_endtag(self, tag):
        if tag == "script":
            self.in_script = False

    def handle_data(self, data):
        if self.in_script:
            self.scripts[-1] += data


def hostile_view(seed: int) -> tuple[pd.DataFrame, pd.DataFrame, ChampionCounts]:
    """A champion's reference and a new week, with hostile categories on a fifth of the items,
    a hostile name for one country in both, and a hostile new country on a third of the week."""
    shop = SyntheticShop(seed)
    reference, counts = champion_view(shop)
    categories = counts.categories.copy()
    categories.iloc[::5] = [HOSTILE[i % len(HOSTILE)] for i in range(len(categories.iloc[::5]))]
    counts = ChampionCounts(counts.items, counts.users, categories)
    current = shop.week(3)
    reference["country"] = reference["country"].replace("Norway", HOSTILE[1])
    current["country"] = current["country"].replace("Norway", HOSTILE[1])
    current.loc[current.index[::3], "country"] = HOSTILE[0]
    return reference, current, counts


def renamed(frame: pd.DataFrame, counts: ChampionCounts) -> tuple[pd.DataFrame, ChampionCounts]:
    """The same data with each hostile value renamed to a plain one (one to one)."""
    plain = {value: f"value-{i}" for i, value in enumerate(HOSTILE)}
    return frame.assign(country=frame["country"].replace(plain)), ChampionCounts(counts.items, counts.users, counts.categories.replace(plain))


def strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def test_hostile_values_stay_text_in_the_drift_report(tmp_path):
    reference, current, counts = hostile_view(0)
    path = tmp_path / "report.drift.html"
    detect_drift(current, reference, counts, path)
    page = Page(path.read_text(encoding="utf-8"))
    # Evidently's own four: its data, `var global`, its library, the call that draws the report.
    assert page.tags["script"] == len(page.scripts) == 4
    assert not {"img", "a", "iframe"} & set(page.tags)
    assert not re.search(r"<!--|<script|</script", page.scripts[0], re.IGNORECASE)
    assert not any("alert(" in script for script in page.scripts[1:])  # Evidently's code, no data
    data = re.match(r"\s*var (metric_\w+) = (.*);\n\s*var additional_graphs_\1 = (.*);\s*$", page.scripts[0])
    assert data, "the report's data block is not where Evidently writes it"
    shown = set(strings(json.loads(data[2])) + strings(json.loads(data[3])))
    # Shown in the report's plots, whose labels read tags and decode entities: as written.
    for value in HOSTILE:
        assert escape(value) in shown, value


@pytest.mark.parametrize("seed", [0, 1])
def test_escaping_leaves_the_drift_figures_alone(seed):
    reference, current, counts = hostile_view(seed)
    result = detect_drift(current, reference, counts, None)
    plain_current, plain_counts = renamed(current, counts)
    plain_reference, _ = renamed(reference, counts)
    plain = detect_drift(plain_current, plain_reference, plain_counts, None)
    assert "country" in result.drifted_columns  # the hostile new country is a real shift
    assert result.drift_share == plain.drift_share and result.drifted_columns == plain.drifted_columns
    assert [(c.column, c.method, c.drifted) for c in result.columns] == [(c.column, c.method, c.drifted) for c in plain.columns]
    assert [c.score for c in result.columns] == pytest.approx([c.score for c in plain.columns], rel=1e-9, abs=1e-12)
