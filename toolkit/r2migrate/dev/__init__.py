"""Dev: the embedded PostgreSQL and SeaweedFS stack, its certificate, the sample data.

Must never be imported by the stages or the store.
"""
