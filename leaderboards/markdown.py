"""GitHub-flavoured markdown leaderboards (for pull-request comments and READMEs)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from .records import MISSING, REPORT_VERSUS_MARK, Cell, Column, Row, Table
from .validation import blind_text

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


def _cell_md(cell: Cell, row: Row, headline: bool, report: bool = False) -> str:
    text = escape_md(cell.text())
    if cell.is_best and not row.is_floor:
        text = f"**{text}** ★"
    elif row.is_floor and not cell.missing:
        text = f"*{text}*"
    if headline and not row.is_floor and cell.ratio_text():
        if report:  # the floor is another subject's caption: beating it is the goal
            mark = f" {REPORT_VERSUS_MARK[cell.versus]}" if cell.versus in REPORT_VERSUS_MARK else ""
        else:
            mark = {"worse": " ✗", "better": " ⚠ better than real"}.get(cell.versus or "", "")
        text += f" · {cell.ratio_text()}{mark}"
    return text


def _gen_md(row: Row) -> str:
    if row.is_floor:
        return f"*{escape_md(row.label)}*"
    note = f" — {escape_md(row.gate_note)}" if row.gate_note else ""
    return escape_md(row.label) + note


def _grid_md(table: Table, cols: list[Column], headers: list[str], headline: bool) -> list[str]:
    lines = ["| " + " | ".join([table.model_word.capitalize(), "Role", "N"] + headers) + " |",
             "|" + "|".join([" --- ", " --- ", " ---: "] + [" ---: "] * len(cols)) + "|"]
    for row in table.rows:
        n = table.n if row.is_floor else row.n
        cells = [_cell_md(row.cells[c.key], row, headline, table.is_report) for c in cols]
        lines.append("| " + " | ".join([_gen_md(row), escape_md(row.role), escape_md(n if n is not None else MISSING)]
                                       + cells) + " |")
    return lines


def _table_md(table: Table, validation: dict | None = None) -> list[str]:
    lines = [f"### {escape_md(table.title)}", ""]
    if table.synthetic:
        lines += [f"> **SYNTHETIC data**: reference cohort {escape_md(table.reference)} "
                  "is synthetic, not real MRI.", ""]
    for note in table.notes:
        lines += [f"> ⚠ {escape_md(note)}", ""]
    head = table.headline_columns
    if head:
        lines += _grid_md(table, [c for _, c in head],
                          [f"{escape_md(axis)}: {escape_md(c.key)} {c.arrow}".strip() for axis, c in head], True)
        lines.append("")
        blind = [(c.key, blind_text(validation, c.key)) for _, c in head]
        blind = [(k, b) for k, b in blind if b]
        if blind:
            lines += ["Report cards: " + "; ".join(f"{escape_md(k)} — {escape_md(b)}" for k, b in blind), ""]
    lines += ["<details><summary>All metrics</summary>", ""]
    lines += _grid_md(table, table.columns, [f"{escape_md(c.key)} {c.arrow}".strip() for c in table.columns], False)
    lines += ["", "</details>", ""]
    return lines


def to_markdown(tables: Iterable[Table], *, title: str | None = "BrainGenBench leaderboard",
                validation: dict | None = None) -> str:
    """Render tables as GitHub markdown.

    Each table (one per set of comparable runs, titled with its suite, N and reference) gets a
    heading, a SYNTHETIC warning when its reference is synthetic, its notes, a headline table
    (Generator, Role, N, then the headline metrics per axis: value ± half CI width · ×floor, ✗ outside
    the floor on the worse side, ⚠ better than real data) and the full table in a collapsed
    ``<details>`` block. The best starrable run per column is bold with ★; the italic real-vs-real
    floor row comes last.

    Args:
        tables: Tables from :func:`leaderboards.records.build_tables`.
        title: Optional top-level heading (None to omit).
        validation: Metric validation report (parsed ``validation.json``): adds what each headline
            metric's report card misses.

    Returns:
        The markdown text (ends with a newline).
    """
    tables = list(tables)
    lines: list[str] = []
    if title:
        lines += [f"## {escape_md(title)}", ""]
    if not tables:
        lines += ["_No complete runs._", ""]
    for i, table in enumerate(tables):
        if table.is_report and not any(t.is_report for t in tables[:i]):
            lines += ["## Report generation (volume → text)", "",
                      "Captioners describe real volumes; clinical: are the statements true of the volume, "
                      "text: is the report worded like its true caption. Floor: another subject's true "
                      "caption (×r: value / floor; ✓ beats floor, ≈ floor, ✗ worse than floor).", ""]
        lines += _table_md(table, validation)
    if tables:
        lines += ["↑ higher is better · ↓ lower is better · target: real — closest to the floor is best · "
                  "×r: value / floor (×1 = real data) · ✗ outside the floor (worse) · "
                  "⚠ better than real data (suspicious) · **bold** ★: best run among those passing the "
                  "memorisation gate (memorising baselines and oracles never) · "
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
