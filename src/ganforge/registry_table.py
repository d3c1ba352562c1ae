"""``ganforge registry show``'s text table: the rows of ``platform.registry.show`` aligned in columns.

Plain text formatting, so it lives with the command line, not in the platform layer."""

from __future__ import annotations


def format_cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ",".join(value) or "-"
    return str(value)


def format_table(rows: list[dict]) -> str:
    """``show``'s rows as an aligned text table."""
    if not rows:
        return "(no versions)"
    columns = ["version", "fid", "kid_mean", "kid_std", "aliases", "profile", "created", "run_id"]
    cells = [[format_cell(r.get(col)) for col in columns] for r in rows]
    widths = [max(len(col), *(len(row[i]) for row in cells)) for i, col in enumerate(columns)]
    lines = ["  ".join(col.ljust(w) for col, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)
