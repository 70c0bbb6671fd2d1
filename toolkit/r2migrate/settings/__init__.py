"""Settings: the one frozen configuration object, its layers and its checks.

Must not import anything from the package but ``errors``.
"""
