"""Write result tables as CSV, Markdown and JSON side by side (atomically)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Render rows (dicts sharing keys) as a GitHub-flavoured Markdown table; floats to 4 digits."""
    columns = list(columns or (rows[0].keys() if rows else []))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    """Render rows (dicts sharing keys, the first row's keys as columns) as CSV text."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0].keys()) if rows else [],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_table(rows: Sequence[dict[str, Any]], out_dir: str | Path, stem: str) -> dict[str, Path]:
    """Write ``stem.csv``, ``stem.md`` and ``stem.json`` into ``out_dir``; return their paths."""
    from microcae.util.atomic import write_text_atomic

    out_dir = Path(out_dir)
    paths = {"csv": out_dir / f"{stem}.csv", "md": out_dir / f"{stem}.md",
             "json": out_dir / f"{stem}.json"}
    write_text_atomic(paths["csv"], csv_text(rows))
    write_text_atomic(paths["md"], markdown_table(rows))
    write_text_atomic(paths["json"], json.dumps(list(rows), indent=1) + "\n")
    return paths
