"""Report: read-only views of the ledger, the audit report, text tables, doctor.

Must not write the ledger, and must not import a front end.
"""
