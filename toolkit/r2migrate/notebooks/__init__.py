"""Notebook helpers: settings display, tables, widgets, papermill runs.

Must not hold migration logic.
"""
