"""The escapes of data_checks/markup.py, value by value. Risk guarded: a value from a landing
file rendering as Markdown or HTML structure (a heading, a row, a link, an image, a script)
instead of as the text it is, in any place the code puts it."""

from __future__ import annotations

import html
import json

import pytest

from data_checks.markup import html_text, md_code_block, md_text, script_json, url_segment
from tests.data.test_hostile_artifacts import HEADER, HOSTILE, Rendered, assert_inert, visible

VALUES = (
    *HOSTILE,
    HEADER,
    "---", "===", "***", "___", "- x", "+ x", "* x", "1. x", "1) x", "> quote", "    indented", "# h", "#h",
    "```", "~~~", "<div>", "&amp; &#60; &lt;", "\\", "\\*", "[x]: http://evil.example", "[^1]", "x|y", ":smile:",
    "<http://evil.example>", "https://evil.example", "mail@evil.example", "~~struck~~", "$x$", "^sup^", "{#id}",
    "a_b_c _d_ __e__", "\x00\x1b[31m\x7f\x85", "\u2028\u2029\u202eevil", "tab\there",
)


@pytest.mark.parametrize("value", VALUES)
def test_a_value_renders_as_its_text_wherever_it_is_put(value):
    shown = visible(value).rstrip()
    cell = md_text(value)
    assert Rendered(cell).text.rstrip() == shown  # a paragraph, a description
    assert_inert(cell, p=1)
    assert_inert(f"para\n{cell}", p=1)  # under a line: no setext heading
    assert assert_inert(f"# Validation of {cell}", h1=1).text.strip() == f"Validation of {shown}".strip()
    assert assert_inert(f"- first\n- {cell}", ul=1, li=2).text.strip() == f"first\n{shown}"
    table = assert_inert(f"| a | b |\n|---|---|\n| {cell} | x |", table=1, tr=2)
    assert table.text.strip().endswith(f"{shown.strip()}\nx")


def test_words_stay_readable():
    assert md_text("interactions-week005.csv: 12 rows: anonymous_user") == "interactions-week005.csv\\: 12 rows\\: anonymous_user"
    assert md_text("3.5% of rows, 1,200 in; 'x' / \"y\"?") == "3.5% of rows, 1,200 in; 'x' / \"y\"?"


def test_a_code_block_cannot_be_closed_from_inside():
    text = "a\n```\n# forged\n````\n![](http://evil.example/i.png)\n<script>x</script>"
    rendered = Rendered(md_code_block(text) + "\nafter\n")
    assert dict(rendered.tags) == {"pre": 1, "code": 1, "p": 1}
    assert rendered.text == f"{text}\n\nafter\n"


def test_a_url_segment_cannot_end_a_link_or_climb_the_path():
    assert url_segment("000001-a b/../(c)\n[d]`.drift.html") == "000001-a%20b%2F..%2F%28c%29%0A%5Bd%5D%60.drift.html"
    link = "mlflow-artifacts:/1/run/reports/" + url_segment(HEADER + ")](http://evil.example)")
    rendered = Rendered(f"[report]({link})")
    assert dict(rendered.tags) == {"p": 1, "a": 1} and rendered.links == [link]


@pytest.mark.parametrize("value", HOSTILE)
def test_html_text_is_one_to_one_and_shows_no_markup(value):
    escaped = html_text(value)
    assert "<" not in escaped and ">" not in escaped and html.unescape(escaped) == value
    assert len({html_text(v) for v in HOSTILE}) == len(HOSTILE)


def test_json_in_a_script_element_reads_the_same_values():
    data = {"x": list(HOSTILE), "</script>": {"nested": "<!-- & -->"}, "n": [1.5, None]}
    safe = script_json(json.dumps(data))
    assert not {"<", ">", "&", "\u2028", "\u2029"} & set(safe)
    assert json.loads(safe) == data
