"""The dock's footer: Run, Cancel, the progress bar and its stage, and Export.

Pinned under the dock's scrolling part, so both actions stay in view at any
window height, font size or slide name, whatever the result above them takes.
"""

from __future__ import annotations

from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget


class RunPanel(QWidget):
    """Run and Export with their progress; the dock connects the buttons."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.run_button = QPushButton("Run", self)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar(self)
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)  # the stage label says the one percentage
        self.stage_label = QLabel("idle", self)
        self.stage_label.setWordWrap(True)
        self.export_button = QPushButton("Export…", self)
        self.export_button.setEnabled(False)
        self.export_button.setToolTip(
            "Annotated screenshot, region figure, GeoJSON and CSV of what is on screen"
        )
        self.export_cancel = QPushButton("Cancel export", self)
        self.export_cancel.setVisible(False)
        self.export_progress = QProgressBar(self)
        self.export_progress.setRange(0, 1000)
        self.export_progress.setVisible(False)
        run_row = QHBoxLayout()
        run_row.addWidget(self.run_button)
        run_row.addWidget(self.cancel_button)
        run_row.addWidget(self.progress, 1)
        export_row = QHBoxLayout()
        export_row.addWidget(self.export_button)
        export_row.addWidget(self.export_progress, 1)
        export_row.addWidget(self.export_cancel)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 2, 6, 4)
        layout.setSpacing(2)
        layout.addLayout(run_row)
        layout.addWidget(self.stage_label)
        layout.addLayout(export_row)

    def set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        if running:
            self.progress.setValue(0)
            self.stage_label.setText("starting…")

    def show_stage(self, text: str, fraction: float | None = None) -> None:
        """The stage in words and, when given, the bar at ``fraction`` (0..1)."""
        if fraction is not None:
            self.progress.setValue(int(1000 * fraction))
        self.stage_label.setText(text)

    def set_exporting(self, exporting: bool) -> None:
        self.export_button.setEnabled(not exporting)
        self.export_progress.setVisible(exporting)
        self.export_cancel.setVisible(exporting)
        if exporting:
            self.export_progress.setValue(0)

    def show_export_progress(self, text: str, fraction: float) -> None:
        self.export_progress.setValue(int(1000 * fraction))
        self.export_progress.setFormat(text)
