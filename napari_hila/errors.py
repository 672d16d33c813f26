"""User-facing errors: each names the file or setting at fault and what to do.

The CLI prints them as one line and exits non-zero; the viewer shows them as a
notification. Anything else reaching the top is a bug.
"""

from __future__ import annotations


class HilaError(Exception):
    """An error the user can act on; ``str(err)`` is the whole message."""


class SlideError(HilaError):
    """A slide could not be opened or read."""


class FeatureFileError(HilaError):
    """A feature file is missing, corrupt or does not match what was asked."""


class ModelFileError(HilaError):
    """A model file is missing, corrupt, or does not match the features."""


class ModelConfigError(HilaError, ValueError):
    """A model setting is unknown or out of range (e.g. ``--set select_ratio=1.5``)."""


class CohortError(HilaError):
    """A cohort CSV has bad rows; the message lists them with line numbers."""


class PromptSetError(HilaError):
    """A prompt YAML file is malformed; the message names the line."""


class Cancelled(HilaError):
    """A long job was cancelled by the user."""
