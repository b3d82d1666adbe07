"""Reporting: every Markdown table, HTML page and figure the pipeline writes, in one place.

Modules here turn numbers that other packages computed (statistics in :mod:`memeops.stats`,
evaluations in :mod:`memeops.evaluation`) into files for people; they compute no statistic and run
no model. Figures go through :mod:`memeops.reporting.figures` (one figure helper).
"""
