"""The two table renderings every report page shares: GitHub Markdown and HTML.

Cells are display strings already (numbers formatted by the caller); both functions only escape
them. Table 1, the expert-label, calibration and operating-point sections all use these, so their
tables look alike in table1.md and table1.html.
"""

from __future__ import annotations

import html
from collections.abc import Sequence


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align_first_left: bool = True) -> str:
    """A GitHub Markdown table; ``|`` in a cell is escaped.

    Args:
        header: the column titles.
        rows: the cells, one sequence per row, as long as ``header``.
        align_first_left: left-align the first column (the row labels); every other column is
            right-aligned (numbers).

    Returns:
        The table's lines joined by ``\\n``, without a final newline.
    """
    def esc(c: str) -> str:
        return c.replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |"]
    lines.append("|" + "|".join([":---" if align_first_left else "---:"] + ["---:"] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML ``<table>`` (``thead`` of ``header``, one ``tr`` per row), cells HTML-escaped, on one line.

    Args:
        header: the column titles.
        rows: the cells, one sequence per row.
    """
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
