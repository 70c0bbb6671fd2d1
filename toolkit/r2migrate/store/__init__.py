"""Store: the ledger in PostgreSQL, its migrations, the catalog of Django columns.

Must not import the media, S3 or the stages; it is the only code speaking SQL to the schema.
"""
