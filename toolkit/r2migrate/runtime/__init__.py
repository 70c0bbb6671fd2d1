"""Runtime: retries, the thread pool and logging that the stages run on.

Must not import the ledger, the media, S3 or the stages.
"""
