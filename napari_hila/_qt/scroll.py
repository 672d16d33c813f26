"""Docks whose content scrolls vertically instead of overflowing a short window."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QStyle, QVBoxLayout, QWidget


class _FitWidth(QObject):
    """Keeps a scroll area at least as wide as its content's least width (plus a scroll bar).

    The area scrolls vertically only, so content wider than it would be cut on
    the right; a larger font or a long word widens the dock instead (napari's
    main window gives it the width), re-checked whenever the content's layout changes.
    """

    def __init__(self, scroll: QScrollArea) -> None:
        super().__init__(scroll)
        self.scroll = scroll

    def eventFilter(self, watched: QObject, event: Any) -> bool:  # noqa: N802 (Qt name)
        if event.type() == QEvent.Type.LayoutRequest:
            self.fit()
        return False

    def fit(self) -> None:
        content = self.scroll.widget()
        if content is None:
            return
        # what the area takes beside its viewport (scroll bar, napari's style's borders),
        # measured once shown, else the style's scroll bar width
        if self.scroll.isVisible() and self.scroll.verticalScrollBar().isVisible():
            beside = self.scroll.width() - self.scroll.viewport().width()
        else:
            beside = self.scroll.style().pixelMetric(QStyle.PixelMetric.PM_ScrollBarExtent)
        self.scroll.setMinimumWidth(content.minimumSizeHint().width() + beside)


def make_scrollable(owner: QWidget, content: QWidget) -> QScrollArea:
    """Put ``content`` in a frameless vertical scroll area filling ``owner``."""
    scroll = QScrollArea(owner)
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setWidget(content)
    fit = _FitWidth(scroll)
    content.installEventFilter(fit)
    fit.fit()
    outer = QVBoxLayout(owner)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(scroll)
    return scroll
