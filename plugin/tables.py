"""Text and CSV tables of J&F rows (dicts), as the official DAVIS CLI prints and writes them.
No FiftyOne: used by the evaluation's reports, the comparison and the CLI."""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

from deaot_core.metrics.davis import SUMMARY_KEYS

__all__ = ["TABLE_KEYS", "format_value", "format_table", "to_csv"]

#: columns of the comparison table (one row per evaluation run)
TABLE_KEYS = ("eval_key", *SUMMARY_KEYS)


def format_value(value, digits: int = 3, nan: str = "NaN") -> str:
    """A table cell: floats with ``digits`` decimals (``nan`` for NaN), None as empty, else ``str``."""
    if isinstance(value, float):
        return nan if math.isnan(value) else f"{value:.{digits}f}"
    return "" if value is None else str(value)


def format_table(rows: Iterable[dict[str, Any]], columns: Sequence[str] = TABLE_KEYS, digits: int = 3) -> str:
    """Aligned text table, floats with ``digits`` decimals (3, as the official CSV)."""
    rows = list(rows)
    cells = [list(columns)] + [[format_value(r.get(c), digits) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def to_csv(rows: Iterable[dict[str, Any]], columns: Sequence[str] = TABLE_KEYS) -> str:
    """CSV as the official ``global_results`` file (``%.3f``, NaN as an empty field), one line per run."""
    lines = [",".join(columns)]
    for r in rows:
        lines.append(",".join(format_value(r.get(c), 3, nan="") for c in columns))
    return "\n".join(lines) + "\n"
