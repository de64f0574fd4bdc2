"""GitHub-flavoured markdown leaderboards (for pull-request comments and READMEs)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from .records import Table

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#~])")


def escape_md(text: object) -> str:
    """Escape a string for a GitHub markdown table cell.

    HTML is neutralised as entities (``<`` → ``&lt;``) so no tag survives; markdown syntax
    characters (``|``, backticks, ``*``, ``_``, brackets, ...) are backslash-escaped; newlines
    become spaces so a cell cannot break the table.

    Args:
        text: Any value; converted with ``str``.

    Returns:
        The escaped text.
    """
    s = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = re.sub(r"[\r\n]+", " ", s)
    return _MD_SPECIAL.sub(r"\\\1", s)


def _table_md(table: Table) -> list[str]:
    lines = [f"### {escape_md(table.title)}", ""]
    if table.synthetic:
        lines += [f"> **SYNTHETIC data**: reference cohort {escape_md(table.reference)} "
                  "is synthetic, not real MRI.", ""]
    for note in table.notes:
        lines += [f"> ⚠ {escape_md(note)}", ""]
    header = ["Generator"] + [f"{escape_md(c.key)} {c.arrow}".strip() for c in table.columns]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join([" --- "] + [" ---: "] * len(table.columns)) + "|")
    for row in table.rows:
        label = f"*{escape_md(row.label)}*" if row.is_floor else escape_md(row.label)
        cells = []
        for c in table.columns:
            cell = row.cells[c.key]
            text = escape_md(cell.text())
            if cell.is_best and not row.is_floor:
                text = f"**{text}**"
            elif row.is_floor and not cell.missing:
                text = f"*{text}*"
            cells.append(text)
        lines.append("| " + " | ".join([label] + cells) + " |")
    lines.append("")
    return lines


def to_markdown(tables: Iterable[Table], *, title: str | None = "BrainGenBench leaderboard") -> str:
    """Render tables as GitHub markdown.

    Each table gets a heading, a SYNTHETIC warning when its reference is synthetic, its notes, and
    a pipe table: value ± half CI width, ↑/↓ in headers, the best run per column in bold, and an
    italic real-vs-real floor row last.

    Args:
        tables: Tables from :func:`leaderboards.records.build_tables`.
        title: Optional top-level heading (None to omit).

    Returns:
        The markdown text (ends with a newline).
    """
    tables = list(tables)
    lines: list[str] = []
    if title:
        lines += [f"## {escape_md(title)}", ""]
    if not tables:
        lines += ["_No complete runs._", ""]
    for table in tables:
        lines += _table_md(table)
    if tables:
        lines += ["↑ higher is better · ↓ lower is better · **bold**: best run · "
                  "floor: same metric, real vs real (split halves of the reference)", ""]
    return "\n".join(lines)


def write_markdown(tables: Iterable[Table], path: str | Path, **kwargs) -> Path:
    """Write :func:`to_markdown` output to a file.

    Args:
        tables: Tables from :func:`leaderboards.records.build_tables`.
        path: Destination ``.md`` file (parent directories are created).
        **kwargs: Passed to :func:`to_markdown` (e.g. ``title``).

    Returns:
        The written path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_markdown(tables, **kwargs), encoding="utf-8")
    return path
