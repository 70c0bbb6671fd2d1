"""Command line: parse, call the library, render.

Must not hold migration logic.
"""
