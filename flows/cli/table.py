"""How `bertflow` prints results for people: rows as aligned columns, sizes in megabytes."""

from __future__ import annotations


def table(rows: list[dict]) -> str:
    """Rows of equal keys as aligned text columns."""
    headers = list(rows[0])
    cells = [[str(r[h]) for h in headers] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"
