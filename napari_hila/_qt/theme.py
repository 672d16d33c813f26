"""Matplotlib figures that follow napari's theme (dark or light)."""

from __future__ import annotations

from typing import Any

from matplotlib.colors import to_hex
from matplotlib.figure import Figure


def theme_colors(viewer: Any | None) -> dict[str, str]:
    """Background, foreground, secondary and highlight colours of the viewer's theme as hex."""
    from napari.utils.theme import get_theme

    name = getattr(viewer, "theme", None) or "dark"
    try:
        theme = get_theme(name)
    except (KeyError, ValueError):
        theme = get_theme("dark")

    def hex_of(color: Any) -> str:
        return color.as_hex() if hasattr(color, "as_hex") else str(color)

    return {
        "background": hex_of(theme.canvas),
        "panel": hex_of(theme.background),
        "foreground": hex_of(theme.text),
        "secondary": hex_of(theme.secondary),
        "highlight": hex_of(theme.highlight),
        "primary": hex_of(theme.primary),
    }


def apply_theme(figure: Figure, viewer: Any | None) -> dict[str, str]:
    """Recolour a figure and its axes after drawing; returns the colours used."""
    colors = theme_colors(viewer)
    figure.set_facecolor(colors["panel"])
    for ax in figure.axes:
        ax.set_facecolor(colors["panel"])
        for spine in ax.spines.values():
            spine.set_color(colors["foreground"])
        ax.tick_params(colors=colors["foreground"], which="both")
        ax.xaxis.label.set_color(colors["foreground"])
        ax.yaxis.label.set_color(colors["foreground"])
        ax.title.set_color(colors["foreground"])
        legend = ax.get_legend()
        if legend is not None:
            legend.get_frame().set_facecolor(colors["panel"])
            legend.get_frame().set_edgecolor(colors["secondary"])
            for text in legend.get_texts():
                text.set_color(colors["foreground"])
        for text in ax.texts:  # texts given their own colour (numbers at risk) keep it
            if to_hex(text.get_color()) == "#000000":
                text.set_color(colors["foreground"])
    return colors
