"""Report: read-only views of the ledger (rows, summary, frames, figures, progress), the audit
report files (audit), text tables (text), doctor.

Must not write the ledger, and must not import a front end.
"""
