"""The one table writer: rows of a result rendered as Markdown, CSV and JSON (atomically).

Every table microcae prints or writes goes through :class:`Table`. Typed results (the method
comparison, the decoder attack, the reproduction report, ...) follow :class:`Tabular`: they give
their ``rows()`` as plain dicts and a ``to_table()`` that names the columns, their headers and
how floats are printed, so each result renders itself without the reader knowing its keys.

Markdown cells print floats with the column's format spec (default 4 significant digits) and
non-finite values and ``None`` as ``–``; CSV and JSON keep the raw values (JSON writes NaN and
infinities as ``null``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

MISSING = "–"
"""Markdown cell of a NaN, an infinity or ``None``."""


@dataclass(frozen=True)
class Column:
    """One column of a :class:`Table`.

    Attributes
    ----------
    key
        Key of the value in each row.
    header
        Header text (default: ``key``).
    spec
        Format spec of float cells in Markdown, e.g. ``".2f"`` or ``".3g"``.
    """

    key: str
    header: str = ""
    spec: str = ".4g"

    @property
    def title(self) -> str:
        """The header text."""
        return self.header or self.key

    def cell(self, value: Any) -> str:
        """Markdown text of ``value`` in this column."""
        if value is None:
            return MISSING
        if isinstance(value, float | np.floating):
            return format(float(value), self.spec) if math.isfinite(value) else MISSING
        return str(value)


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf as ``None``, numpy arrays and scalars as lists and Python numbers."""
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def json_text(value: Any) -> str:
    """JSON text (indent 1, newline-terminated) of :func:`json_safe` ``(value)``."""
    return json.dumps(json_safe(value), indent=1) + "\n"


@dataclass(frozen=True)
class Table:
    """Rows (dicts) with the columns to show.

    Attributes
    ----------
    rows
        One mapping per row; a row missing a column's key shows an empty cell.
    columns
        The columns, in order.
    """

    rows: tuple[Mapping[str, Any], ...]
    columns: tuple[Column, ...]

    @classmethod
    def of(cls, rows: Sequence[Mapping[str, Any]],
           columns: Sequence[Column | str] | None = None) -> Table:
        """Table of ``rows``; ``columns`` as :class:`Column` or keys (default: the first row's)."""
        chosen = list(columns) if columns is not None else list(rows[0].keys() if rows else [])
        return cls(tuple(rows), tuple(c if isinstance(c, Column) else Column(c) for c in chosen))

    def markdown(self) -> str:
        """GitHub-flavoured Markdown, one line per row, newline-terminated."""
        lines = ["| " + " | ".join(c.title for c in self.columns) + " |",
                 "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(c.cell(row[c.key]) if c.key in row else "" for c in
                                    self.columns) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        """CSV text: a header of column keys, then the raw values (``str`` of each)."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=[c.key for c in self.columns],
                                lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        return buffer.getvalue()

    def json(self) -> str:
        """JSON list of the rows (every key, not only the columns), via :func:`json_text`."""
        return json_text([dict(row) for row in self.rows])

    def write(self, out_dir: str | Path, stem: str) -> dict[str, Path]:
        """Write ``stem.csv``, ``stem.md`` and ``stem.json`` into ``out_dir``; return the paths."""
        from microcae.util.atomic import write_text_atomic

        out_dir = Path(out_dir)
        paths = {"csv": out_dir / f"{stem}.csv", "md": out_dir / f"{stem}.md",
                 "json": out_dir / f"{stem}.json"}
        write_text_atomic(paths["csv"], self.csv())
        write_text_atomic(paths["md"], self.markdown())
        write_text_atomic(paths["json"], self.json())
        return paths


class Tabular(Protocol):
    """A result that renders itself through the table writer."""

    def rows(self) -> list[dict[str, Any]]:
        """Return the result as plain rows (JSON-ready values)."""
        ...

    def to_table(self) -> Table:
        """Return the rows with the columns, headers and number formats to show them."""
        ...


def markdown_table(rows: Sequence[Mapping[str, Any]],
                   columns: Sequence[Column | str] | None = None) -> str:
    """Render ``rows`` as Markdown: :meth:`Table.markdown` of :meth:`Table.of`."""
    return Table.of(rows, columns).markdown()


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """Render ``rows`` (the first row's keys as columns) as CSV: :meth:`Table.csv`."""
    return Table.of(rows).csv()


def write_table(rows: Sequence[Mapping[str, Any]], out_dir: str | Path,
                stem: str) -> dict[str, Path]:
    """Write ``rows`` as ``stem.csv``, ``stem.md`` and ``stem.json``: :meth:`Table.write`."""
    return Table.of(rows).write(out_dir, stem)
