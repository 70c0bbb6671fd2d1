"""Rules: pure functions of settings and paths (object keys, batch binding).

Must not do I/O, and must not import the ledger, the media, S3 or the stages.
"""
