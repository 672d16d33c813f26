"""Survival statistics: C-index, Kaplan-Meier, log-rank, cohort CSV, losses.

Import the submodules directly (``survival.metrics``, ``survival.km``,
``survival.cohort_csv``, ``survival.losses``); this package keeps no torch import
at the top so the statistics load fast.
"""
