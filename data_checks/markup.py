"""Text from the data made safe where it becomes Markdown or HTML: every escape lives here.

Landing files carry whatever a producer wrote (values, header names, file names), and it reaches
Prefect artifacts (Markdown, rendered with raw HTML allowed), the validation summary and the
Evidently report. The data itself (ledger, quarantine, JSON) keeps the raw values; only the text
people read is escaped, by these functions, where it is formatted.
"""

from __future__ import annotations

import html
import re
from urllib.parse import quote

# Markdown's HTML and entity syntax, shown as text.
_ENTITIES = {"<": "&lt;", ">": "&gt;", "&": "&amp;"}
# Active anywhere in a line: emphasis, code, links and images, headings, tables, autolinks
# (":", "@"), strikethrough, and the extensions some renderers add ($ math, ^ superscript, {attrs}).
_ALWAYS = set("\\`*[](){}#+!|~:@$^=")
# Inert between two letters or digits (CommonMark opens no emphasis on an intraword "_"), so
# "user_id" and "interactions-week005.csv" stay readable; elsewhere they start lists, thematic
# breaks, setext headings ("-", "1."), or emphasis ("_").
_OUTSIDE_WORDS = set("_-.")
# The "." of "www." would still start a GFM autolink.
_WWW_DOT = re.compile(r"www$", re.IGNORECASE)

# Inside a <script> element no string may close it or open a comment; in JSON these characters
# occur only inside strings, where the \u escape reads back as the same character.
_SCRIPT_JSON = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def plain_text(value: object) -> str:
    """``value`` for a terminal or a plain-text table, on one line: characters Python's ``repr``
    escapes (line breaks, escape sequences that would drive the terminal, bidi overrides) show as
    that escape (``\\n``, ``\\x1b``)."""
    text = str(value)
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def plain_table(rows: list[tuple[str, ...]] | list[list[str]]) -> list[str]:
    """Fixed-width lines for a terminal: the header row, a rule, the other rows. Every cell goes
    through ``plain_text``, so a file name or a reason from the data cannot break a line."""
    cells = [[plain_text(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return lines


def md_text(value: object) -> str:
    """``value`` as inline Markdown (a heading's text, a list item, a table cell, an artifact's
    description) that renders as the literal text on one line.

    Characters Python's ``repr`` escapes (line breaks, other control characters, bidi overrides)
    show as that escape (``\\n``, ``\\x1b``); ``<``, ``>`` and ``&`` become HTML entities; Markdown
    punctuation is backslash-escaped (``_``, ``-`` and ``.`` only outside a word); ``, ; ' " / % ?``
    are left as they are, inert in Markdown. A leading space is written ``&#32;``, so that
    indentation never starts a code block.
    """
    text = str(value)
    out = []
    for i, char in enumerate(text):
        if not char.isprintable():
            out.append("\\" + repr(char)[1:-1])
        elif char in _ENTITIES:
            out.append(_ENTITIES[char])
        elif char in _ALWAYS or (char in _OUTSIDE_WORDS and not _inside_word(text, i)):
            out.append("\\" + char)
        else:
            out.append(char)
    if text.startswith(" "):
        out[0] = "&#32;"
    return "".join(out)


def _inside_word(text: str, i: int) -> bool:
    if not (0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()):
        return False
    return not (text[i] == "." and _WWW_DOT.search(text, 0, i))


def md_code_block(text: str) -> str:
    """``text`` as a fenced code block, shown as it is: the fence is longer than any run of
    backticks inside, so no line of ``text`` can close it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}\n"


def url_segment(value: object) -> str:
    """``value`` as one segment of a URL's path: everything but letters, digits and ``-._~``
    percent-encoded, so a name cannot end a Markdown link or add to the path."""
    return quote(str(value), safe="")


def html_text(value: object) -> str:
    """``value`` as HTML text or attribute value: ``& < > " '`` as entities."""
    return html.escape(str(value), quote=True)


def script_json(json_text: str) -> str:
    """JSON (as ``json.dumps`` writes it) safe to embed in an HTML ``<script>`` element: no
    ``</script>`` or ``<!--`` can form, and the script reads the same values."""
    return json_text.translate(_SCRIPT_JSON)
