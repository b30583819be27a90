"""Plotly figure builders (no streamlit): one function per figure, data in, figure out.

:mod:`interp.plots.common` holds the shared look (role colours, layout, heatmap and bar
helpers) and the Models page's figures; capability modules add their own builders
next to it and use :func:`~interp.plots.common.style` so every figure looks alike.
"""

from .common import PALETTE, ROLE_COLORS, SERIES_COLORS, bar, heatmap, style

__all__ = ["PALETTE", "ROLE_COLORS", "SERIES_COLORS", "bar", "heatmap", "style"]
