"""Media: where files are read from (the local disk, or MEDIA_URL over HTTP).

Must not import the ledger, S3 or the stages.
"""
