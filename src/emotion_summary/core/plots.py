"""Figures for files: matplotlib without a display (the Agg backend), rendered to PNG bytes that the
caller writes atomically. Light until called: matplotlib is imported inside."""

from __future__ import annotations

import io


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed, safe in threads and on servers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig, dpi: int = 100, **savefig) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, **savefig)
    pyplot().close(fig)
    return buf.getvalue()
