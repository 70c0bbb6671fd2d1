"""S3: the bucket client and the fast single-request upload.

Must not import the ledger, the media or the stages.
"""
