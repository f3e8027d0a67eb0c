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


# --- plain text: the terminal tables of `python -m flows run` and `python -m flows ledger` ---------

HOSTILE_NAME = "interactions-\x1b]0;owned\x07\x1b[2J\nforged row\r\u202eof.csv"


def test_plain_text_shows_control_characters_as_escapes():
    from data_checks.markup import plain_text

    assert plain_text("interactions-week001.csv") == "interactions-week001.csv"
    shown = plain_text(HOSTILE_NAME)
    assert shown.isprintable() and "\\x1b" in shown and "\\n" in shown and "\\u202e" in shown


def test_the_run_table_keeps_one_line_per_batch_whatever_the_file_name():
    from tasks.report import BatchOutcome, format_table

    outcomes = [BatchOutcome(HOSTILE_NAME, 10, 9, 1, "partially_accepted", reasons=["bad value '\x1b[31m' in country"], batch_id=1)]
    lines = format_table(outcomes).splitlines()
    assert len(lines) == 5  # header, rule, one row, blank, one reasons line
    assert all(line.isprintable() for line in lines)


def test_the_ledger_command_prints_a_hostile_file_name_on_one_line(tmp_path, monkeypatch, capsys):
    from flows.__main__ import main
    from tasks import ledger

    monkeypatch.setenv("FRESHREC_HOME", str(tmp_path))
    ledger.record_received(ledger.connect(f"sqlite:///{tmp_path / 'ledger.db'}"), HOSTILE_NAME, "0" * 64, 10, "interactions")
    assert main(["ledger"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 5 and all(line.isprintable() for line in printed)  # header, rule, one row, blank, totals
