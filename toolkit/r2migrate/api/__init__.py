"""HTTP API and dashboard: parse, call the library, render.

Must not hold migration logic.
"""
